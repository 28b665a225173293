"""The audio types every layer shares (DSP, engines, media, transports): defined here, at the bottom
of the dependency graph, so that nothing has to import an engine to speak of audio."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

#: mono float32 samples in [-1, 1] at a rate the context states
Audio = npt.NDArray[np.float32]
