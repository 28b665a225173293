"""`vcstream bench capacity`: how many sessions an engine carries in real time through the block
scheduler, batched and unbatched, measured in the same run.

N synthetic live sessions (``LiveSession`` at 48 kHz, as WebRTC calls are, each with its own voice
and settings object) are fed 20 ms chunks in real time by one feeder thread, their block boundaries
spread over a block so the scheduler sees requests arrive as real calls send them. No network: the
media path's own cost is what ``vcstream bench calls`` measures. Per N and mode it prints the
response time of blocks (last input sample in -> converted block out) against the deadline (two
blocks), blocks skipped and late, the mean batch, and device memory per session on CUDA. A point is
real time when at most 1% of blocks are skipped or late and the 95th percentile response meets the
deadline; the last line compares the largest real-time N of both modes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vcstream.audio.types import Audio
from vcstream.engines.base import Engine, VoiceProfile
from vcstream.engines.settings import SessionSettings
from vcstream.streaming.capacity import Capacity
from vcstream.streaming.converter import StreamConverter
from vcstream.streaming.live import LiveSession
from vcstream.streaming.scheduler import BlockScheduler, SchedulerConfig

log = logging.getLogger(__name__)

IO_RATE = 48000
CHUNK_S = 0.02
#: share of blocks that may be skipped or late at a real-time point
TOLERATED = 0.01


@dataclass(frozen=True)
class CapacityPoint:
    mode: str
    sessions: int
    blocks: int
    skipped: int
    late: int
    response_ms_p50: float | None
    response_ms_p95: float | None
    due_ms: float
    mean_batch: float
    memory_mb_per_session: float | None

    @property
    def real_time(self) -> bool:
        if not self.blocks or self.response_ms_p95 is None:
            return False
        ok = self.skipped + self.late <= TOLERATED * (self.blocks + self.skipped)
        return ok and self.response_ms_p95 <= self.due_ms

    def row(self) -> str:
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.0f}"

        memory = "-" if self.memory_mb_per_session is None else f"{self.memory_mb_per_session:.0f}"
        return (
            f"{self.mode:<10}{self.sessions:>9}{self.blocks:>8}{self.skipped:>8}{self.late:>6}"
            f"{ms(self.response_ms_p50):>9}{ms(self.response_ms_p95):>9}{self.due_ms:>6.0f}"
            f"{self.mean_batch:>7.1f}{memory:>9}   {'yes' if self.real_time else 'no'}"
        )


HEADER = (
    f"{'mode':<10}{'sessions':>9}{'blocks':>8}{'skipped':>8}{'late':>6}"
    f"{'p50 ms':>9}{'p95 ms':>9}{'due':>6}{'batch':>7}{'MB/sess':>9}   real-time"
)


def voices_for(engine: Engine, count: int, reference: Audio, rate: int) -> list[VoiceProfile]:
    """A few distinct voices (the reference at other pitches), shared round-robin by the sessions."""
    voices = []
    for k in range(count):
        factor = 1.0 + 0.15 * k
        shifted = np.interp(
            np.arange(0, reference.shape[0], factor), np.arange(reference.shape[0]), reference
        )
        voices.append(engine.prepare_voice(shifted.astype(np.float32), rate))
    return voices


def _cuda_memory() -> Callable[[], float] | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return lambda: float(torch.cuda.memory_allocated())


def run_point(
    engine: Engine,
    voices: Sequence[VoiceProfile],
    settings: SessionSettings | None,
    config: SchedulerConfig,
    *,
    mode: str,
    sessions: int,
    seconds: float,
    signal: Audio,
    on_gpu_memory: Callable[[], float] | None,
) -> CapacityPoint:
    scheduler = BlockScheduler(engine, config)
    memory_before = on_gpu_memory() if on_gpu_memory else 0.0
    peak = memory_before
    lives = []
    try:
        for i in range(sessions):
            converter = StreamConverter(engine, voices[i % len(voices)], IO_RATE, settings)
            lives.append(LiveSession(converter, lambda _out: None, scheduler, name=f"bench-{i}"))
        block_in = lives[0].converter.block_size
        for i, live in enumerate(lives):  # block boundaries spread over one block
            live.feed(np.zeros(i * block_in // sessions + 1, np.float32))
        chunk = round(CHUNK_S * IO_RATE)
        ticks = round(seconds / CHUNK_S)
        start = time.monotonic()
        for k in range(ticks):
            time.sleep(max(0.0, start + k * CHUNK_S - time.monotonic()))
            at = (k * chunk) % (signal.shape[0] - chunk)
            piece = signal[at : at + chunk]
            for live in lives:
                live.feed(piece)
            if on_gpu_memory and k % 25 == 0:
                peak = max(peak, on_gpu_memory())
    finally:
        for live in lives:
            live.stop()
        scheduler.close()
    stats = scheduler.snapshot()
    due_ms = 2000 * lives[0].converter.session.block_size / lives[0].converter.session.sample_rate
    return CapacityPoint(
        mode=mode,
        sessions=sessions,
        blocks=stats.blocks,
        skipped=stats.skipped,
        late=stats.late,
        response_ms_p50=stats.response_ms_p50,
        response_ms_p95=stats.response_ms_p95,
        due_ms=due_ms,
        mean_batch=stats.mean_batch,
        memory_mb_per_session=(peak - memory_before) / sessions / 2**20 if on_gpu_memory else None,
    )


def largest_real_time(points: Sequence[CapacityPoint], mode: str) -> int:
    passed = [p.sessions for p in points if p.mode == mode and p.real_time]
    return max(passed, default=0)


def run_capacity_bench(
    engine: Engine,
    settings: SessionSettings | None,
    sessions: Sequence[int],
    seconds: float,
    *,
    batching: bool = True,
    max_batch: int | None = None,
    write: Path | None = None,
    notes: Sequence[str] = (),
    out: Callable[[str], None] = print,
) -> list[CapacityPoint]:
    from vcstream.service.engine_loader import warm_engine, warmup_reference

    reference = warmup_reference(engine.sample_rate, seconds=4.0)
    voices = voices_for(engine, 3, reference, engine.sample_rate)
    warm_engine(engine, settings, blocks=3)
    batched = SchedulerConfig.for_engine(engine, max_batch=max_batch)
    unbatched = SchedulerConfig(workers=batched.workers, max_batch=1, name=f"{batched.name}-unbatched")
    modes = ([("batched", batched)] if batching else []) + [("unbatched", unbatched)]
    signal = np.asarray(warmup_reference(IO_RATE, seconds=4.0), dtype=np.float32)
    memory = _cuda_memory() if engine.on_gpu else None
    block = (settings or engine.defaults).values().get("block_time")
    out(
        f"engine {engine.name} on {engine.device}, block {block} s, {seconds:g} s per point, "
        f"scheduler: {batched.workers} worker(s), batches up to {batched.max_batch}"
    )
    for note in notes:
        out(f"note: {note}")
    out(HEADER)
    points: list[CapacityPoint] = []
    over: set[str] = set()
    for n in sessions:
        for mode, config in modes:
            if mode in over:
                continue  # a mode that failed at fewer sessions fails at more
            point = run_point(
                engine,
                voices,
                settings,
                config,
                mode=mode,
                sessions=n,
                seconds=seconds,
                signal=signal,
                on_gpu_memory=memory,
            )
            points.append(point)
            out(point.row())
            if not point.real_time:
                over.add(mode)
    best_unbatched = largest_real_time(points, "unbatched")
    if batching:
        best = largest_real_time(points, "batched")
        ratio = f"{best / best_unbatched:.1f}x" if best_unbatched else "n/a: unbatched carried none"
        out(f"real-time sessions: {best} batched vs {best_unbatched} unbatched ({ratio})")
    else:
        best = best_unbatched
        out(f"real-time sessions: {best} unbatched")
    if write is not None:
        block_s = 0.5 * points[0].due_ms / 1000 if points else 0.0
        Capacity(
            sessions=max(best, 1),
            source="file",
            engine=engine.name,
            device=engine.device,
            block_s=block_s,
            detail=f"vcstream bench capacity: {best} real-time sessions ({seconds:g} s per point)",
        ).write(write)
        out(f"wrote {write}")
    return points
