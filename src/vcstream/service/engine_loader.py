"""Choosing, loading and warming the server's engine at start-up.

``engine = "auto"`` runs the registry's preferred engine (Seed-VC) only where it can run in real time
with real weights (the registry says what stands in the way: no CUDA GPU, no weights in the model
cache). Otherwise the fallback (the CPU engine, WORLD) serves, and the
returned ``engine_note`` says why in words, for the log (WARNING), /api/info and the page. The server
never downloads weights at start-up and never runs Seed-VC with random weights.

Everything here blocks (model loading, a first inference): the app runs it in an executor.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from vcstream.audio.types import Audio
from vcstream.engines.base import Engine
from vcstream.engines.registry import AUTO_FALLBACK, AUTO_PREFERRED, EngineOptions, create_engine, obstacles
from vcstream.engines.settings import SessionSettings, SettingsError
from vcstream.service.config import ServiceSettings
from vcstream.streaming.capacity import Capacity, load_capacity_file, probe
from vcstream.streaming.scheduler import SchedulerConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedEngine:
    engine: Engine
    #: one sentence for humans: which engine, on what, and why when it is a fallback
    engine_note: str
    #: the CPU engine stands in for Seed-VC (no GPU or no weights)
    cpu_fallback: bool
    #: the engine's session settings with the operator's defaults (VCSTREAM_BLOCK_TIME...) applied
    defaults: SessionSettings

    @property
    def device(self) -> str:
        return self.engine.device


def _chosen_note(engine: Engine) -> str:
    """The note of an engine the operator named (not a fallback)."""
    if engine.caveat and not (engine.needs_gpu and not engine.on_gpu):
        return f"{engine.label}, chosen explicitly - {engine.caveat}"
    return engine.note()


def _fallback_note(engine: Engine, reasons: list[str]) -> str:
    return f"{engine.label}: {'; '.join(reasons)} - {engine.caveat}"


def loaded(
    engine: Engine, settings: ServiceSettings, note: str | None = None, *, cpu_fallback: bool = False
) -> LoadedEngine:
    """Wrap an engine that is already loaded (e.g. handed to ``create_app``), with the operator's
    session defaults applied (SettingsError when the engine does not take them)."""
    return LoadedEngine(
        engine=engine,
        engine_note=note or _chosen_note(engine),
        cpu_fallback=cpu_fallback,
        defaults=engine.defaults.updated(settings.session_overrides()),
    )


def load_engine(settings: ServiceSettings) -> LoadedEngine:
    """Pick the engine the settings ask for and load it. An explicit ``seedvc`` without weights
    raises ModelUnavailableError (the server must not start pretending); ``auto`` falls back to the
    CPU engine with a WARNING that says why."""
    options = EngineOptions(device=settings.device, model_cache=settings.model_cache, allow_download=False)
    if settings.engine != "auto":
        result = loaded(create_engine(settings.engine, options), settings)
        if result.engine.needs_gpu and not result.engine.on_gpu:
            log.warning(result.engine_note)
        return result

    reasons = obstacles(AUTO_PREFERRED, options)
    if not reasons:
        try:
            return loaded(create_engine(AUTO_PREFERRED, options), settings)
        except SettingsError:  # the operator's session settings: a mistake to report, not a fallback
            raise
        except Exception as exc:  # auto means "the best that works here": report and take the fallback
            log.exception("engine %s failed to load", AUTO_PREFERRED)
            reasons.append(f"{AUTO_PREFERRED} failed to load ({type(exc).__name__}: {exc})")
    engine = create_engine(AUTO_FALLBACK, options)
    result = loaded(engine, settings, _fallback_note(engine, reasons), cpu_fallback=True)
    log.warning(result.engine_note)
    return result


def load_overflow_engine(settings: ServiceSettings, primary: Engine) -> LoadedEngine | None:
    """The CPU engine that takes new sessions once the primary is full (``overflow_engine``), or
    None. Only the block time of the operator's defaults carries over (other settings are the
    primary engine's own)."""
    name = settings.overflow_engine
    if name is None or name == primary.name:
        return None
    engine = create_engine(name, EngineOptions(device="cpu", allow_download=False))
    defaults = engine.defaults
    if settings.block_time is not None:
        defaults = defaults.updated({"block_time": settings.block_time})
    note = f"{engine.label}: the {primary.label} places are all taken, so this call runs on the CPU"
    if engine.caveat:
        note += f" - {engine.caveat}"
    return LoadedEngine(engine=engine, engine_note=note, cpu_fallback=True, defaults=defaults)


def measure_capacity(
    engine: Engine,
    defaults: SessionSettings,
    settings: ServiceSettings,
    config: SchedulerConfig,
    *,
    operator_sessions: int | None = None,
    cores: float | None = None,
) -> Capacity:
    """The sessions this engine takes: the operator's figure, else the capacity file's when it was
    measured for this engine and device, else a probe of the engine (blocking, seconds)."""
    block_s = float(getattr(defaults, "block_time", 0.0))
    if operator_sessions is not None:
        detail = "set by the operator (VCSTREAM_MAX_SESSIONS)"
        return Capacity(operator_sessions, "operator", engine.name, engine.device, block_s, detail=detail)
    if settings.capacity_file is not None:
        from_file = load_capacity_file(settings.capacity_file, engine)
        if from_file is not None:
            return from_file
    return probe(engine, warmup_reference(engine.sample_rate, seconds=4.0), defaults, config, cores=cores)


def warmup_reference(sample_rate: int, seconds: float = 2.0) -> Audio:
    """A voiced, vowel-like test signal (130 Hz with vibrato, falling harmonics): every engine can take
    a voice from it, and it drives the voiced-speech code paths of a session."""
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    f0 = 130.0 * (1.0 + 0.03 * np.sin(2 * math.pi * 5.0 * t))
    phase = 2 * math.pi * np.cumsum(f0) / sample_rate
    harmonics = range(1, int(sample_rate / 2 / 200))
    x = sum(np.sin(k * phase) / k for k in harmonics)
    x = np.asarray(x, dtype=np.float64)
    return np.asarray(0.3 * x / np.max(np.abs(x)), dtype=np.float32)


def warm_engine(engine: Engine, settings: SessionSettings | None = None, blocks: int = 2) -> float:
    """Run ``blocks`` blocks through a fresh session (first-call costs: CUDA context, kernel
    selection, allocator, caches) and return the last block's inference seconds."""
    reference = warmup_reference(engine.sample_rate)
    voice = engine.prepare_voice(reference, engine.sample_rate)
    session = engine.open_session(voice, settings)
    try:
        block = np.resize(reference, session.block_size).astype(np.float32)
        seconds = 0.0
        for _ in range(blocks):
            start = time.perf_counter()
            session.process(block)
            seconds = time.perf_counter() - start
    finally:
        session.close()
    block_s = session.block_size / session.sample_rate
    log.info("engine %s warm: %.1f ms per %.0f ms block", engine.name, seconds * 1000, block_s * 1000)
    if seconds > block_s:
        log.warning(
            "engine %s takes %.0f ms for a %.0f ms block: slower than real time, streams will drop audio",
            engine.name,
            seconds * 1000,
            block_s * 1000,
        )
    return seconds
