"""How many live sessions an engine carries in real time on this machine, from a measurement.

Two costs bound it. The engine's: a probe times ``Engine.run_batch`` on synthetic sessions at the
server's default settings, for batch sizes up to the scheduler's ``max_batch`` (one worker batching on
a device), or for single blocks on a pool of CPU workers. The media path's: decoding, resampling and
encoding each call costs the server's CPU a share of a core whatever the engine
(``media_cores_per_session``, measured with ``vcstream bench calls``). Only ``utilisation`` of either
is planned for, so a session's blocks still meet their deadlines when the load wobbles.

``vcstream bench capacity --write FILE`` measures the same with real-time sessions; a server given
that file (VCSTREAM_CAPACITY_FILE) for its engine and device uses it instead of probing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vcstream.audio.types import Audio
from vcstream.engines.base import Engine, EngineSession
from vcstream.engines.settings import SessionSettings
from vcstream.errors import ConfigurationError
from vcstream.streaming.scheduler import SchedulerConfig

log = logging.getLogger(__name__)

#: share of the device and of the CPU planned for (the rest absorbs load spikes)
UTILISATION = 0.75
#: server CPU one call's media path costs (Opus decode and encode, resampling, WebRTC), in cores;
#: measured with ``vcstream bench calls`` on passthrough (the engine's own cost is probed apart)
MEDIA_CORES_PER_SESSION = 0.10


def available_cores() -> float:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Capacity:
    """Real-time sessions for one engine on one device, and how that figure was reached."""

    sessions: int
    #: "probe" (measured at start-up), "file" (a ``bench capacity`` result), "operator" (configured)
    source: str
    engine: str
    device: str
    block_s: float
    #: measured seconds per batch, by batch size (empty when configured)
    batch_s: dict[int, float] = field(default_factory=dict)
    #: what bounds it, in words (for logs and /api/info)
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "batch_s": {str(k): v for k, v in self.batch_s.items()}}

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> Capacity:
        try:
            data = json.loads(path.read_text())
            return cls(
                sessions=int(data["sessions"]),
                source="file",
                engine=str(data["engine"]),
                device=str(data["device"]),
                block_s=float(data["block_s"]),
                batch_s={int(k): float(v) for k, v in data.get("batch_s", {}).items()},
                detail=f"measured by vcstream bench capacity ({path})",
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigurationError(f"capacity file {path} is not readable: {exc}") from exc


def batch_sizes(limit: int) -> list[int]:
    """1, 2, 4, ... up to ``limit`` (``limit`` itself included)."""
    sizes = [1 << k for k in range(int(math.log2(limit)) + 1)]
    return sizes if sizes[-1] == limit else [*sizes, limit]


def probe(
    engine: Engine,
    reference: Audio,
    settings: SessionSettings | None,
    config: SchedulerConfig,
    *,
    media_cores_per_session: float = MEDIA_CORES_PER_SESSION,
    cores: float | None = None,
    repeats: int = 2,
    time_budget_s: float = 20.0,
) -> Capacity:
    """Time ``run_batch`` on synthetic sessions of ``reference``'s voice and turn it into sessions.

    A batched engine: for each batch size b, ``b * block / t(b)`` sessions keep one worker busy;
    sizes stop growing once a batch alone takes longer than a block, or the time budget is spent.
    Otherwise: ``workers * block / t(1)`` sessions keep the pool busy. Either way the CPU's share
    for the media path bounds it too; never below one session (the engine is then slower than real
    time, and the log says so)."""
    cores = available_cores() if cores is None else cores
    voice = engine.prepare_voice(reference, engine.sample_rate)
    sizes = batch_sizes(config.max_batch) if engine.batched_forward else [1]
    sessions: list[EngineSession] = []
    timings: dict[int, float] = {}
    started = time.monotonic()
    block_s = 0.0
    try:
        for size in sizes:
            while len(sessions) < size:
                sessions.append(engine.open_session(voice, settings))
            block_s = sessions[0].block_size / sessions[0].sample_rate
            block = np.resize(reference, sessions[0].block_size).astype(np.float32)
            best = math.inf
            for _ in range(repeats):
                requests = [s.prepare(block) for s in sessions]
                t = time.perf_counter()
                engine.run_batch(sessions, requests)
                best = min(best, time.perf_counter() - t)
            timings[size] = best
            if best > block_s or time.monotonic() - started > time_budget_s:
                break
    finally:
        for session in sessions:
            session.close()
    if engine.batched_forward:
        device_sessions = max(size * block_s / t for size, t in timings.items())
        bound = f"one worker batching up to {max(timings)} blocks"
    else:
        workers = min(config.workers, cores)
        device_sessions = workers * block_s / timings[1]
        bound = f"{workers} CPU worker(s)"
    # the engine's own CPU share competes with the media path on the CPU (not on a GPU)
    engine_cores = 0.0 if engine.on_gpu else timings[1] / block_s
    cpu_sessions = cores / (media_cores_per_session + engine_cores)
    planned = UTILISATION * min(device_sessions, cpu_sessions)
    sessions_n = max(1, math.floor(planned))
    limit = "the engine" if device_sessions <= cpu_sessions else "the CPU (media path and engine)"
    detail = (
        f"{timings[1] * 1000:.1f} ms per {block_s * 1000:.0f} ms block alone, {bound}; "
        f"bounded by {limit}; {UTILISATION:.0%} planned"
    )
    if planned < 1:
        detail += "; not even one session in real time (one is admitted anyway)"
    return Capacity(sessions_n, "probe", engine.name, engine.device, block_s, timings, detail)


def load_capacity_file(path: Path, engine: Engine) -> Capacity | None:
    """The file's capacity when it was measured for this engine on this device; else None (logged)."""
    capacity = Capacity.read(path)
    if (capacity.engine, capacity.device) != (engine.name, engine.device):
        log.warning(
            "capacity file %s was measured for %s on %s, not %s on %s: probing instead",
            path,
            capacity.engine,
            capacity.device,
            engine.name,
            engine.device,
        )
        return None
    return capacity
