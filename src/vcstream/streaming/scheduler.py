"""One block scheduler per engine (per device): every live session's blocks go through it.

Sessions hand it prepared block requests (``EngineSession.prepare``), each due by a deadline: the time
its output must reach the listener for the stream to stay continuous. Its workers take requests
earliest-deadline-first; a worker gathers up to ``max_batch`` requests that share a ``batch_key`` (same
shapes), waiting at most ``max_wait_s`` for more while the earliest deadline allows, and runs them in
one ``Engine.run_batch``. A device with a batched forward pass (Seed-VC) gets one worker, so every
session shares its forward passes; engines without one (WORLD, passthrough) get a small pool of CPU
workers taking one request at a time.

Overload policy: a request that cannot finish by its deadline (by the recent duration of a batch of
its kind) is skipped, and its session puts concealment in its place, so latency never grows. A
session's request that follows a skipped one runs whatever its deadline (``must_run``), so no session
is skipped for good and a device slower than real time still converts every other block. One
session's failure reaches only that session: a failed batch is re-run request by request.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from vcstream.engines.base import Engine, EngineSession

log = logging.getLogger(__name__)

#: weight of the newest batch in the running estimate of a batch's duration
_ESTIMATE_WEIGHT = 0.3
#: a skip-free stretch this long ends an overload episode (the next skip is logged again)
_RECOVERY_S = 10.0


class SchedulerClosed(RuntimeError):
    """The scheduler was closed: no more requests are taken."""


@dataclass(frozen=True)
class SchedulerConfig:
    """How one scheduler runs. ``for_engine`` gives the defaults for an engine's kind."""

    workers: int = 1
    max_batch: int = 1
    max_wait_s: float = 0.0
    name: str = "blocks"

    def __post_init__(self) -> None:
        if self.workers < 1 or self.max_batch < 1 or self.max_wait_s < 0:
            raise ValueError("a scheduler needs at least one worker, batches of at least 1, a wait >= 0")

    @classmethod
    def for_engine(
        cls, engine: Engine, *, max_batch: int | None = None, max_wait_s: float | None = None
    ) -> SchedulerConfig:
        """A batched model: one worker owns the device and batches (64 on a GPU, 8 on the CPU,
        where a bigger batch only adds latency). Others: a pool of CPU workers, one block each."""
        name = f"{engine.name}-{engine.device}"
        if engine.batched_forward:
            return cls(
                workers=1,
                max_batch=max_batch or (64 if engine.on_gpu else 8),
                max_wait_s=0.002 if max_wait_s is None else max_wait_s,
                name=name,
            )
        return cls(workers=min(4, os.cpu_count() or 1), max_batch=max_batch or 1, max_wait_s=0.0, name=name)


class BlockClient(Protocol):
    """What a session hears back about its requests (called on a scheduler worker, never under the
    scheduler's lock; must not block for long)."""

    def block_done(self, job: BlockJob, result: Any, seconds: float) -> None: ...

    def block_skipped(self, job: BlockJob) -> None: ...

    def block_failed(self, job: BlockJob, error: BaseException) -> None: ...


@dataclass(eq=False)
class BlockJob:
    """One session's prepared block, due by ``deadline`` (``time.monotonic()``)."""

    client: BlockClient
    session: EngineSession
    request: Any
    deadline: float
    #: seconds of audio the block holds (what skipping it costs the listener)
    audio_s: float
    #: run even if late: the session's previous block was skipped
    must_run: bool = False
    #: when the block's last input sample arrived (``time.monotonic()``; default: when queued)
    ready_at: float | None = None
    key: Hashable = None
    queued: float = field(default_factory=time.monotonic)


@dataclass
class SchedulerCounters:
    batches: int = 0
    #: blocks run (done or failed), skipped for their deadline, finished after it
    blocks: int = 0
    skipped: int = 0
    late: int = 0
    failed: int = 0
    #: seconds of audio skipped: the delay the listeners would have accumulated without the policy
    skipped_audio_s: float = 0.0
    #: seconds the workers spent in ``run_batch``, and seconds of audio those runs covered
    busy_s: float = 0.0
    audio_s: float = 0.0
    largest_batch: int = 0
    #: the latest run blocks' response times (input complete -> result), seconds
    response_s: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=4096))


