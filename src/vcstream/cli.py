"""The ``vcstream`` command: argument parsing and exit codes only; the work lives in the modules it
calls."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vcstream.errors import ConfigurationError, InvalidAudioError, ModelUnavailableError, VcstreamError

log = logging.getLogger("vcstream")

EXIT_ERROR, EXIT_BAD_INPUT, EXIT_NO_MODEL = 1, 2, 3

#: per-session engine settings: flag -> (settings key, type, help)
SESSION_FLAGS: dict[str, tuple[str, type, str]] = {
    "--block-time": ("block_time", float, "seconds per block (multiple of 20 ms for seedvc)"),
    "--crossfade-time": ("crossfade_time", float, "seedvc: SOLA crossfade seconds"),
    "--extra-time-ce": ("extra_time_ce", float, "seedvc: content-encoder left context seconds"),
    "--extra-time-dit": ("extra_time_dit", float, "seedvc: DiT left context seconds"),
    "--extra-time-right": ("extra_time_right", float, "seedvc: right context seconds"),
    "--diffusion-steps": ("diffusion_steps", int, "seedvc: CFM Euler steps"),
    "--cfg-rate": ("cfg_rate", float, "seedvc: classifier-free guidance rate (0 halves DiT cost)"),
    "--max-prompt-length": ("max_prompt_length", float, "seedvc: seconds of reference used as prompt"),
    "--dtype": ("dtype", str, "seedvc: fp32, fp16 or bf16 (half precision on GPU only)"),
}


def add_engine_options(parser: argparse.ArgumentParser, default_engine: str = "world") -> None:
    from vcstream.engines.registry import ENGINE_NAMES

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
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    for flag, (key, kind, text) in SESSION_FLAGS.items():
        parser.add_argument(flag, dest=key, type=kind, default=None, help=text)


def session_settings(args: argparse.Namespace) -> dict[str, Any]:
    settings = {key: getattr(args, key) for key, _, _ in SESSION_FLAGS.values()}
    settings = {k: v for k, v in settings.items() if v is not None}
    if args.engine == "seedvc":
        settings["seed"] = args.seed
    return settings


def parse_weights(pairs: list[str]) -> dict[str, Path] | None:
    local: dict[str, Path] = {}
    for pair in pairs:
        part, sep, path = pair.partition("=")
        if not sep or not part or not path:
            raise ConfigurationError(f"--weights expects PART=PATH, got {pair!r}")
        local[part.strip()] = Path(path)
    return local or None


def engine_from_args(args: argparse.Namespace) -> Any:
    from vcstream.engines.registry import EngineOptions, create_engine

    options = EngineOptions(
        local_paths=parse_weights(args.weights),
        device=args.device,
        model_cache=args.model_cache,
        allow_download=args.allow_download,
        random_weights=args.random_weights,
        seed=args.seed,
    )
    return create_engine(args.engine, options)


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
        settings=session_settings(args),
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
    engines.set_defaults(func=cmd_bench)

    from vcstream.commands import registrars

    for register in registrars():
        register(sub, bench_sub, add_engine_options)
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
