"""The live quality worker with the real CAM++ encoder: estimates from speech (and none from silence),
the chosen voice's embedding made once from its reference, and work dropped, never waited for, when
the worker is saturated (the one place a slowed encoder, a subclass of the real one, stands in)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt
import pytest

from vcstream.audio.wav import pcm16_wav
from vcstream.quality.live import HANDOFF_S, WINDOW_S, CallQuality, LiveQualityWorker, speech_only
from vcstream.quality.speaker import SpeakerEncoder
from waiting import wait_until

Speech = Callable[..., tuple[np.ndarray, int]]
RATE = 16000
CHUNK = RATE // 50  # 20 ms, as media threads hand it over


def _feed(call: CallQuality, output: np.ndarray, caller: np.ndarray | None = None) -> None:
    """Hand audio over the way a call does: 20 ms at a time, both directions."""
    for start in range(0, output.shape[0] - CHUNK + 1, CHUNK):
        if caller is not None:
            call.on_input(caller[start : start + CHUNK], RATE)
        call.on_output(output[start : start + CHUNK], RATE)


def _looped(samples: np.ndarray, seconds: float) -> np.ndarray:
    return np.resize(samples, round(seconds * RATE)).astype(np.float32)


@pytest.fixture(scope="module")
def worker() -> Iterator[LiveQualityWorker]:
    shared = LiveQualityWorker()
    yield shared
    shared.close()


def test_speech_only_skips_silence(flite_speech: Speech) -> None:
    speech, _ = flite_speech("slt", None, RATE)
    padded = np.concatenate([np.zeros(RATE, np.float32), speech, np.zeros(RATE, np.float32)])
    kept = speech_only(padded, RATE)
    assert 0.5 * speech.shape[0] < kept.shape[0] <= speech.shape[0]
    assert speech_only(np.zeros(3 * RATE, np.float32), RATE).shape[0] == 0


def test_estimates_similarity_to_the_voice_and_to_the_caller(
    worker: LiveQualityWorker, flite_speech: Speech
) -> None:
    slt, _ = flite_speech("slt", None, RATE)
    awb, _ = flite_speech("awb", None, RATE)
    slt_other, _ = flite_speech("slt", "A different sentence, spoken by the same synthetic voice.", RATE)
    seen: list[tuple[str, float]] = []
    worker.add_reference("voice-slt", pcm16_wav(slt_other, RATE))
    # converted output in the voice's speaker, the caller another one: close to the voice, far from you
    like_voice = worker.open_call("world", lambda engine, value: seen.append((engine, value)))
    like_voice.set_voice("voice-slt")
    _feed(like_voice, _looped(slt, WINDOW_S + 1.5), _looped(awb, WINDOW_S + 1.5))
    estimate = wait_until(lambda: like_voice.estimate.windows and like_voice.estimate, 60, "an estimate")
    # the other way round: output in the caller's speaker
    like_caller = worker.open_call("world")
    like_caller.set_voice("voice-slt")
    _feed(like_caller, _looped(awb, WINDOW_S + 1.5), _looped(awb, WINDOW_S + 1.5))
    other = wait_until(lambda: like_caller.estimate.windows and like_caller.estimate, 30, "an estimate")
    print(f"\nsame speaker as the voice: {estimate}\nsame speaker as the caller: {other}")
    assert estimate.voice_similarity is not None and other.voice_similarity is not None
    assert estimate.own_voice_similarity is not None and other.own_voice_similarity is not None
    assert estimate.voice_similarity > other.voice_similarity + 0.2
    assert other.own_voice_similarity > estimate.own_voice_similarity + 0.2
    assert seen == [("world", estimate.voice_similarity)]
    assert worker.knows_voice("voice-slt")  # embedded once, kept


def test_silence_makes_no_estimate(worker: LiveQualityWorker) -> None:
    before = worker.stats()
    call = worker.open_call("world")
    call.set_voice("unknown-voice")
    _feed(call, np.zeros(round(3 * WINDOW_S * RATE), np.float32))
    wait_until(worker.idle, 10, "the worker took every piece")
    after = worker.stats()
    assert after.pieces - before.pieces == round(3 * WINDOW_S / HANDOFF_S)
    assert call.estimate.windows == 0 and after.estimates == before.estimates


class _HeldEncoder(SpeakerEncoder):
    """CAM++ that waits for ``release`` before each embedding: a worker saturated on cue."""

    entered = threading.Event()
    release = threading.Event()

    def embed(self, samples: np.ndarray, rate: int) -> npt.NDArray[np.float32]:
        self.entered.set()
        self.release.wait()
        return super().embed(samples, rate)


def test_saturated_worker_drops_pieces_instead_of_blocking(flite_speech: Speech) -> None:
    slt, _ = flite_speech("slt", None, RATE)
    held = LiveQualityWorker(load=_HeldEncoder.load, queue_limit=4)
    try:
        call = held.open_call("world")
        call.set_voice("v")
        # a second at a time, each taken before the next, until a window is whole and the worker
        # (having loaded CAM++) holds in embed
        second = round(HANDOFF_S * RATE)
        first = _looped(slt, 3 * WINDOW_S)
        for start in range(0, first.shape[0], second):
            if _HeldEncoder.entered.is_set():
                break
            _feed(call, first[start : start + second], first[start : start + second])
            wait_until(lambda: held.idle() or _HeldEncoder.entered.is_set(), 60, "the piece was taken")
        assert _HeldEncoder.entered.wait(60), "the worker never started an estimate"
        more = _looped(slt, 4 * WINDOW_S)
        feeder = threading.Thread(target=_feed, args=(call, more, more))
        feeder.start()
        feeder.join(30)  # a blocking hand-off would hang here while the encoder is held
        assert not feeder.is_alive(), "handing audio to a saturated worker blocked"
        assert held.stats().dropped > 0
        _HeldEncoder.release.set()
        wait_until(held.idle, 60, "the worker caught up")
        assert call.estimate.windows >= 1 and call.estimate.own_voice_similarity is not None
    finally:
        _HeldEncoder.release.set()
        held.close()
