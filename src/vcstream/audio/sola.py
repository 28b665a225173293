"""SOLA (synchronous overlap-add) splicing of independently generated audio frames.

A block-wise converter regenerates every frame from scratch, so consecutive frames do not line up
sample-exactly. Each new frame is a little longer than a block: it starts with ``crossfade + search``
samples that overlap the tail kept from the previous frame. The splicer picks the shift within the
search window where the new frame best matches that tail (normalised cross-correlation), crossfades the
two with complementary sin² windows, emits one block and keeps the next ``crossfade`` samples as the
tail for the following frame. This is the scheme of Seed-VC's real-time GUI (itself from DDSP-SVC).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from vcstream.audio.types import Audio

#: keeps the normalisation finite on silent input (same constant as the GUI)
_EPS = 1e-8


class SolaSplicer:
    """Turns frames of ``block + crossfade + search`` samples into continuous blocks of ``block``.

    The output of frame k starts ``offset`` samples into it, ``offset`` in ``[0, search]`` (see
    ``last_offset``); before the first frame the tail is silence, so the first block fades in.
    """

    def __init__(self, block: int, crossfade: int, search: int) -> None:
        if block <= 0 or crossfade <= 0 or search < 0:
            raise ValueError("SOLA needs block > 0, crossfade > 0 and search >= 0 samples")
        self.block, self.crossfade, self.search = block, crossfade, search
        ramp = np.sin(0.5 * np.pi * np.linspace(0.0, 1.0, crossfade)) ** 2
        self._fade_in: npt.NDArray[np.float32] = ramp.astype(np.float32)
        self._fade_out: npt.NDArray[np.float32] = (1.0 - ramp).astype(np.float32)
        self._tail: npt.NDArray[np.float32] = np.zeros(crossfade, dtype=np.float32)
        self.last_offset = 0

    @property
    def frame_size(self) -> int:
        return self.block + self.crossfade + self.search

    def find_offset(self, frame: Audio) -> int:
        """Shift in ``[0, search]`` where the frame's head best matches the kept tail."""
        head = frame[: self.crossfade + self.search].astype(np.float64)
        numerator = np.correlate(head, self._tail.astype(np.float64), mode="valid")
        energy = np.concatenate([[0.0], np.cumsum(head * head)])
        window_energy = energy[self.crossfade :] - energy[: -self.crossfade]
        score = numerator / np.sqrt(np.maximum(window_energy, 0.0) + _EPS)
        return int(np.argmax(score))

    def splice(self, frame: Audio) -> Audio:
        """Consume one frame (``frame_size`` samples) and return one block."""
        frame = np.asarray(frame, dtype=np.float32)
        if frame.ndim != 1 or frame.shape[0] != self.frame_size:
            raise ValueError(f"expected a mono frame of {self.frame_size} samples, got {frame.shape}")
        offset = self.find_offset(frame)
        out = frame[offset : offset + self.block + self.crossfade].copy()
        out[: self.crossfade] = out[: self.crossfade] * self._fade_in + self._tail * self._fade_out
        self._tail = out[self.block :].copy()
        self.last_offset = offset
        return out[: self.block]

    def conceal(self) -> Audio:
        """One block standing in for a frame that never came: the kept tail fades out into silence,
        and the next frame fades in from silence (as the first one does)."""
        out = np.zeros(self.block, dtype=np.float32)
        n = min(self.crossfade, self.block)
        out[:n] = (self._tail * self._fade_out)[:n]
        self.reset()
        return out

    def reset(self) -> None:
        self._tail = np.zeros(self.crossfade, dtype=np.float32)
        self.last_offset = 0
