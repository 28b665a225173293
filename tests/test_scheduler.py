"""The block scheduler: batches by shape, earliest deadline first; skips what cannot be in time and
conceals it; keeps a failure to its session; starves nobody; joins its threads. Real engines (WORLD,
passthrough) and passthrough engines slowed down on purpose."""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable
from typing import Any

import numpy as np
import pytest

from slow_engine import BatchedEngine
from vcstream.audio.types import Audio
from vcstream.engines.base import Engine
from vcstream.engines.world import WorldEngine
from vcstream.streaming.converter import StreamConverter
from vcstream.streaming.live import LiveSession
from vcstream.streaming.scheduler import BlockJob, BlockScheduler, SchedulerClosed, SchedulerConfig
from waiting import wait_until

RATE = 16000


class ShapedEngine(BatchedEngine):
    """Requests of one length share a batch (the length is the shape)."""

    def batch_key(self, request: Any) -> Hashable:
        return len(request)


class Recorder:
    """A BlockClient that keeps what it is told, in order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[str, BlockJob, Any]] = []

    def block_done(self, job: BlockJob, result: Any, seconds: float) -> None:
        with self.lock:
            self.events.append(("done", job, result))

    def block_skipped(self, job: BlockJob) -> None:
        with self.lock:
            self.events.append(("skipped", job, None))

    def block_failed(self, job: BlockJob, error: BaseException) -> None:
        with self.lock:
            self.events.append(("failed", job, error))

    def count(self) -> int:
        with self.lock:
            return len(self.events)


def job(engine: Engine, client: Recorder, block: Audio, due_in_s: float) -> BlockJob:
    session = engine.open_session(engine.prepare_voice(np.zeros(RATE, np.float32), RATE))
    return BlockJob(client, session, block, deadline=time.monotonic() + due_in_s, audio_s=0.02)


def test_batches_hold_one_shape_and_go_earliest_deadline_first() -> None:
    engine = ShapedEngine(batch_s=0.1, sample_rate=RATE)
    scheduler = BlockScheduler(engine, SchedulerConfig(workers=1, max_batch=4))
    client = Recorder()
    try:
        scheduler.submit(job(engine, client, np.zeros(100, np.float32), 10))  # keeps the worker busy
        wait_until(lambda: engine.batches == [1], 5, "the first batch started")
        late = [job(engine, client, np.full(320, i, np.float32), 20 + i) for i in range(6)]
        early = [job(engine, client, np.full(640, 10 + i, np.float32), 15 + i) for i in range(3)]
        for j in late + early:
            scheduler.submit(j)
        wait_until(lambda: client.count() == 10, 10, "every block came back")
    finally:
        scheduler.close()
    assert engine.batches == [1, 3, 4, 2]  # the earlier deadlines' shape first, then at most 4
    done = [(j, result) for kind, j, result in client.events[1:]]
    assert [j for j, _ in done] == early + late  # in deadline order within each shape
    assert all(np.array_equal(result, j.request) for j, result in done)
    stats = scheduler.snapshot()
    assert (stats.batches, stats.blocks, stats.largest_batch, stats.skipped) == (4, 10, 4, 0)


def test_a_failing_request_fails_alone_in_its_batch() -> None:
    engine = BatchedEngine(batch_s=0.1, sample_rate=RATE)
    scheduler = BlockScheduler(engine, SchedulerConfig(workers=1, max_batch=8))
    client = Recorder()
    try:
        scheduler.submit(job(engine, client, np.zeros(320, np.float32), 10))
        wait_until(lambda: engine.batches == [1], 5, "the first batch started")
        blocks = [np.full(320, 1.0, np.float32), np.full(320, BatchedEngine.FAIL, np.float32)]
        blocks.append(np.full(320, 3.0, np.float32))
        for block in blocks:
            scheduler.submit(job(engine, client, block, 10))
        wait_until(lambda: client.count() == 4, 10, "every block came back")
    finally:
        scheduler.close()
    assert engine.batches == [1, 3, 1, 1, 1]  # the batch failed, then each request alone
    outcome = {float(j.request[0]): kind for kind, j, _ in client.events[1:]}
    assert outcome == {1.0: "done", BatchedEngine.FAIL: "failed", 3.0: "done"}
    assert scheduler.snapshot().failed == 1


def test_close_joins_every_worker_and_refuses_new_blocks() -> None:
    before = set(threading.enumerate())
    engine = BatchedEngine(batch_s=0.2, sample_rate=RATE)
    scheduler = BlockScheduler(engine, SchedulerConfig(workers=3, max_batch=1))
    client = Recorder()
    for _ in range(6):
        scheduler.submit(job(engine, client, np.zeros(320, np.float32), 10))
    wait_until(lambda: len(engine.batches) == 3, 5, "three workers busy")
    scheduler.close()
    assert set(threading.enumerate()) <= before
    kinds = [kind for kind, _, _ in client.events]
    assert kinds.count("done") == 3 and kinds.count("skipped") == 3  # queued ones are told
    with pytest.raises(SchedulerClosed):
        scheduler.submit(job(engine, client, np.zeros(320, np.float32), 10))


def live_session(engine: Engine, scheduler: BlockScheduler, block_time: float, **kw: Any) -> LiveSession:
    voice = engine.prepare_voice(np.zeros(RATE, np.float32), RATE)
    converter = StreamConverter(engine, voice, RATE, engine.settings(block_time=block_time))
    return LiveSession(converter, kw.pop("on_output", lambda _a: None), scheduler, **kw)


def test_a_device_slower_than_real_time_skips_blocks_and_latency_stays_bounded() -> None:
    # 20 ms blocks, 50 ms per batch: 2.5 times slower than real time
    engine = BatchedEngine(batch_s=0.05, sample_rate=RATE)
    scheduler = BlockScheduler(engine, SchedulerConfig(workers=1, max_batch=1))
    out: list[Audio] = []
    live = live_session(engine, scheduler, 0.02, on_output=out.append)
    feed_times, behind = [], []
    start = time.monotonic()
    try:
        for k in range(100):  # 2 s in real time
            time.sleep(max(0.0, start + 0.02 * k - time.monotonic()))
            t = time.perf_counter()
            live.feed(np.full(320, 0.5, np.float32))
            feed_times.append(time.perf_counter() - t)
            s = live.snapshot()
            behind.append(s.samples_in - s.samples_out - s.dropped_samples)  # input not yet out
        wait_until(lambda: live.snapshot().backlog_ms == 0, 2, "the backlog drained")
    finally:
        live.stop()  # after the block in progress
        scheduler.close()
    snap = live.snapshot()
    assert max(feed_times) < 0.01  # the media thread never waited on the engine
    assert snap.skipped_blocks > 10  # the policy skipped ...
    assert snap.blocks > 10  # ... and every skipped session's next block ran
    # latency never grew: what is in but not out stayed within the backlog bound and two blocks
    assert max(behind) <= 2 * 320 + int(0.06 * RATE) + 2 * 320
    assert max(behind[-20:]) <= max(behind[:40]) + 320
    # a skipped block is concealed (silence here), not lost: the output timeline keeps its length
    converted = np.concatenate(out)
    assert converted.shape[0] == snap.samples_out
    assert 0 < np.count_nonzero(converted == 0) < converted.shape[0]
    stats = scheduler.snapshot()
    assert stats.skipped == snap.skipped_blocks and stats.overloaded


def test_a_busy_session_does_not_starve_an_idle_one() -> None:
    engine = BatchedEngine(batch_s=0.03, sample_rate=RATE)
    scheduler = BlockScheduler(engine, SchedulerConfig(workers=1, max_batch=1))
    busy = live_session(engine, scheduler, 0.1, max_backlog_s=10.0)
    calm = live_session(engine, scheduler, 0.1)
    try:
        for _ in range(30):  # three seconds of input at once
            busy.feed(np.full(1600, 0.5, np.float32))
        start = time.monotonic()
        for k in range(10):  # one second in real time
            time.sleep(max(0.0, start + 0.1 * k - time.monotonic()))
            calm.feed(np.full(1600, 0.5, np.float32))
        wait_until(
            lambda: calm.snapshot().blocks + calm.snapshot().skipped_blocks == 10,
            3,
            "the calm session's blocks",
            state=calm.snapshot,
        )
        calm_stats, busy_stats = calm.snapshot(), busy.snapshot()
    finally:
        busy.stop()
        calm.stop()
        scheduler.close()
    assert calm_stats.skipped_blocks <= 1  # its fresh blocks go first (earliest deadline)
    assert busy_stats.skipped_blocks > 0  # the flood's stale blocks are the ones skipped


def test_world_through_the_scheduler_equals_the_file_path() -> None:
    """One live path: blocks run by the scheduler's CPU pool give what the synchronous converter
    gives (WORLD is deterministic)."""
    engine = WorldEngine()
    rng = np.random.default_rng(0)
    t = np.arange(2 * RATE) / RATE
    x = (0.3 * np.sin(2 * np.pi * 140 * t) + 0.01 * rng.standard_normal(t.shape[0])).astype(np.float32)
    voice = engine.prepare_voice(x, RATE)
    settings = engine.settings(block_time=0.1)
    alone = StreamConverter(engine, voice, RATE, settings)
    expected = np.concatenate([alone.push(x[i : i + 1600]) for i in range(0, x.shape[0], 1600)])
    alone.close()
    scheduler = BlockScheduler(engine)
    out: list[Audio] = []
    converter = StreamConverter(engine, voice, RATE, settings)
    live = LiveSession(converter, out.append, scheduler)
    try:
        start = time.monotonic()
        for k, i in enumerate(range(0, x.shape[0], 1600)):
            time.sleep(max(0.0, start + 0.1 * k - time.monotonic()))
            live.feed(x[i : i + 1600])
        wait_until(lambda: live.snapshot().samples_out == expected.shape[0], 5, "every block converted")
        snap = live.snapshot()
    finally:
        live.stop()
        scheduler.close()
    assert snap.skipped_blocks == 0 and snap.errors == 0
    np.testing.assert_array_equal(np.concatenate(out), expected)


def test_sessions_of_many_engines_share_nothing_but_the_scheduler() -> None:
    """Two sessions in one batch get their own outputs back (not each other's)."""
    engine = BatchedEngine(batch_s=0.02, sample_rate=RATE)
    scheduler = BlockScheduler(engine, SchedulerConfig(workers=1, max_batch=8, max_wait_s=0.01))
    outs: dict[str, list[Audio]] = {"a": [], "b": []}
    sessions = {k: live_session(engine, scheduler, 0.02, on_output=outs[k].append) for k in outs}
    try:
        for _ in range(20):
            sessions["a"].feed(np.full(320, 0.25, np.float32))
            sessions["b"].feed(np.full(320, -0.5, np.float32))
            time.sleep(0.02)
        wait_until(lambda: all(s.snapshot().backlog_ms == 0 for s in sessions.values()), 3, "drained")
    finally:
        for s in sessions.values():
            s.stop()
        scheduler.close()
    a, b = np.concatenate(outs["a"]), np.concatenate(outs["b"])
    assert set(np.unique(a)) <= {0.0, 0.25} and set(np.unique(b)) <= {0.0, -0.5}
    assert scheduler.snapshot().largest_batch == 2  # they did share forward passes
