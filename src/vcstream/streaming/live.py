"""Bounded-latency threading for one live stream.

Media threads (GStreamer streaming threads, network callbacks) call ``feed`` and never wait: audio goes
into a bounded backlog and a dedicated worker thread runs the engine. Policy when the engine falls
behind: the backlog never holds more than ``max_backlog_s`` of input; older input is dropped (and
counted) so the delay a listener hears stays bounded instead of growing without limit.
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

import numpy as np

from vcstream.audio.types import Audio
from vcstream.engines.base import VoiceProfile
from vcstream.streaming.converter import StreamConverter

log = logging.getLogger(__name__)


@dataclass
class LiveCounters:
    chunks_in: int = 0
    samples_in: int = 0
    samples_out: int = 0
    #: blocks converted; counted with their output under one lock, so a snapshot never sees a block
    #: whose audio is not counted yet
    blocks: int = 0
    dropped_samples: int = 0
    drop_events: int = 0
    late_blocks: int = 0  # blocks whose inference took longer than their own duration
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
    max_backlog_samples: int
    errors: int
    backlog_ms: float
    dropped_ms: float
    block_ms: float
    algorithmic_latency_ms: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class LiveSession:
    """Runs a ``StreamConverter`` on its own thread between a media input and a media output."""

    def __init__(
        self,
        converter: StreamConverter,
        on_output: Callable[[Audio], None],
        max_backlog_s: float | None = None,
        name: str = "live",
    ) -> None:
        self.converter = converter
        self._on_output = on_output
        rate = converter.io_rate
        # Default bound: two blocks of backlog (one being converted, one waiting) plus 60 ms of slack.
        bound = max_backlog_s if max_backlog_s is not None else 2 * converter.block_size / rate + 0.06
        self._max_backlog = int(bound * rate)
        self._backlog: collections.deque[Audio] = collections.deque()
        self._backlog_samples = 0
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._pending_voice: VoiceProfile | None = None
        self.counters = LiveCounters()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"vcstream-{name}", daemon=True)
        self._thread.start()

    # -- called from media threads: never blocks on inference ------------------------------------
    def feed(self, chunk: Audio) -> None:
        with self._lock:
            if self._stopping:
                return
            self._backlog.append(chunk)
            self._backlog_samples += chunk.shape[0]
            self.counters.chunks_in += 1
            self.counters.samples_in += chunk.shape[0]
            while self._backlog_samples > self._max_backlog and len(self._backlog) > 1:
                dropped = self._backlog.popleft()
                self._backlog_samples -= dropped.shape[0]
                self.counters.dropped_samples += dropped.shape[0]
                self.counters.drop_events += 1
            self.counters.max_backlog_samples = max(self.counters.max_backlog_samples, self._backlog_samples)
            self._wake.notify()

    def set_voice(self, voice: VoiceProfile) -> None:
        """Switch voice; the worker applies it before the next block."""
        with self._lock:
            self._pending_voice = voice

    def stop(self, warn_after_s: float = 5.0) -> None:
        """Stop taking input, let the worker finish the block it is converting, then close the engine
        session. The wait has no limit: closing a session (or leaving the process) while a block
        still runs in it would pull the engine out from under that block (with Seed-VC on a slow
        device a push of a few blocks takes seconds; torch aborts the process if it exits meanwhile)."""
        with self._lock:
            self._stopping = True
            self._wake.notify()
        self._thread.join(warn_after_s)
        if self._thread.is_alive():
            log.warning(
                "live session %s: still converting after %g s; waiting for the block in progress",
                self._thread.name,
                warn_after_s,
            )
            self._thread.join()
        self.converter.close()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

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
            max_backlog_samples=counters.max_backlog_samples,
            errors=counters.errors,
            backlog_ms=1000 * backlog / rate,
            dropped_ms=1000 * counters.dropped_samples / rate,
            block_ms=1000 * self.converter.block_size / rate,
            algorithmic_latency_ms=1000 * self.converter.algorithmic_latency_s,
        )

    # -- worker thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        block_s = self.converter.block_size / self.converter.io_rate
        while True:
            with self._lock:
                while not self._backlog and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                chunks = list(self._backlog)
                self._backlog.clear()
                self._backlog_samples = 0
                voice, self._pending_voice = self._pending_voice, None
            try:
                if voice is not None:
                    self.converter.set_voice(voice)
                blocks_before = self.converter.stats.blocks
                start = time.perf_counter()
                out = self.converter.push(np.concatenate(chunks))
                blocks = self.converter.stats.blocks - blocks_before
                with self._lock:
                    if blocks and (time.perf_counter() - start) / blocks > block_s:
                        self.counters.late_blocks += blocks
                    self.counters.blocks += blocks
                    self.counters.samples_out += out.shape[0]
                if out.shape[0]:
                    self._on_output(out)
            except Exception as exc:  # a broken engine must not take the media pipeline down
                self.counters.errors += 1
                self.error = exc
                log.exception("live session %s: conversion failed", self._thread.name)
