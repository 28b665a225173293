"""Validation of reference recordings (the voice to clone): one rule set for the CLI, the engines and
the voice library."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from vcstream.audio.types import Audio
from vcstream.errors import InvalidAudioError

log = logging.getLogger(__name__)

MIN_SPEECH_S = 1.0
MAX_SPEECH_S = 30.0
#: frames quieter than this (dBFS RMS over 20 ms) count as silence
SILENCE_DBFS = -50.0
#: ... or quieter than this relative to the loudest frame
SILENCE_BELOW_PEAK_DB = 45.0


@dataclass(frozen=True)
class Reference:
    samples: Audio
    sample_rate: int
    notices: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return float(self.samples.shape[0]) / self.sample_rate


def check_finite(samples: Audio, what: str = "audio") -> None:
    if not np.all(np.isfinite(samples)):
        raise InvalidAudioError(f"{what} contains NaN or infinite samples")


def to_mono(samples: Audio) -> Audio:
    if samples.ndim == 2:
        return np.ascontiguousarray(samples.mean(axis=1), dtype=np.float32)
    return np.ascontiguousarray(samples, dtype=np.float32)


def active_frames(samples: Audio, sample_rate: int, frame_s: float = 0.02) -> np.ndarray:
    """Boolean mask of 20 ms frames that hold signal (not silence)."""
    frame = max(1, int(sample_rate * frame_s))
    n = samples.shape[0] // frame
    if n == 0:
        return np.zeros(0, dtype=bool)
    frames = samples[: n * frame].reshape(n, frame).astype(np.float64)
    rms_db = 10.0 * np.log10(np.mean(frames**2, axis=1) + 1e-20)
    threshold = max(SILENCE_DBFS, float(rms_db.max()) - SILENCE_BELOW_PEAK_DB)
    mask: np.ndarray = rms_db > threshold
    return mask


def prepare_reference(
    samples: Audio,
    sample_rate: int,
    min_s: float = MIN_SPEECH_S,
    max_s: float = MAX_SPEECH_S,
) -> Reference:
    """Check and trim a reference: finite samples, not silent, leading/trailing silence removed,
    at least ``min_s`` of signal; longer than ``max_s`` is cut to ``max_s`` with a notice."""
    if samples.size == 0:
        raise InvalidAudioError("reference audio is empty")
    check_finite(samples, "reference audio")
    mono = to_mono(samples)
    mask = active_frames(mono, sample_rate)
    if not mask.any() or float(np.max(np.abs(mono))) < 10 ** (SILENCE_DBFS / 20):
        raise InvalidAudioError("reference audio is silent")
    frame = int(sample_rate * 0.02)
    first, last = int(np.argmax(mask)), int(len(mask) - np.argmax(mask[::-1]))
    trimmed = mono[first * frame : last * frame]
    speech_s = float(mask.sum()) * 0.02
    if speech_s < min_s:
        raise InvalidAudioError(
            f"reference holds {speech_s:.2f} s of sound after trimming silence; at least {min_s:.0f} s needed"
        )
    notices: list[str] = []
    max_len = int(max_s * sample_rate)
    if trimmed.shape[0] > max_len:
        notices.append(
            f"reference is {trimmed.shape[0] / sample_rate:.1f} s after trimming silence; "
            f"only the first {max_s:.0f} s are used"
        )
        log.warning(notices[-1])
        trimmed = trimmed[:max_len]
    return Reference(np.ascontiguousarray(trimmed, dtype=np.float32), sample_rate, notices)
