"""``vcstream bench capacity``: real-time sessions per engine and device through the block scheduler,
batched and unbatched in one run (``vcstream.bench.capacity``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from vcstream.commands.options import add_seedvc_build_options
from vcstream.errors import ConfigurationError


def _sessions(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated session counts, got {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError("session counts must be at least 1")
    return values


def cmd_capacity(args: argparse.Namespace) -> int:
    from vcstream.bench.capacity import run_capacity_bench
    from vcstream.engines.registry import EngineOptions, create_engine
    from vcstream.engines.settings import parse_pairs

    options = EngineOptions(
        device=args.device,
        model_cache=args.model_cache,
        random_weights=args.random_weights,
        model_size=args.seedvc_size,
        compile_mode=args.compile,
    )
    if args.engine == "seedvc" and not args.random_weights and args.model_cache is None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the cache only: never a download from here
    engine = create_engine(args.engine, options)
    values: dict[str, object] = dict(parse_pairs(args.set))
    if args.block_time is not None:
        values["block_time"] = args.block_time
    if args.engine == "seedvc":
        values["dtype"] = args.dtype
    elif args.dtype != "fp32":
        raise ConfigurationError(f"--dtype applies to seedvc, not {args.engine}")
    settings = engine.settings(**values)
    notes = []
    if args.engine == "seedvc" and not engine.on_gpu:
        size = "the reduced model" if args.seedvc_size == "reduced" else "the full model"
        notes.append(f"Seed-VC on the CPU ({size}): figures for the code path and batching, not a GPU's")
    if getattr(engine, "models", None) is not None and engine.describe().get("random_weights"):
        notes.append("random weights: same compute as the published model, meaningless output")
    run_capacity_bench(
        engine,
        settings,
        args.sessions,
        args.seconds,
        batching=not args.no_batching,
        max_batch=args.max_batch,
        write=args.write,
        notes=notes,
    )
    return 0


def register(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    bench_sub: argparse._SubParsersAction,  # type: ignore[type-arg]
) -> None:
    capacity = bench_sub.add_parser(
        "capacity",
        help="real-time sessions through the block scheduler, batched vs unbatched",
        description="Feeds N synthetic sessions in real time through the engine's block scheduler, "
        "batched and unbatched in the same run, and prints per N the blocks' response time against "
        "the deadline, skipped and late blocks, mean batch and memory per session.",
    )
    capacity.add_argument("--engine", choices=("seedvc", "world", "passthrough"), default="world")
    capacity.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (seedvc)")
    capacity.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32", help="seedvc")
    capacity.add_argument(
        "--random-weights", action="store_true", help="seedvc with random weights (same compute)"
    )
    capacity.add_argument("--model-cache", type=Path, default=os.environ.get("VCSTREAM_MODEL_CACHE"))
    add_seedvc_build_options(capacity)
    capacity.add_argument("--sessions", type=_sessions, default=[1, 2, 4, 8], metavar="N,N,...")
    capacity.add_argument("--seconds", type=float, default=5.0, help="seconds per point")
    capacity.add_argument("--block-time", type=float, default=None, help="default: the engine's")
    capacity.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="another session setting (repeat)"
    )
    capacity.add_argument("--max-batch", type=int, default=None, help="default: 64 on a GPU, 8 on the CPU")
    capacity.add_argument("--no-batching", action="store_true", help="the unbatched path only")
    capacity.add_argument("--write", type=Path, default=None, help="save the batched figure for the server")
    capacity.set_defaults(func=cmd_capacity)
