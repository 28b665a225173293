"""Command-line options shared by the sub-commands that run an engine (convert, rtp, ...): how to
load it and its per-session settings, one flag per setting generated from the engines' declarations."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from vcstream.engines.base import Engine
from vcstream.engines.registry import (
    AUTO_FALLBACK,
    ENGINE_NAMES,
    EngineOptions,
    all_setting_specs,
    create_engine,
)
from vcstream.engines.settings import SessionSettings
from vcstream.errors import ConfigurationError


def add_engine_options(parser: argparse.ArgumentParser, default_engine: str = AUTO_FALLBACK) -> None:
    parser.add_argument("--engine", choices=ENGINE_NAMES, default=default_engine)
    parser.add_argument("--device", default="auto", help="seedvc: auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--model-cache",
        type=Path,
        default=os.environ.get("VCSTREAM_MODEL_CACHE"),
        help="Hugging Face cache folder for Seed-VC weights (env VCSTREAM_MODEL_CACHE)",
    )
    parser.add_argument(
        "--allow-download", action="store_true", help="seedvc: fetch missing weights from the hub"
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="seedvc: full-size model with RANDOM weights (tests and benchmarks only; output is noise)",
    )
    parser.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="PART=PATH",
        help="seedvc: a local weight file instead of the cache; PART is dit, dit_config, campplus, hift "
        "or xlsr (a folder with config.json and the weights); repeatable",
    )
    parser.add_argument("--seed", type=int, default=None, help="noise seed")
    add_session_flags(parser)


def add_seedvc_build_options(parser: argparse.ArgumentParser) -> None:
    """How a benchmark builds Seed-VC: full size or the reduced model, and the DiT's compile mode."""
    parser.add_argument(
        "--seedvc-size",
        choices=("full", "reduced"),
        default="full",
        help="seedvc: reduced = a smaller model with random weights, same code paths (CPU benchmarks)",
    )
    parser.add_argument(
        "--compile",
        choices=("off", "compile", "cudagraphs"),
        default="off",
        help="seedvc: torch.compile the DiT (cudagraphs: with CUDA graphs, CUDA only)",
    )


def add_session_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """One flag per engine session setting (``--block-time`` for ``block_time``); values stay text
    and are checked by the chosen engine's settings."""
    for name, (spec, _, engines) in all_setting_specs().items():
        if name == "seed":  # --seed also seeds the engine itself
            continue
        unit = f" ({spec.unit})" if spec.unit else ""
        which = "" if len(engines) == len(ENGINE_NAMES) else f"{', '.join(engines)}: "
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            metavar=name.upper(),
            help=f"{which}{spec.help}{unit}; {SessionSettings.allowed(spec)}",
        )


def session_settings(args: argparse.Namespace, engine: Engine) -> SessionSettings:
    """The engine's session settings with the flags that were given applied (and checked)."""
    given = {name: getattr(args, name, None) for name in all_setting_specs()}
    values: dict[str, object] = {name: value for name, value in given.items() if value is not None}
    if "seed" in engine.settings_type.specs():
        values.setdefault("seed", args.seed or 0)
    flags = ", ".join(
        "--" + name.replace("_", "-") for name in values if name not in engine.settings_type.specs()
    )
    if flags:
        raise ConfigurationError(f"{flags} do(es) not apply to engine {engine.name}")
    return engine.settings(**values)


def parse_weights(pairs: list[str]) -> dict[str, Path] | None:
    local: dict[str, Path] = {}
    for pair in pairs:
        part, sep, path = pair.partition("=")
        if not sep or not part or not path:
            raise ConfigurationError(f"--weights expects PART=PATH, got {pair!r}")
        local[part.strip()] = Path(path)
    return local or None


def engine_from_args(args: argparse.Namespace) -> Engine:
    options = EngineOptions(
        local_paths=parse_weights(args.weights),
        device=args.device,
        model_cache=args.model_cache,
        allow_download=args.allow_download,
        random_weights=args.random_weights,
        seed=args.seed or 0,
    )
    return create_engine(args.engine, options)
