"""16-bit PCM WAV in memory: how the voice library stores a reference in its database. Python's
``wave`` module, no GStreamer: the format is fixed and ours, and a call must not start a pipeline to
read its voice. The scale matches GStreamer's (2^15), so recordings written before by ``encode_file``
read the same."""

from __future__ import annotations

import io
import wave

import numpy as np

from vcstream.audio.types import Audio
from vcstream.errors import InvalidAudioError

_FULL_SCALE = 32768.0


def pcm16_wav(samples: Audio, sample_rate: int) -> bytes:
    """Mono float samples in [-1, 1] as a 16-bit WAV (rounded, clipped, no dither)."""
    mono = np.asarray(samples, dtype=np.float32)
    if mono.ndim != 1:
        raise ValueError(f"mono samples expected, got shape {mono.shape}")
    pcm = np.clip(np.rint(mono * _FULL_SCALE), -_FULL_SCALE, _FULL_SCALE - 1).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(sample_rate)
        writer.writeframes(pcm.tobytes())
    return out.getvalue()


def read_pcm16_wav(data: bytes) -> tuple[Audio, int]:
    """Float32 mono samples and the rate of a 16-bit mono WAV; InvalidAudioError for anything else."""
    try:
        with wave.open(io.BytesIO(data), "rb") as reader:
            shape = (reader.getnchannels(), reader.getsampwidth())
            if shape != (1, 2):
                channels, width = shape
                raise InvalidAudioError(f"16-bit mono WAV expected: {channels} channel(s), {width} bytes")
            rate = reader.getframerate()
            raw = reader.readframes(reader.getnframes())
    except (wave.Error, EOFError) as exc:
        raise InvalidAudioError(f"not a readable WAV: {exc}") from exc
    samples = np.frombuffer(raw, dtype="<i2").astype(np.float32) / _FULL_SCALE
    return samples, rate
