"""``vcstream bench quality``: how close conversions come to the target voice, how natural and
intelligible they stay, beside the unconverted source measured in the same run
(``vcstream.bench.quality``)."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from vcstream.engines.registry import ENGINE_NAMES, EngineOptions


def _percent(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 100.0:
        raise argparse.ArgumentTypeError(f"expected a loss in [0, 100), got {value}")
    return value


def cmd_quality(args: argparse.Namespace) -> int:
    import torch

    from vcstream.bench.quality import QualityPlan, format_table, run_quality_bench

    # CAM++ on 5 s of speech took 4.5 s of CPU with torch's default 2 threads on a busy 2-core host
    # (threads spinning on each other) and 0.5 s with one: the scorers are small models.
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="vcstream-quality-") as scratch:
        plan = QualityPlan(
            sources=args.source,
            references=args.reference,
            engines=args.engine,
            transport=args.transport,
            loss_pct=args.loss,
            texts=args.text or (),
            workdir=args.workdir or Path(scratch),
            options=EngineOptions(device=args.device, model_cache=args.model_cache),
            offline_baseline=not args.no_offline,
        )
        result = run_quality_bench(plan)
        print(format_table(result))
        results_json = args.json or Path(scratch) / "quality.json"
        results_json.parent.mkdir(parents=True, exist_ok=True)
        results_json.write_text(json.dumps(result.as_json(), indent=1) + "\n")
        if args.json is not None:
            print(f"wrote {args.json}")
        if args.plot is not None:
            from vcstream.bench.quality_plot import draw_in_child_process

            loss = f", {args.loss:g}% loss" if args.loss else ""
            draw_in_child_process(
                results_json, args.plot, args.title or f"voice quality ({args.transport}{loss})"
            )
            print(f"wrote {args.plot}")
    return 0


def register(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    bench_sub: argparse._SubParsersAction,  # type: ignore[type-arg]
) -> None:
    quality = bench_sub.add_parser(
        "quality",
        help="speaker similarity, DNSMOS, WER/CER and F0 of conversions against same-run baselines",
        description="Converts each source toward each reference with each engine over the chosen path and "
        "prints, per path, CAM++ speaker similarity to the reference and to the source, DNSMOS "
        "SIG/BAK/OVRL/P.808, pocketsphinx WER/CER against --text (or the source's own transcript) and F0 "
        "statistics, beside the unconverted source, the reference itself and Seed-VC's offline inference "
        "(only where its weights are already present: nothing is downloaded).",
    )
    quality.add_argument("--source", type=Path, nargs="+", required=True, help="speech to convert")
    quality.add_argument("--reference", type=Path, nargs="+", required=True, help="target voices")
    quality.add_argument(
        "--engine", nargs="+", choices=ENGINE_NAMES, default=["world"], help="engines to score"
    )
    quality.add_argument(
        "--transport", choices=("file", "rtp", "webrtc"), default="file", help="the path taken"
    )
    quality.add_argument("--loss", type=_percent, default=0.0, help="packet loss in %% (rtp, webrtc)")
    quality.add_argument(
        "--text",
        action="append",
        default=None,
        help="what the source says (once for all, or once per source)",
    )
    quality.add_argument("--json", type=Path, default=None, help="write every figure as JSON")
    quality.add_argument("--plot", type=Path, default=None, help="write a PNG summary")
    quality.add_argument("--title", default=None, help="the plot's title")
    quality.add_argument("--workdir", type=Path, default=None, help="keep the converted files here")
    quality.add_argument("--no-offline", action="store_true", help="skip the Seed-VC offline baseline")
    quality.add_argument("--threads", type=int, default=1, help="torch CPU threads (scorers, seedvc on CPU)")
    quality.add_argument("--device", default="auto", help="seedvc: auto, cpu, cuda, cuda:N")
    quality.add_argument(
        "--model-cache",
        type=Path,
        default=os.environ.get("VCSTREAM_MODEL_CACHE"),
        help="Hugging Face cache folder holding Seed-VC weights (env VCSTREAM_MODEL_CACHE); never downloads",
    )
    quality.set_defaults(func=cmd_quality)
