"""LiveSession: media threads never wait, latency stays bounded when the engine is slow (its blocks run
on a real BlockScheduler)."""

import threading
import time

import numpy as np

from slow_engine import SlowEngine
from vcstream.audio.types import Audio
from vcstream.engines.base import Engine, EngineSession, VoiceProfile
from vcstream.engines.passthrough import PassthroughEngine, PassthroughSession
from vcstream.engines.settings import SessionSettings
from vcstream.streaming.converter import StreamConverter
from vcstream.streaming.live import LiveSession
from vcstream.streaming.scheduler import BlockScheduler
from waiting import wait_until

RATE = 16000


def collect(engine: Engine, chunks: list[np.ndarray], pace_s: float) -> tuple[LiveSession, list[float]]:
    voice = engine.prepare_voice(np.zeros(RATE, np.float32), RATE)
    scheduler = BlockScheduler(engine)
    live = LiveSession(
        StreamConverter(engine, voice, RATE, engine.settings(block_time=0.02)), lambda _audio: None, scheduler
    )
    feed_times = []
    for chunk in chunks:
        start = time.perf_counter()
        live.feed(chunk)
        feed_times.append(time.perf_counter() - start)
        time.sleep(pace_s)  # paced like a media thread delivering audio
    total = sum(c.shape[0] for c in chunks)

    def dealt_with() -> bool:  # all converted or dropped, but for the block the converter may hold
        counters = live.snapshot()
        return bool(counters.samples_out + counters.dropped_samples >= total - 400)

    wait_until(dealt_with, 5, "every chunk was converted, concealed or dropped", state=live.snapshot)
    live.stop()
    scheduler.close()
    return live, feed_times


def test_fast_engine_passes_everything_through_in_order() -> None:
    x = np.sin(np.arange(RATE) * 0.05).astype(np.float32)
    chunks = [x[i : i + 320] for i in range(0, RATE, 320)]
    live, _ = collect(PassthroughEngine(RATE), chunks, pace_s=0.001)
    snap = live.snapshot()
    assert snap.dropped_samples == 0
    assert snap.samples_in == RATE
    assert snap.samples_out >= RATE - 400
    assert snap.errors == 0


def test_slow_engine_drops_by_policy_and_feed_never_waits() -> None:
    # Each 20 ms block takes 60 ms: three times slower than real time.
    chunks = [np.full(320, 0.1, np.float32) for _ in range(40)]
    live, feed_times = collect(SlowEngine(slowdown=3.0, sample_rate=RATE), chunks, pace_s=0.02)
    snap = live.snapshot()
    assert max(feed_times) < 0.01  # the media thread never waited for inference
    assert snap.dropped_samples > 0 and snap.drop_events > 0
    # The backlog (the delay that would grow without the policy) stayed within its bound.
    bound = 2 * 320 + int(0.06 * RATE)
    assert snap.max_backlog_samples <= bound + 320
    assert snap.late_blocks > 0


def test_engine_error_is_counted_and_does_not_kill_the_worker() -> None:
    class Broken(PassthroughSession):
        calls = 0

        def process(self, block: Audio) -> Audio:
            Broken.calls += 1
            if Broken.calls == 2:
                raise RuntimeError("boom")
            return super().process(block)

    class BrokenEngine(PassthroughEngine):
        def open_session(self, voice: VoiceProfile, settings: SessionSettings | None = None) -> EngineSession:
            return Broken(RATE, 0.02)

    engine = BrokenEngine(RATE)
    out: list[Audio] = []
    scheduler = BlockScheduler(engine)
    live = LiveSession(
        StreamConverter(engine, engine.prepare_voice(np.zeros(10), RATE), RATE), out.append, scheduler
    )
    for _ in range(6):
        live.feed(np.zeros(320, np.float32))
        time.sleep(0.01)  # chunks apart, as a media thread delivers them
    wait_until(
        lambda: live.snapshot().errors == 1 and live.snapshot().backlog_ms == 0,
        5,
        "the worker took every chunk and counted the failure",
        state=live.snapshot,
    )
    assert live.running
    assert live.snapshot().errors == 1
    # and it still converts: a block fed after the failure comes out
    converted = live.snapshot().samples_out
    live.feed(np.zeros(320, np.float32))
    wait_until(lambda: live.snapshot().samples_out > converted, 5, "a block converted after the failure")
    live.stop()
    scheduler.close()
    assert not live.running


def test_stop_waits_for_the_block_in_progress_before_closing_the_engine_session() -> None:
    """Closing a session while a block still runs in it would pull the engine out from under it."""
    events: list[str] = []
    started = threading.Event()

    class Slow(PassthroughSession):
        def process(self, block: Audio) -> Audio:
            events.append("process")
            started.set()
            time.sleep(0.3)  # the inference time it simulates, longer than stop's warning delay
            events.append("processed")
            return super().process(block)

        def close(self) -> None:
            events.append("close")

    class SlowEngine(PassthroughEngine):
        def open_session(self, voice: VoiceProfile, settings: SessionSettings | None = None) -> EngineSession:
            return Slow(RATE, 0.02)

    engine = SlowEngine(RATE)
    scheduler = BlockScheduler(engine)
    live = LiveSession(
        StreamConverter(engine, engine.prepare_voice(np.zeros(10), RATE), RATE), lambda _a: None, scheduler
    )
    live.feed(np.zeros(320, np.float32))
    assert started.wait(5)
    live.stop(warn_after_s=0.05)
    assert events == ["process", "processed", "close"]
    assert not live.running
    scheduler.close()
