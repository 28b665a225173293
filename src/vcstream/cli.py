"""The ``vcstream`` command: argument parsing and exit codes only; the work lives in the modules it
calls."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from vcstream.commands.options import (
    add_engine_options,
    add_seedvc_build_options,
    engine_from_args,
    session_settings,
)
from vcstream.errors import InvalidAudioError, ModelUnavailableError, VcstreamError

log = logging.getLogger("vcstream")

EXIT_ERROR, EXIT_BAD_INPUT, EXIT_NO_MODEL = 1, 2, 3


def cmd_convert(args: argparse.Namespace) -> int:
    from vcstream.convert import convert_file

    engine = engine_from_args(args)
    report = convert_file(
        engine,
        args.source,
        args.reference,
        args.output,
        io_rate=args.rate,
        offline=args.offline,
        settings=session_settings(args, engine),
    )
    for notice in report.notices:
        print(f"notice: {notice}", file=sys.stderr)
    mode = "offline" if args.offline else "streaming"
    print(
        f"converted {report.seconds:.2f} s with {engine.name} ({mode}) in {report.wall_s:.2f} s "
        f"-> {report.output}; algorithmic latency {report.algorithmic_latency_ms:.0f} ms"
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from vcstream.engines.seedvc.weights import check_weights, download_weights

    if args.action == "download":
        download_weights(args.model_cache)
    missing = 0
    for entry in check_weights(args.model_cache):
        state = "present" if entry.present else "MISSING"
        missing += not entry.present
        print(f"{state:8} {entry.repo_id}/{entry.filename}  {entry.path or ''}")
    if missing:
        print(f"{missing} file(s) missing: run `vcstream models download` where the hub is reachable")
        return EXIT_NO_MODEL
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from vcstream.bench.engines import run_engine_bench

    run_engine_bench(
        engines=args.engines.split(","),
        block_times=[float(b) for b in args.block_times.split(",")],
        blocks=args.blocks,
        seedvc_blocks=args.seedvc_blocks,
        device=args.device,
        dtypes=args.dtypes.split(","),
        model_cache=args.model_cache,
        threads=args.threads,
        seedvc_size=args.seedvc_size,
        compile_mode=args.compile,
    )
    return 0


def cmd_bench_precision(args: argparse.Namespace) -> int:
    from vcstream.bench.precision import run_precision_bench

    run_precision_bench(
        device=args.device,
        dtypes=args.dtypes.split(","),
        size=args.size,
        blocks=args.blocks,
        steps=args.steps,
        seed=args.seed,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vcstream", description="Real-time zero-shot voice conversion")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    convert = sub.add_parser("convert", help="convert a file exactly as a live stream would")
    convert.add_argument("source", type=Path)
    convert.add_argument("--reference", "-r", type=Path, required=True, help="1-30 s of the target voice")
    convert.add_argument("--output", "-o", type=Path, required=True, help=".wav .flac .ogg .opus .mp3")
    convert.add_argument("--rate", type=int, default=48000, help="I/O sample rate of the stream")
    convert.add_argument(
        "--offline", action="store_true", help="seedvc: whole-utterance inference (quality reference)"
    )
    add_engine_options(convert)
    convert.set_defaults(func=cmd_convert)

    models = sub.add_parser("models", help="Seed-VC weights: download (for images) or check")
    models.add_argument("action", choices=("download", "check"))
    models.add_argument("--model-cache", type=Path, default=os.environ.get("VCSTREAM_MODEL_CACHE"))
    models.set_defaults(func=cmd_models)

    bench = sub.add_parser("bench", help="benchmarks that print numbers")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    engines = bench_sub.add_parser("engines", help="ms per block, RTF and streams per core per engine")
    engines.add_argument("--engines", default="passthrough,world,seedvc")
    engines.add_argument("--block-times", default="0.1,0.2")
    engines.add_argument("--blocks", type=int, default=50, help="blocks per measurement")
    engines.add_argument("--seedvc-blocks", type=int, default=4, help="blocks for seedvc on CPU")
    engines.add_argument("--device", default="auto")
    engines.add_argument("--dtypes", default="fp32,bf16,fp16", help="seedvc dtypes to try on GPU")
    engines.add_argument("--model-cache", type=Path, default=os.environ.get("VCSTREAM_MODEL_CACHE"))
    engines.add_argument("--threads", type=int, default=1, help="CPU threads (1 = per-core figures)")
    add_seedvc_build_options(engines)
    engines.set_defaults(func=cmd_bench)
    precision = bench_sub.add_parser(
        "precision", help="seedvc output difference of bf16/fp16 against fp32 (random weights; CUDA)"
    )
    precision.add_argument("--device", default="auto")
    precision.add_argument("--dtypes", default="fp32,bf16,fp16")
    precision.add_argument("--size", choices=("full", "reduced"), default="full", help="model size")
    precision.add_argument("--blocks", type=int, default=4, help="blocks compared (after one warm-up)")
    precision.add_argument("--steps", type=int, default=10, help="diffusion steps")
    precision.add_argument("--seed", type=int, default=0, help="weights and noise seed")
    precision.set_defaults(func=cmd_bench_precision)

    from vcstream.commands import registrars

    for register in registrars():
        register(sub, bench_sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.func(args)
    except InvalidAudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ModelUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NO_MODEL
    except VcstreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return code


if __name__ == "__main__":
    sys.exit(main())
