"""Naturalness (DNSMOS), intelligibility (pocketsphinx WER/CER) and pitch statistics on flite speech:
each measure moves the right way when the audio gets worse or the expectation is wrong."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SENTENCES, Speech
from vcstream.quality.intelligibility import Transcriber, edit_distance, error_rates, normalise
from vcstream.quality.naturalness import NaturalnessRater
from vcstream.quality.pitch import pitch_stats


def with_noise(samples: np.ndarray, snr_db: float) -> np.ndarray:
    noise = np.random.default_rng(7).standard_normal(samples.shape[0]).astype(np.float32)
    gain = np.sqrt(np.mean(samples**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    return np.clip(samples + gain * noise, -1, 1).astype(np.float32)


def test_added_noise_lowers_dnsmos(flite_speech: Speech) -> None:
    rater = NaturalnessRater.load()
    speech, rate = flite_speech("rms")
    clean, noisy = rater.rate(speech, rate), rater.rate(with_noise(speech, 5.0), rate)
    assert all(1.0 <= v <= 5.0 for v in (clean.sig, clean.bak, clean.ovrl, clean.p808))
    assert noisy.bak < clean.bak - 0.5, (clean, noisy)
    assert noisy.ovrl < clean.ovrl - 0.3, (clean, noisy)


def test_edit_distance_and_rates() -> None:
    assert edit_distance("kitten".split(), "sitting".split()) == 1
    assert edit_distance("kitten", "sitting") == 3
    assert normalise("Hello, World -- it's   fine!") == "hello world it's fine"
    assert error_rates("the cat sat", "the cat sat") == (0.0, 0.0)
    wer, cer = error_rates("the cat sat", "a cat sat down")
    assert wer == pytest.approx(2 / 3) and cer > 0


def test_a_wrong_transcript_raises_wer(flite_speech: Speech) -> None:
    transcriber = Transcriber.load()
    speech, rate = flite_speech("rms")
    right = transcriber.score(speech, rate, SENTENCES["rms"])
    wrong = transcriber.score(speech, rate, SENTENCES["awb"])
    assert right.transcript, "pocketsphinx heard nothing"
    assert right.wer < 0.35 and right.cer < 0.2, right
    assert wrong.wer > 0.8 and wrong.cer > right.cer + 0.3, wrong


def test_pitch_of_a_tone_and_of_two_voices(flite_speech: Speech) -> None:
    rate = 16000
    t = np.arange(rate) / rate
    tone = pitch_stats((0.5 * np.sin(2 * np.pi * 200.0 * t)).astype(np.float32), rate)
    assert tone.median_hz == pytest.approx(200.0, rel=0.02) and tone.voiced_ratio > 0.9
    assert tone.iqr_hz is not None and tone.iqr_hz < 5.0
    female, male = pitch_stats(*flite_speech("slt")), pitch_stats(*flite_speech("rms"))
    assert female.median_hz is not None and male.median_hz is not None
    assert female.median_hz > 1.3 * male.median_hz, (female, male)
    assert 0.2 < male.voiced_ratio < 0.9
    silence = pitch_stats(np.zeros(rate, dtype=np.float32), rate)
    assert silence.median_hz is None and silence.voiced_ratio == 0.0
