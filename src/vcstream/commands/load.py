"""``vcstream bench load``: concurrent WebRTC calls against a running server or balancer
(``vcstream.bench.load``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def cmd_load(args: argparse.Namespace) -> int:
    from vcstream.bench.load import LoadPlan, run_load_bench

    step = args.step or (1 if args.ramp > 0 else args.calls)
    plan = LoadPlan(calls=args.calls, ramp_s=args.ramp, seconds=args.seconds, step=min(step, args.calls))
    result = run_load_bench(args.url, plan, args.voice, args.server_pid or ())
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.as_json(), indent=1) + "\n")
        print(f"wrote {args.json}")
    if args.plot is not None:
        from vcstream.bench.load_plot import plot_load

        title = args.title or f"{result.engine or '?'} engine at {result.url}"
        plot_load(result.steps, args.plot, title)
        print(f"wrote {args.plot}")
    return 0


def register(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    bench_sub: argparse._SubParsersAction,  # type: ignore[type-arg]
) -> None:
    load = bench_sub.add_parser(
        "load",
        help="concurrent WebRTC calls against a running server or balancer",
        description="Dials N WebRTC calls (headless webrtcbin clients, several per process) to a running "
        "server or balancer, STEP at a time over RAMP seconds, then holds them SECONDS more. Each call "
        "talks bursts of flite speech and times its own converted audio by the clock. Prints per step "
        "p50/p95 mouth-to-ear latency, time to first audio, gaps over 60 ms, refusals and failures.",
    )
    load.add_argument("--url", required=True, help="the server or balancer, http(s)://host:port")
    load.add_argument("--calls", type=_positive, required=True, help="calls in all")
    load.add_argument("--ramp", type=float, default=0.0, help="seconds over which the steps are dialled")
    load.add_argument("--seconds", type=float, default=10.0, help="seconds all calls run after the last step")
    load.add_argument("--step", type=_positive, default=None, help="calls per step (default 1 with --ramp)")
    load.add_argument("--voice", default=None, help="voice id (default: upload a flite voice)")
    load.add_argument(
        "--server-pid",
        type=int,
        action="append",
        default=None,
        help="a local server's process: report its CPU per step (repeat for every replica: summed)",
    )
    load.add_argument("--plot", type=Path, default=None, help="write a PNG of latency and refusals")
    load.add_argument("--title", default=None, help="the plot's title (default: engine and URL)")
    load.add_argument("--json", type=Path, default=None, help="write the results as JSON")
    load.set_defaults(func=cmd_load)
