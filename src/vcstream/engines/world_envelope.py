"""The WORLD engine's envelope mapping: where the caller's spectral envelope is moved to sound like the
reference. Pure functions on mean log-power envelopes sampled on a log-frequency grid: the frequency
warp that best aligns the caller's long-term envelope with the reference's (formant positions), and a
smoothed per-band equalisation of what the warp leaves (spectral tilt, band levels)."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from vcstream.engines.world_settings import SAMPLE_RATE

FloatArray = npt.NDArray[np.float64]

FFT_SIZE = 1024  # CheapTrick's size for a 60 Hz floor at 16 kHz
BINS = FFT_SIZE // 2 + 1

#: log-spaced frequency grid of the envelope description used for warp estimation
ENV_GRID_HZ: FloatArray = np.geomspace(100.0, 6000.0, 160)
#: band compared when estimating the warp (below it F0/glottal energy dominates, above it codecs)
WARP_BAND_HZ = (300.0, 4000.0)
WARP_MIN, WARP_MAX = 0.75, 1.33
#: prior on log(warp) = GAMMA * log(f0_target / f0_source): formants scale with speaker size more
#: weakly than F0 does. 0.35 chosen with CAM++ similarity on the tuning pairs (see
#: tests/test_world_identity.py); 0.25 left female targets' formants too low (kal16->slt: 1.09 where
#: 1.2 sounds like the reference)
WARP_F0_GAMMA = 0.35
#: weight of that prior against the envelope mismatch (natural-log power units squared)
WARP_PRIOR_WEIGHT = 8.0
#: colour correction limit (natural-log power: +-6 dB) and smoothing width (octaves)
CORRECTION_LIMIT = math.log(10 ** (6.0 / 10))
CORRECTION_SMOOTH_OCT = 1.0 / 3.0


def _grid_interpolation() -> tuple[npt.NDArray[np.int64], FloatArray]:
    """Lower CheapTrick bin and weight of the upper one for each point of ``ENV_GRID_HZ``."""
    pos = ENV_GRID_HZ / (SAMPLE_RATE / FFT_SIZE)
    lo = np.floor(pos).astype(np.int64)
    return lo, pos - lo


_GRID_LO, _GRID_FRAC = _grid_interpolation()
_LOG_GRID = np.log(ENV_GRID_HZ)
_GRID_STEP = float(_LOG_GRID[1] - _LOG_GRID[0])
_BIN_INDEX = np.arange(BINS, dtype=np.float64)


def _in_band(freqs: FloatArray, low: float, high: float) -> npt.NDArray[np.bool_]:
    mask: npt.NDArray[np.bool_] = (freqs >= low) & (freqs <= high)
    return mask


_BAND = _in_band(ENV_GRID_HZ, *WARP_BAND_HZ)
#: candidate warps: half-grid steps (~0.6 %) over [WARP_MIN, WARP_MAX]
_LOG_ALPHAS = np.arange(math.log(WARP_MIN), math.log(WARP_MAX), _GRID_STEP / 2)


def _detrend_projection() -> FloatArray:
    """Matrix removing the best straight line (over log frequency) from a curve on the warp band."""
    x = _LOG_GRID[_BAND]
    a = np.stack([np.ones_like(x), x], axis=1)
    proj: FloatArray = np.eye(x.size) - a @ np.linalg.pinv(a)
    return proj


_DETREND = _detrend_projection()


def grid_envelope(log_sp: FloatArray) -> FloatArray:
    """CheapTrick log-power envelopes (rows of ``BINS``) sampled at ``ENV_GRID_HZ``."""
    # a gather, not a (sparse) matrix product: BLAS threads would cost more than the arithmetic
    grid: FloatArray = log_sp[..., _GRID_LO] * (1 - _GRID_FRAC) + log_sp[..., _GRID_LO + 1] * _GRID_FRAC
    return grid


def f0_prior_log_warp(target_lf0_mean: float, source_lf0_mean: float) -> float:
    """The warp F0 alone argues for (log), before any envelope evidence."""
    return WARP_F0_GAMMA * (target_lf0_mean - source_lf0_mean)


def estimate_warp(
    source_env: FloatArray,
    target_env: FloatArray,
    evidence: float = 1.0,
    prior_log_warp: float = 0.0,
    prior_weight: float = WARP_PRIOR_WEIGHT,
) -> float:
    """Frequency-warp factor ``a`` such that the source envelope sampled at f/a best matches the
    target's (both mean log-power envelopes on ``ENV_GRID_HZ``). Spectral tilt is ignored (each curve
    is detrended over the warp band); ``evidence`` in [0, 1] scales the envelope mismatch against a
    Gaussian prior on log(a) centred on ``prior_log_warp``."""
    # Warping by a is a shift by log(a) on the log-frequency grid.
    pos = np.clip((_LOG_GRID[_BAND][None, :] - _LOG_ALPHAS[:, None] - _LOG_GRID[0]) / _GRID_STEP, 0, None)
    lo = np.minimum(pos.astype(np.int64), ENV_GRID_HZ.size - 2)
    frac = np.minimum(pos - lo, 1.0)
    warped = source_env[lo] * (1 - frac) + source_env[lo + 1] * frac
    residual = warped @ _DETREND.T - _DETREND @ target_env[_BAND]
    cost = evidence * np.mean(residual**2, axis=1) + prior_weight * (_LOG_ALPHAS - prior_log_warp) ** 2
    i = int(np.argmin(cost))
    log_warp = float(_LOG_ALPHAS[i])
    if 0 < i < cost.size - 1:  # parabolic refinement between grid steps
        c0, c1, c2 = float(cost[i - 1]), float(cost[i]), float(cost[i + 1])
        denom = c0 - 2 * c1 + c2
        if denom > 0:
            log_warp += 0.5 * (c0 - c2) / denom * float(_LOG_ALPHAS[1] - _LOG_ALPHAS[0])
    return math.exp(log_warp)


def colour_correction(
    source_env: FloatArray, target_env: FloatArray, warp: float, strength: float
) -> FloatArray:
    """Per-band equalisation on CheapTrick's bins (natural-log power): the smoothed, level-neutral
    difference between the target's mean envelope and the warped source mean, bounded and scaled by
    ``strength``."""
    warped_src = np.interp(_LOG_GRID - math.log(warp), _LOG_GRID, source_env)
    diff = target_env - warped_src
    width = max(1, round(CORRECTION_SMOOTH_OCT * math.log(2) / _GRID_STEP))
    kernel = np.hanning(2 * width + 1)
    padded = np.pad(diff, width, mode="edge")
    diff = np.convolve(padded, kernel / kernel.sum(), mode="valid")
    weights = np.exp(target_env - target_env.max())
    diff -= float(np.sum(diff * weights) / np.sum(weights))  # keep the loudness
    diff = np.clip(diff, -CORRECTION_LIMIT, CORRECTION_LIMIT) * strength
    freqs = np.maximum(_BIN_INDEX * (SAMPLE_RATE / FFT_SIZE), ENV_GRID_HZ[0])
    out: FloatArray = np.interp(np.log(freqs), _LOG_GRID, diff)
    return out


class WarpTable:
    """Bin positions of one warp factor on CheapTrick's axis, kept until the factor changes."""

    def __init__(self) -> None:
        self.factor = 0.0
        self._lo = np.zeros(BINS, dtype=np.int64)
        self._frac = np.zeros(BINS)
        self.set(1.0)

    def set(self, factor: float) -> None:
        if factor == self.factor:
            return
        self.factor = factor
        pos = np.minimum(_BIN_INDEX / factor, BINS - 1.0)
        self._lo = np.minimum(pos.astype(np.int64), BINS - 2)
        self._frac = pos - self._lo

    def apply(self, log_sp: FloatArray) -> FloatArray:
        """Log envelopes (rows) with their frequency axis scaled by ``factor`` (>1 raises formants)."""
        out: FloatArray = log_sp[:, self._lo] * (1 - self._frac) + log_sp[:, self._lo + 1] * self._frac
        return out
