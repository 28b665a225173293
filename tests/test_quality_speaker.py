"""CAM++ speaker similarity on Debian flite voices: the same voice saying other words stays closer than
another voice, and the embedding contract (192-d, unit norm, any rate) holds."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import Speech
from vcstream.quality.speaker import SpeakerEncoder, cosine

OTHER_SENTENCE = "Nobody expected the old lighthouse keeper to win the sailing race that summer."


@pytest.fixture(scope="module")
def encoder() -> SpeakerEncoder:
    return SpeakerEncoder.load()


def test_embedding_is_a_unit_192_vector_at_any_rate(encoder: SpeakerEncoder, flite_speech: Speech) -> None:
    at_16k = encoder.embed(*flite_speech("slt"))
    at_48k = encoder.embed(*flite_speech("slt", rate=48000))
    assert at_16k.shape == (192,) and at_16k.dtype == np.float32
    assert abs(float(np.linalg.norm(at_16k)) - 1.0) < 1e-5
    assert cosine(at_16k, at_16k) == pytest.approx(1.0)
    # the same recording at another rate is resampled to 16 kHz: nearly the same embedding
    assert cosine(at_16k, at_48k) > 0.95


def test_same_voice_other_words_beats_other_voice(encoder: SpeakerEncoder, flite_speech: Speech) -> None:
    slt = encoder.embed(*flite_speech("slt"))
    slt_other_words = encoder.embed(*flite_speech("slt", text=OTHER_SENTENCE))
    same_voice = cosine(slt, slt_other_words)
    for voice in ("rms", "awb", "kal16"):
        other_voice = cosine(slt, encoder.embed(*flite_speech(voice, text=OTHER_SENTENCE)))
        assert same_voice > other_voice + 0.1, (voice, same_voice, other_voice)


def test_too_short_audio_is_refused(encoder: SpeakerEncoder) -> None:
    with pytest.raises(ValueError, match="at least"):
        encoder.embed(np.zeros(1600, dtype=np.float32), 16000)
