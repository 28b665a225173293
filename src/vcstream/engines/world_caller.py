"""The WORLD engine's per-call estimate of the caller's voice: running log-F0 statistics and long-term
voiced envelope, learnt from the first seconds of speech and refined as the caller talks (exponential
forgetting after ``SOURCE_MEMORY_FRAMES``), and the envelope mapping toward a reference chosen from
them. Streaming-safe: it sees only frames already analysed."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from vcstream.engines.world_envelope import (
    ENV_GRID_HZ,
    colour_correction,
    estimate_warp,
    f0_prior_log_warp,
    grid_envelope,
)

FloatArray = npt.NDArray[np.float64]

#: online source log-F0 statistics: prior (Hz, log std), its weight in voiced frames, and the
#: longest memory in voiced frames (~5 s of voicing)
SOURCE_PRIOR_F0 = 150.0
SOURCE_PRIOR_STD = 0.1
SOURCE_PRIOR_FRAMES = 30
SOURCE_MEMORY_FRAMES = 1000
#: voiced frames of input envelope after which the envelope evidence counts half
WARP_EVIDENCE_FRAMES = 100


class LogF0Tracker:
    """Exponentially forgetting mean/variance of the input's log-F0, starting from a prior."""

    def __init__(self) -> None:
        self.mean = math.log(SOURCE_PRIOR_F0)
        self.var = SOURCE_PRIOR_STD**2
        self.count = float(SOURCE_PRIOR_FRAMES)

    def update(self, lf0: FloatArray) -> None:
        for value in lf0.tolist():
            limit = 3.0 * math.sqrt(self.var)
            d = min(max(value - self.mean, -limit), limit)  # octave errors must not inflate the std
            self.count = min(self.count + 1.0, SOURCE_MEMORY_FRAMES)
            a = 1.0 / self.count
            self.mean += a * d
            self.var = max((1.0 - a) * (self.var + a * d * d), 1e-4)

    @property
    def std(self) -> float:
        return math.sqrt(self.var)


class CallerVoice:
    """What the session has learnt of the caller's voice so far."""

    def __init__(self) -> None:
        self.f0 = LogF0Tracker()
        self.envelope = np.zeros(ENV_GRID_HZ.size)
        self.envelope_frames = 0.0

    def update(self, f0: FloatArray, log_sp: FloatArray) -> None:
        """Take a block's analysed frames (F0 in Hz, 0 unvoiced; CheapTrick log-power rows)."""
        voiced = f0 > 0
        if not voiced.any():
            return
        self.f0.update(np.log(f0[voiced]))
        for env in grid_envelope(log_sp[voiced]):
            self.envelope_frames = min(self.envelope_frames + 1.0, SOURCE_MEMORY_FRAMES)
            self.envelope += (env - self.envelope) / self.envelope_frames

    @property
    def evidence(self) -> float:
        """How far the caller's envelope is trusted against the F0 prior, in [0, 1)."""
        return self.envelope_frames / (self.envelope_frames + WARP_EVIDENCE_FRAMES)

    def warp_toward(self, target_lf0_mean: float, target_envelope: FloatArray) -> float:
        """Frequency-warp factor moving this caller's formants to the target's."""
        prior = f0_prior_log_warp(target_lf0_mean, self.f0.mean)
        if self.envelope_frames == 0:
            return math.exp(prior)
        return estimate_warp(self.envelope, target_envelope, self.evidence, prior)

    def equalisation_toward(self, target_envelope: FloatArray, warp: float, strength: float) -> FloatArray:
        """Per-bin log-power correction applied after the warp (zero until the caller has spoken)."""
        if self.envelope_frames == 0 or strength <= 0:
            return np.zeros(0)
        return colour_correction(self.envelope, target_envelope, warp, strength * self.evidence)
