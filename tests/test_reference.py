from collections.abc import Callable

import numpy as np
import pytest

from vcstream.audio.reference import prepare_reference
from vcstream.errors import InvalidAudioError

RATE = 16000


def test_trims_leading_and_trailing_silence(flite_speech: Callable[..., tuple[np.ndarray, int]]) -> None:
    speech, _ = flite_speech("rms", rate=RATE)
    padded = np.concatenate([np.zeros(RATE), speech, np.zeros(2 * RATE)]).astype(np.float32)
    ref = prepare_reference(padded, RATE)
    # flite's own output already has some silence at its ends: the padding must go, speech must stay.
    assert ref.duration_s <= speech.shape[0] / RATE
    assert ref.duration_s == pytest.approx(prepare_reference(speech, RATE).duration_s, abs=0.02)
    assert ref.duration_s > 0.8 * speech.shape[0] / RATE
    assert ref.notices == []


def test_stereo_is_mixed_to_mono(flite_speech: Callable[..., tuple[np.ndarray, int]]) -> None:
    speech, _ = flite_speech("rms", rate=RATE)
    ref = prepare_reference(np.stack([speech, speech], axis=1), RATE)
    assert ref.samples.ndim == 1


def test_over_30_s_is_trimmed_with_a_notice(flite_speech: Callable[..., tuple[np.ndarray, int]]) -> None:
    speech, _ = flite_speech("awb", rate=RATE)
    long = np.tile(speech, int(35 * RATE / speech.shape[0]) + 1)
    ref = prepare_reference(long, RATE)
    assert ref.duration_s == pytest.approx(30.0)
    assert "30 s" in ref.notices[0]


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        (np.zeros(0, np.float32), "empty"),
        (np.zeros(3 * RATE, np.float32), "silent"),
        (np.full(3 * RATE, 1e-5, np.float32), "silent"),
        (np.array([0.1, np.nan] * RATE, np.float32), "NaN"),
        (np.array([0.1, np.inf] * RATE, np.float32), "NaN or infinite"),
    ],
)
def test_unusable_references_are_refused(samples: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidAudioError, match=message):
        prepare_reference(samples, RATE)


def test_sub_second_reference_is_refused(flite_speech: Callable[..., tuple[np.ndarray, int]]) -> None:
    short, _ = flite_speech("slt", text="Hi.", rate=RATE)
    padded = np.concatenate([np.zeros(RATE), short[: int(0.6 * RATE)], np.zeros(RATE)]).astype(np.float32)
    with pytest.raises(InvalidAudioError, match="at least 1 s"):
        prepare_reference(padded, RATE)
