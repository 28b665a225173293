"""The WORLD engine's frame-wise envelope replacement: each voiced frame of the caller borrows the
envelope of the reference frames that sound most like it (a weight-free k-nearest-neighbour frame
selection, in the spirit of kNN-VC, on WORLD envelopes instead of learnt features).

Frames are matched on a speaker-normalised description of their envelope shape: low-order cepstral
coefficients of the log envelope on a log-frequency grid, minus that speaker's mean (the long-term
colour of the voice cancels, what remains is mostly which sound is being said), scaled to unit
length. The caller's side is computed from its warped envelope, so formant positions are already
near the reference's. The borrowed envelope (mean of the k matches, natural-log power) keeps the
caller's frame loudness, is smoothed over time and is blended with the warped, equalised envelope.
Streaming-safe: it uses only the block's own frames and state from earlier blocks."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from vcstream.engines.world_envelope import ENV_GRID_HZ, grid_envelope

FloatArray = npt.NDArray[np.float64]

#: cepstral coefficients 1..ORDER of the log envelope on ``ENV_GRID_HZ`` (c0, the level, is left out)
ORDER = 24
#: reference frames averaged per caller frame
NEIGHBOURS = 8
#: share of the borrowed envelope in the output envelope (the rest is the warped, equalised one)
BLEND = 0.7
#: one-pole smoothing of the borrowed envelope across frames (weight of the previous frame)
SMOOTHING = 0.7
#: most reference frames kept (about 30 s of voicing at 5 ms; evenly thinned beyond it)
MAX_REFERENCE_FRAMES = 6000
#: voiced frames of the caller after which its running cepstral mean is trusted fully
CALLER_MEAN_FRAMES = 200


def _cepstrum_basis() -> FloatArray:
    """DCT-II rows 1..ORDER over the envelope grid (log envelope -> cepstrum)."""
    n = ENV_GRID_HZ.size
    k = np.arange(1, ORDER + 1)[:, None]
    basis: FloatArray = np.cos(np.pi * k * (np.arange(n)[None, :] + 0.5) / n) * (2.0 / n)
    return basis.T.copy()


_BASIS = _cepstrum_basis()


def cepstra(log_sp: FloatArray) -> FloatArray:
    """Low-order cepstra (rows) of CheapTrick log-power envelopes (rows of BINS)."""
    out: FloatArray = grid_envelope(log_sp) @ _BASIS
    return out


def _unit_rows(x: FloatArray) -> FloatArray:
    out: FloatArray = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)
    return out


def _log_level(log_sp: FloatArray) -> FloatArray:
    """Natural log of each frame's mean power (rows of natural-log power)."""
    peak = log_sp.max(axis=1, keepdims=True)
    out: FloatArray = (peak + np.log(np.mean(np.exp(log_sp - peak), axis=1, keepdims=True)))[:, 0]
    return out


@dataclass(frozen=True)
class ReferenceFrames:
    """The reference's voiced frames, ready for matching (read-only, shared by sessions)."""

    #: unit-length, mean-normalised cepstra, one column per frame (float32, contiguous for the scan)
    keys: npt.NDArray[np.float32] = field(repr=False)
    #: the frames' natural-log power envelopes with their level removed (float32 to halve memory)
    envelopes: npt.NDArray[np.float32] = field(repr=False)

    @classmethod
    def from_envelopes(cls, log_sp: FloatArray) -> ReferenceFrames:
        """From the reference's voiced CheapTrick log-power envelopes (rows)."""
        if log_sp.shape[0] > MAX_REFERENCE_FRAMES:
            keep = np.linspace(0, log_sp.shape[0] - 1, MAX_REFERENCE_FRAMES).round().astype(np.int64)
            log_sp = log_sp[keep]
        cep = cepstra(log_sp)
        keys = np.ascontiguousarray(_unit_rows(cep - cep.mean(axis=0)).T, dtype=np.float32)
        envelopes = (log_sp - _log_level(log_sp)[:, None]).astype(np.float32)
        keys.flags.writeable = False
        envelopes.flags.writeable = False
        return cls(keys, envelopes)


class FrameSelector:
    """Per-session state of the frame selection: the caller's running cepstral mean and the smoothed
    borrowed envelope of the last voiced frame."""

    def __init__(self) -> None:
        self._mean = np.zeros(ORDER)
        self._mean_frames = 0.0
        self._previous: FloatArray | None = None

    def replace(
        self, reference: ReferenceFrames, warped: FloatArray, voiced: npt.NDArray[np.bool_]
    ) -> FloatArray:
        """``warped`` (rows of natural-log power, the caller's frames after warp and equalisation)
        with each voiced frame's shape moved toward its nearest reference frames; unvoiced frames and
        every frame's level are kept."""
        if not voiced.any():
            self._previous = None
            return warped
        rows = np.flatnonzero(voiced)
        frames = warped[rows]
        cep = cepstra(frames)
        for c in cep:  # running mean, forgetting slowly once it has seen enough frames
            self._mean_frames = min(self._mean_frames + 1.0, CALLER_MEAN_FRAMES)
            self._mean += (c - self._mean) / self._mean_frames
        keys = _unit_rows(cep - self._mean)
        # einsum, not a matrix product: for 20 x 24 by 24 x N, BLAS's threads cost 5-10 times the arithmetic
        similarity = np.einsum("fd,dn->fn", keys.astype(np.float32), reference.keys)
        nearest = np.argpartition(-similarity, NEIGHBOURS - 1, axis=1)[:, :NEIGHBOURS]
        borrowed = reference.envelopes[nearest].mean(axis=1, dtype=np.float64)
        out = warped.copy()
        previous = self._previous
        for i, row in enumerate(rows.tolist()):
            # a voicing gap restarts the smoothing (the borrowed envelope of a previous word is stale)
            follows = row == 0 if i == 0 else rows[i - 1] == row - 1
            if previous is not None and follows:
                borrowed[i] = SMOOTHING * previous + (1 - SMOOTHING) * borrowed[i]
            previous = borrowed[i]
        self._previous = previous if rows[-1] == warped.shape[0] - 1 else None
        level = _log_level(frames)[:, None]
        out[rows] = (1 - BLEND) * frames + BLEND * (borrowed + level)
        return out
