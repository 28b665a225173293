"""F0 statistics with WORLD's DIO + StoneMask (pyworld): where a conversion puts the voice's pitch, and
how much of the clip stays voiced."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyworld

FRAME_PERIOD_MS = 5.0
#: search range wide enough for low male and high female/child voices
F0_FLOOR_HZ, F0_CEIL_HZ = 50.0, 800.0


@dataclass(frozen=True)
class PitchStats:
    median_hz: float | None  #: None when no frame is voiced
    iqr_hz: float | None  #: 75th minus 25th percentile of voiced F0
    voiced_ratio: float  #: voiced frames / all frames


def pitch_stats(samples: np.ndarray, rate: int) -> PitchStats:
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1 or x.shape[0] == 0:
        raise ValueError("mono, non-empty audio expected")
    f0, times = pyworld.dio(x, rate, f0_floor=F0_FLOOR_HZ, f0_ceil=F0_CEIL_HZ, frame_period=FRAME_PERIOD_MS)
    f0 = np.asarray(pyworld.stonemask(x, f0, times, rate))
    voiced = f0[f0 > 0]
    ratio = float(voiced.shape[0] / f0.shape[0])
    if voiced.shape[0] == 0:
        return PitchStats(median_hz=None, iqr_hz=None, voiced_ratio=ratio)
    q25, q50, q75 = np.percentile(voiced, [25, 50, 75])
    return PitchStats(median_hz=float(q50), iqr_hz=float(q75 - q25), voiced_ratio=ratio)
