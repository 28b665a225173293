"""One live stream between a media input and a media output, converted through the block scheduler.

Media threads (GStreamer streaming threads, network callbacks) call ``feed`` and never wait on
inference: audio goes into a bounded backlog; whenever the session has no block at the scheduler and
a whole block is in, it prepares that block (``EngineSession.prepare``) and hands it to the
``BlockScheduler``, due ``due_blocks`` block durations after its last sample arrived (by default two:
one to run it, one of slack for a busy machine, as the backlog bound allows). The scheduler's worker hands the
result back (``finish``, output resampling, ``on_output``) and the next block goes out. The session
owns no thread. Policy when the engine falls behind: the backlog never holds more than
``max_backlog_s`` of input (older input is dropped and counted), and a block the scheduler cannot run
in time is concealed (``EngineSession.conceal``), so the delay a listener hears stays bounded.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vcstream.audio.types import Audio
from vcstream.engines.base import VoiceProfile
from vcstream.streaming.converter import StreamConverter
from vcstream.streaming.scheduler import BlockJob, BlockScheduler, SchedulerClosed

log = logging.getLogger(__name__)


@dataclass
class LiveCounters:
    chunks_in: int = 0
    samples_in: int = 0
    samples_out: int = 0
    #: blocks converted (not the concealed ones); counted with their output under one lock, so a
    #: snapshot never sees a block whose audio is not counted yet
    blocks: int = 0
    dropped_samples: int = 0
    drop_events: int = 0
    late_blocks: int = 0  # blocks whose output came after their deadline
    #: blocks the scheduler skipped for their deadline (concealed)
    skipped_blocks: int = 0
    max_backlog_samples: int = 0
    errors: int = 0


@dataclass(frozen=True)
class LiveStats:
    """One moment of a ``LiveSession``: its counters (``LiveCounters``), recent inference times and
    the figures derived from them. Fields in the order of the JSON form (``to_json``)."""

    blocks: int
    samples_in: int
    samples_out: int
    #: median and 95th percentile of recent blocks' inference times; None before the first block
    inference_ms_p50: float | None
    inference_ms_p95: float | None
    chunks_in: int
    dropped_samples: int
    drop_events: int
    late_blocks: int
    skipped_blocks: int
    max_backlog_samples: int
    errors: int
    backlog_ms: float
    dropped_ms: float
    block_ms: float
    algorithmic_latency_ms: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class LiveSession:
    """Feeds a ``StreamConverter``'s blocks through a ``BlockScheduler``, one block at a time."""

    def __init__(
        self,
        converter: StreamConverter,
        on_output: Callable[[Audio], None],
        scheduler: BlockScheduler,
        max_backlog_s: float | None = None,
        name: str = "live",
        due_blocks: float = 2.0,
    ) -> None:
        self.converter = converter
        self.name = name
        self._on_output = on_output
        self._scheduler = scheduler
        rate = converter.io_rate
        self._block_s = converter.session.block_size / converter.session.sample_rate
        self._due_s = due_blocks * self._block_s
        # Default bound: two blocks of backlog (one being converted, one waiting) plus 60 ms of slack.
        bound = max_backlog_s if max_backlog_s is not None else 2 * converter.block_size / rate + 0.06
        self._max_backlog = int(bound * rate)
        #: input not yet handed to the converter, with the monotonic time each chunk arrived
        self._backlog: collections.deque[tuple[Audio, float]] = collections.deque()
        self._backlog_samples = 0
        #: arrival time of the chunk that completed the block(s) the converter holds
        self._held_arrival = 0.0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight: BlockJob | None = None
        self._skipped_last = False
        self._stopping = False
        self._pending_voice: VoiceProfile | None = None
        self.counters = LiveCounters()
        self.error: BaseException | None = None

    # -- called from media threads: never waits on inference -------------------------------------
    def feed(self, chunk: Audio) -> None:
        with self._lock:
            if self._stopping:
                return
            self._backlog.append((chunk, time.monotonic()))
            self._backlog_samples += chunk.shape[0]
            self.counters.chunks_in += 1
            self.counters.samples_in += chunk.shape[0]
            while self._backlog_samples > self._max_backlog and len(self._backlog) > 1:
                dropped, _ = self._backlog.popleft()
                self._backlog_samples -= dropped.shape[0]
                self.counters.dropped_samples += dropped.shape[0]
                self.counters.drop_events += 1
            self.counters.max_backlog_samples = max(self.counters.max_backlog_samples, self._backlog_samples)
            job = self._next_job()
        self._submit(job)

    def set_voice(self, voice: VoiceProfile) -> None:
        """Switch voice from the next block. The engine's per-voice work runs here, on the caller's
        thread (a control thread), so the switch costs the real-time threads nothing."""
        self.converter.engine.warm_voice(voice, self.converter.settings)
        with self._lock:
            self._pending_voice = voice

    def stop(self, warn_after_s: float = 5.0) -> None:
        """Stop taking input, wait for the block at the scheduler, then close the engine session.
        The wait has no limit: closing a session while a block still runs in it would pull the engine
        out from under that block (with Seed-VC on a slow device a block takes seconds; torch aborts
        the process if it exits meanwhile)."""
        with self._lock:
            self._stopping = True
            if not self._idle.wait_for(lambda: self._in_flight is None, warn_after_s):
                log.warning(
                    "live session %s: still converting after %g s; waiting for the block in progress",
                    self.name,
                    warn_after_s,
                )
                self._idle.wait_for(lambda: self._in_flight is None)
        self.converter.close()

    @property
    def running(self) -> bool:
        return not self._stopping

    def snapshot(self) -> LiveStats:
        """Statistics for logs, the client and metrics export."""
        with self._lock:
            counters = dataclasses.replace(self.counters)
            backlog = self._backlog_samples
        rate, stats = self.converter.io_rate, self.converter.stats
        return LiveStats(
            # the counters published with each block's output, not the converter's own
            blocks=counters.blocks,
            samples_in=counters.samples_in,
            samples_out=counters.samples_out,
            inference_ms_p50=stats.inference_ms(50),
            inference_ms_p95=stats.inference_ms(95),
            chunks_in=counters.chunks_in,
            dropped_samples=counters.dropped_samples,
            drop_events=counters.drop_events,
            late_blocks=counters.late_blocks,
            skipped_blocks=counters.skipped_blocks,
            max_backlog_samples=counters.max_backlog_samples,
            errors=counters.errors,
            backlog_ms=1000 * backlog / rate,
            dropped_ms=1000 * counters.dropped_samples / rate,
            block_ms=1000 * self.converter.block_size / rate,
            algorithmic_latency_ms=1000 * self.converter.algorithmic_latency_s,
        )

    # -- the next block (under the lock, on a media thread or a scheduler worker) ----------------
    def _next_job(self) -> BlockJob | None:
        """Prepare the next whole block for the scheduler, when none is there already."""
        if self._in_flight is not None or self._stopping:
            return None
        converter = self.converter
        try:
            block = converter.take_block()
            while block is None and self._backlog:
                chunk, self._held_arrival = self._backlog.popleft()
                self._backlog_samples -= chunk.shape[0]
                converter.accept(chunk)
                block = converter.take_block()
            if block is None:
                return None
            if self._pending_voice is not None:
                converter.set_voice(self._pending_voice)
                self._pending_voice = None
            request = converter.session.prepare(block)
        except Exception as exc:  # a broken engine or chunk must not take the media pipeline down
            self._count_error(exc)
            return None
        job = BlockJob(
            client=self,
            session=converter.session,
            request=request,
            deadline=self._held_arrival + self._due_s,
            audio_s=self._block_s,
            must_run=self._skipped_last,
            ready_at=self._held_arrival,
        )
        self._in_flight = job
        return job

    def _submit(self, job: BlockJob | None) -> None:
        if job is None:
            return
        try:
            self._scheduler.submit(job)
        except SchedulerClosed as exc:  # the server is shutting down: no more blocks
            with self._lock:
                self._stopping = True
                self._in_flight = None
                self.error = exc
                self._idle.notify_all()
        except Exception as exc:  # the engine refused the request: this block is lost, not the session
            with self._lock:
                self._count_error(exc)
                self._in_flight = None
                self._idle.notify_all()

    def _count_error(self, exc: BaseException) -> None:
        self.counters.errors += 1
        self.error = exc
        log.error("live session %s: conversion failed: %s: %s", self.name, type(exc).__name__, exc)

    # -- BlockClient: a scheduler worker reports on our block --------------------------------------
    def block_done(self, job: BlockJob, result: Any, seconds: float) -> None:
        try:
            out = self.converter.session.finish(result)
        except Exception as exc:
            with self._lock:
                self._count_error(exc)
            self._complete(job, self.converter.session.conceal(), None)
            return
        self._complete(job, out, seconds, late=time.monotonic() > job.deadline)

    def block_skipped(self, job: BlockJob) -> None:
        self._complete(job, self.converter.session.conceal(), None, skipped=True)

    def block_failed(self, job: BlockJob, error: BaseException) -> None:
        with self._lock:
            self._count_error(error)
        self._complete(job, self.converter.session.conceal(), None)

    def _complete(
        self, job: BlockJob, block: Audio, seconds: float | None, *, late: bool = False, skipped: bool = False
    ) -> None:
        """Deliver a block's output, then hand the next block over (output stays in order: the next
        block goes out only after this one's output did)."""
        out = self.converter.deliver(block, seconds)
        with self._lock:
            self.counters.blocks += seconds is not None  # converted (a concealed block is not)
            self.counters.samples_out += out.shape[0]
            self.counters.late_blocks += late
            self.counters.skipped_blocks += skipped
        if out.shape[0]:
            try:
                self._on_output(out)
            except Exception:
                log.exception("live session %s: delivering output failed", self.name)
        with self._lock:
            self._skipped_last = skipped
            self._in_flight = None
            self._idle.notify_all()
            following = self._next_job()
        self._submit(following)
