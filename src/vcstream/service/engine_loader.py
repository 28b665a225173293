"""Choosing, loading and warming the server's engine at start-up.

``engine = "auto"`` runs Seed-VC only where it can run in real time with real weights: a CUDA GPU is
present AND its weights are in the model cache. Otherwise the CPU engine (WORLD) serves, and the
returned ``engine_note`` says why in words, for the log (WARNING), /api/info and the page. The server
never downloads weights at start-up and never runs Seed-VC with random weights.

Everything here blocks (model loading, a first inference): the app runs it in an executor.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vcstream.audio.types import Audio
from vcstream.engines.base import Engine
from vcstream.engines.registry import EngineOptions, create_engine
from vcstream.engines.settings import SessionSettings
from vcstream.service.config import ServiceSettings

log = logging.getLogger(__name__)

CPU_QUALITY = "quality is lower than Seed-VC"
#: sessions admitted by default when the settings give no max_sessions: a CPU core carries several
#: WORLD streams; one GPU carries a few batched Seed-VC streams; Seed-VC on a CPU is not real time
DEFAULT_MAX_SESSIONS = {"world": 8, "passthrough": 8, "seedvc_gpu": 4, "seedvc_cpu": 1}


@dataclass(frozen=True)
class LoadedEngine:
    engine: Engine
    #: one sentence for humans: which engine, on what, and why when it is a fallback
    engine_note: str
    #: the CPU engine stands in for Seed-VC (no GPU or no weights)
    cpu_fallback: bool
    max_sessions: int
    #: the engine's session settings with the operator's defaults (VCSTREAM_BLOCK_TIME...) applied
    defaults: SessionSettings

    @property
    def device(self) -> str:
        return str(self.engine.describe().get("device", "cpu"))


def _gpu_obstacle(device: str) -> str | None:
    """Why Seed-VC would not get a CUDA GPU here, or None."""
    if device == "cpu":
        return "the CPU device was requested"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU found"
    if device.startswith("cuda:"):
        index = device.partition(":")[2]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            return f"no GPU {device}"
    return None


def _weights_obstacle(model_cache: Path | None) -> str | None:
    """Why Seed-VC's weights are not usable from the cache (never asks the hub), or None."""
    try:
        from vcstream.engines.seedvc.weights import check_weights, default_cache_dir
    except ImportError as exc:
        return f"Seed-VC is not installed ({exc})"
    missing = [entry for entry in check_weights(model_cache) if not entry.present]
    if not missing:
        return None
    cache = default_cache_dir(model_cache)
    where = str(cache) if cache else "the default Hugging Face cache"
    return (
        f"Seed-VC weights not found in {where} ({len(missing)} file(s) missing; "
        "`vcstream models download` fetches them)"
    )


def _cpu_note(reasons: list[str]) -> str:
    return f"CPU engine (WORLD): {'; '.join(reasons)} - {CPU_QUALITY}"


def _default_max_sessions(engine: Engine) -> int:
    if engine.name != "seedvc":
        return DEFAULT_MAX_SESSIONS.get(engine.name, 1)
    on_gpu = str(engine.describe().get("device", "cpu")).startswith("cuda")
    return DEFAULT_MAX_SESSIONS["seedvc_gpu" if on_gpu else "seedvc_cpu"]


def note_for(engine: Engine) -> str:
    """The note of an engine that was chosen explicitly (not a fallback)."""
    if engine.name == "world":
        return f"CPU engine (WORLD), chosen explicitly - {CPU_QUALITY}"
    if engine.name == "passthrough":
        return "passthrough engine: no conversion, the output is the input (for testing)"
    info = engine.describe()
    device = str(info.get("device", "cpu"))
    if engine.name == "seedvc" and not device.startswith("cuda"):
        return f"Seed-VC on the CPU ({device}): far slower than real time, use a GPU"
    return f"{engine.name} on {device}"


def loaded(engine: Engine, settings: ServiceSettings, note: str | None = None) -> LoadedEngine:
    """Wrap an engine that is already loaded (e.g. handed to ``create_app``)."""
    return LoadedEngine(
        engine=engine,
        engine_note=note or note_for(engine),
        cpu_fallback=False,
        max_sessions=settings.max_sessions or _default_max_sessions(engine),
        defaults=engine.defaults.updated(settings.session_overrides()),
    )


def load_engine(settings: ServiceSettings) -> LoadedEngine:
    """Pick the engine the settings ask for and load it. An explicit ``seedvc`` without weights
    raises ModelUnavailableError (the server must not start pretending); ``auto`` falls back to the
    CPU engine with a WARNING that says why."""
    options = EngineOptions(device=settings.device, model_cache=settings.model_cache, allow_download=False)
    if settings.engine != "auto":
        result = loaded(create_engine(settings.engine, options), settings)
        if result.engine.name == "seedvc" and not result.device.startswith("cuda"):
            log.warning(result.engine_note)
        return result

    reasons = [r for r in (_gpu_obstacle(settings.device), _weights_obstacle(settings.model_cache)) if r]
    if not reasons:
        try:
            return loaded(create_engine("seedvc", options), settings)
        except Exception as exc:  # auto means "the best that works here": report and take the CPU engine
            log.exception("Seed-VC failed to load")
            reasons.append(f"Seed-VC failed to load ({type(exc).__name__}: {exc})")
    engine = create_engine("world", options)
    result = LoadedEngine(
        engine=engine,
        engine_note=_cpu_note(reasons),
        cpu_fallback=True,
        max_sessions=settings.max_sessions or _default_max_sessions(engine),
        defaults=engine.defaults.updated(settings.session_overrides()),
    )
    log.warning(result.engine_note)
    return result


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