@dataclass(frozen=True)
class SchedulerStats:
    name: str
    workers: int
    max_batch: int
    queued: int
    batches: int
    blocks: int
    skipped: int
    late: int
    failed: int
    skipped_audio_s: float
    busy_s: float
    audio_s: float
    mean_batch: float
    largest_batch: int
    #: response time of recent run blocks (input complete -> result): median, 95th percentile (ms)
    response_ms_p50: float | None
    response_ms_p95: float | None
    #: in an overload episode: blocks were skipped within the last ``_RECOVERY_S`` seconds
    overloaded: bool


class BlockScheduler:
    """Runs every session's blocks of one engine; see the module docstring for the policy."""

    def __init__(self, engine: Engine, config: SchedulerConfig | None = None) -> None:
        self.engine = engine
        self.config = config or SchedulerConfig.for_engine(engine)
        self._queue: list[BlockJob] = []
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closing = False
        self._estimate_s: dict[Hashable, float] = {}
        self.counters = SchedulerCounters()
        self._overload_since: float | None = None
        self._last_skip = 0.0
        self._workers = [
            threading.Thread(target=self._work, name=f"vcstream-{self.config.name}-{i}", daemon=True)
            for i in range(self.config.workers)
        ]
        for worker in self._workers:
            worker.start()

    # -- sessions ---------------------------------------------------------------------------------

    def submit(self, job: BlockJob) -> None:
        """Queue a prepared block (any thread; never waits on inference)."""
        job.key = self.engine.batch_key(job.request)
        with self._lock:
            if self._closing:
                raise SchedulerClosed(f"scheduler {self.config.name} is closed")
            self._queue.append(job)
            self._wake.notify()

    def close(self) -> None:
        """Stop taking requests, let the workers finish their batches, tell the owners of requests
        still queued that they were skipped, and join every worker."""
        with self._lock:
            self._closing = True
            left, self._queue = self._queue, []
            self._wake.notify_all()
        for job in left:
            self._notify_skipped(job)
        for worker in self._workers:
            worker.join()

    @property
    def closed(self) -> bool:
        return self._closing

    def snapshot(self) -> SchedulerStats:
        with self._lock:
            c = self.counters
            queued = len(self._queue)
            overloaded = self._overload_since is not None
            response = np.array(c.response_s) * 1000
            return SchedulerStats(
                name=self.config.name,
                workers=self.config.workers,
                max_batch=self.config.max_batch,
                queued=queued,
                batches=c.batches,
                blocks=c.blocks,
                skipped=c.skipped,
                late=c.late,
                failed=c.failed,
                skipped_audio_s=c.skipped_audio_s,
                busy_s=c.busy_s,
                audio_s=c.audio_s,
                mean_batch=c.blocks / c.batches if c.batches else 0.0,
                largest_batch=c.largest_batch,
                response_ms_p50=float(np.percentile(response, 50)) if response.size else None,
                response_ms_p95=float(np.percentile(response, 95)) if response.size else None,
                overloaded=overloaded,
            )

    # -- workers ----------------------------------------------------------------------------------

    def _work(self) -> None:
        while self._step():
            pass

    def _step(self) -> bool:
        """One round of a worker; False once closing. (A method of its own so that no job stays
        referenced by a worker's locals while it waits: a finished session must be collectable.)"""
        with self._lock:
            while not self._queue and not self._closing:
                self._wake.wait()
            if self._closing:
                return False
            skipped, batch, wait_s = self._take(time.monotonic())
            if batch is None and not skipped and wait_s > 0:
                self._wake.wait(wait_s)
        for job in skipped:
            self._notify_skipped(job)
        if batch:
            self._run(batch)
        return True

    def _take(self, now: float) -> tuple[list[BlockJob], list[BlockJob] | None, float]:
        """Under the lock: the requests to skip, the next batch (None: wait ``wait_s`` for more)."""
        skipped = [j for j in self._queue if not j.must_run and now + self._estimate(j.key) > j.deadline]
        if skipped:
            self._queue = [j for j in self._queue if j not in skipped]
            self._count_skips(skipped, now)
        if not self._queue:
            return skipped, None, 0.0
        first = min(self._queue, key=lambda j: j.deadline)
        same = sorted((j for j in self._queue if j.key == first.key), key=lambda j: j.deadline)
        batch = same[: self.config.max_batch]
        if len(batch) < self.config.max_batch and self.config.max_wait_s > 0:
            # wait for more of the same shape while the first request can afford it
            until = min(first.queued + self.config.max_wait_s, first.deadline - self._estimate(first.key))
            if until > now and not skipped:
                return skipped, None, until - now
        chosen = set(map(id, batch))
        self._queue = [j for j in self._queue if id(j) not in chosen]
        return skipped, batch, 0.0

    def _estimate(self, key: Hashable) -> float:
        return self._estimate_s.get(key, 0.0)

    def _run(self, batch: list[BlockJob]) -> None:
        start = time.perf_counter()
        outcomes: list[tuple[Any, BaseException | None]]
        try:
            results = self.engine.run_batch([j.session for j in batch], [j.request for j in batch])
            outcomes = [(r, None) for r in results]
        except Exception as exc:
            outcomes = [(None, exc)] if len(batch) == 1 else self._run_alone(batch)
        seconds = time.perf_counter() - start
        done = time.monotonic()
        with self._lock:
            key = batch[0].key
            previous = self._estimate_s.get(key, seconds)
            self._estimate_s[key] = (1 - _ESTIMATE_WEIGHT) * previous + _ESTIMATE_WEIGHT * seconds
            c = self.counters
            c.batches += 1
            c.blocks += len(batch)
            c.failed += sum(1 for _, error in outcomes if error is not None)
            c.late += sum(1 for j in batch if done > j.deadline)
            c.busy_s += seconds
            c.audio_s += sum(j.audio_s for j in batch)
            c.largest_batch = max(c.largest_batch, len(batch))
            c.response_s.extend(done - (j.queued if j.ready_at is None else j.ready_at) for j in batch)
            self._end_overload(done)
        for job, (result, error) in zip(batch, outcomes, strict=True):
            try:
                if error is None:
                    job.client.block_done(job, result, seconds)
                else:
                    job.client.block_failed(job, error)
            except Exception:  # one session's output code must not stop the device
                log.exception("scheduler %s: a session's block callback failed", self.config.name)

    def _run_alone(self, batch: list[BlockJob]) -> list[tuple[Any, BaseException | None]]:
        """A batch failed: run its requests one by one, so only the faulty ones fail."""
        outcomes: list[tuple[Any, BaseException | None]] = []
        for job in batch:
            try:
                outcomes.append((self.engine.run_batch([job.session], [job.request])[0], None))
            except Exception as exc:
                outcomes.append((None, exc))
        return outcomes

    # -- overload ---------------------------------------------------------------------------------

    def _count_skips(self, skipped: list[BlockJob], now: float) -> None:
        c = self.counters
        c.skipped += len(skipped)
        c.skipped_audio_s += sum(j.audio_s for j in skipped)
        self._last_skip = now
        if self._overload_since is None:
            self._overload_since = now
            busy = f"{c.busy_s / c.audio_s:.2f} s of compute per s of audio" if c.audio_s else "no runs yet"
            log.warning(
                "scheduler %s runs slower than real time: %d block(s) skipped for their deadline "
                "(%.2f s of audio concealed so far), %d waiting, %s",
                self.config.name,
                len(skipped),
                c.skipped_audio_s,
                len(self._queue),
                busy,
            )

    def _end_overload(self, now: float) -> None:
        if self._overload_since is not None and now - self._last_skip > _RECOVERY_S:
            log.info(
                "scheduler %s keeps up again after %.1f s (%.2f s of audio concealed in all)",
                self.config.name,
                self._last_skip - self._overload_since,
                self.counters.skipped_audio_s,
            )
            self._overload_since = None

    def _notify_skipped(self, job: BlockJob) -> None:
        try:
            job.client.block_skipped(job)
        except Exception:
            log.exception("scheduler %s: a session's skip callback failed", self.config.name)
