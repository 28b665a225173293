"""Test signals for benchmarks: synthetic speech from Debian's flite (clear rights), or a glottal-pulse
vowel train when flite is absent."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from vcstream.audio.resample import resample
from vcstream.audio.types import Audio

TEXT = (
    "Voice conversion turns one speaker into another while keeping every word, "
    "and it has to do so in a fraction of a second."
)


def flite_speech(voice: str = "slt", rate: int = 16000, text: str = TEXT) -> Audio:
    if shutil.which("flite") is None:
        return vowel_train(rate)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(path)], check=True)
        with wave.open(str(path), "rb") as w:
            native = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    data: Audio = (pcm / 32768).astype(np.float32)
    return resample(data, native, rate)


def vowel_train(rate: int, seconds: float = 6.0, f0: float = 140.0) -> Audio:
    """Pulse train with a slow F0 glide through two formant resonators, gated into syllables."""
    from scipy.signal import lfilter

    n = int(rate * seconds)
    t = np.arange(n) / rate
    inst_f0 = f0 * (1 + 0.15 * np.sin(2 * np.pi * 0.5 * t))
    phase = np.cumsum(inst_f0 / rate)
    pulses = (np.diff(np.floor(phase), prepend=0) > 0).astype(np.float64)
    x = pulses
    for formant, bandwidth in ((700, 110), (1200, 120)):
        r = np.exp(-np.pi * bandwidth / rate)
        theta = 2 * np.pi * formant / rate
        x = lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], x)
    gate = (np.sin(2 * np.pi * 2 * t) > -0.3).astype(np.float64)
    x = x * gate
    out: Audio = (0.5 * x / np.max(np.abs(x))).astype(np.float32)
    return out
