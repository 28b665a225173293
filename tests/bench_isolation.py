"""Benchmark: does abusive request traffic take audio from a running call?

For each server source tree given (e.g. the main checkout's ``src`` as the baseline and this one's),
interleaved over ``--rounds``: start ``vcstream serve --engine passthrough`` (``--engine``) from that
tree in its own process, make one real WebRTC call from this process (``PyClient``, a steady tone,
0.1 s blocks), let it run quietly, then run ``isolation_load.py`` in a third process beside it
(multipart uploads of 10,000 tiny parts, 20 sockets flooding signalling, /healthz probes). Prints,
per server, what the call received during the load against what was sent, the gaps > 60 ms between
received packets, the server's late blocks and dropped audio (its ``stats``), /healthz p50/p95 and
upload times; then the ratio of the candidate's figures to the baseline's.

    PYTHONPATH=src python tests/bench_isolation.py --baseline /work/main/src --candidate src
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from conftest import write_wav
from ports import free_port
from vcstream.audio.types import Audio
from vcstream.media.webrtc import OPUS_RATE
from waiting import wait_until_async
from webrtc_harness import PyClient

LOAD_SCRIPT = Path(__file__).with_name("isolation_load.py")
GAP_S = 0.06


def tone(seconds: float, rate: int = OPUS_RATE) -> Audio:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


@dataclass
class Outcome:
    server: str
    sent_s: float
    received_s: float
    max_gap_ms: float
    gaps_over_60ms: int
    late_blocks: int
    dropped_ms: float
    healthz_p50_ms: float
    healthz_p95_ms: float
    upload_s: float
    uploads: dict[str, int]
    flood_closes: dict[str, int]


def one_call(src: str, label: str, quiet_s: float, load_s: float, data: Path, engine: str) -> Outcome:
    """A server from ``src`` in its own process, one call beside the load, the server stopped."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
    command = [sys.executable, "-c", "import sys; from vcstream.cli import main; sys.exit(main())"]
    command += ["serve", "--engine", engine, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--data-dir", str(data), "--webrtc-latency-ms", "20", "--log-level", "warning"]
    server = subprocess.Popen(command, env=env)
    try:
        return asyncio.run(measure(port, label, quiet_s, load_s, data))
    finally:
        server.terminate()
        server.wait(15)


async def measure(port: int, label: str, quiet_s: float, load_s: float, data: Path) -> Outcome:
    base = f"http://127.0.0.1:{port}"
    reference = await asyncio.to_thread((data / "ref.wav").read_bytes)
    async with aiohttp.ClientSession() as http:

        async def ready() -> bool:
            try:
                async with http.get(f"{base}/readyz") as response:
                    return response.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await wait_until_async(ready, 30, f"the {label} server became ready")
        form = aiohttp.FormData()
        form.add_field("name", "tone")
        form.add_field("file", reference, filename="ref.wav")
        async with http.post(f"{base}/api/voices", data=form) as response:
            voice = (await response.json())["id"]
        async with http.ws_connect(f"ws://127.0.0.1:{port}/ws") as ws:
            call = PyClient(ws)
            events = call.events
            try:
                await call.hello()
                await call.start(voice, settings={"block_time": 0.1})
                samples = tone(4.0)
                await call.talk(samples, lambda: events.first_audio is not None, 15)
                await call.talk(samples, lambda: False, quiet_s)
                before = call.of_type("stats")[-1]
                load = await asyncio.create_subprocess_exec(
                    sys.executable,
                    str(LOAD_SCRIPT),
                    base,
                    "--seconds",
                    str(load_s),
                    stdout=asyncio.subprocess.PIPE,
                )
                started = time.perf_counter()
                await call.talk(samples, lambda: False, load_s)
                ended = time.perf_counter()
                out, _ = await load.communicate()
                await call.talk(samples, lambda: False, 1.5)  # a stats message after the load
                after = call.of_type("stats")[-1]
            finally:
                await call.close()
    report: dict[str, Any] = json.loads(out)
    received, gaps = events.continuity(started + 0.3, ended)  # 0.3 s: the path's own delay
    healthz = report["healthz_ms"] or [float("nan")]
    return Outcome(
        server=label,
        sent_s=ended - started - 0.3,
        received_s=received,
        max_gap_ms=1000 * max(gaps),
        gaps_over_60ms=sum(gap > GAP_S for gap in gaps),
        late_blocks=after["late_blocks"] - before["late_blocks"],
        dropped_ms=after["dropped_ms"] - before["dropped_ms"],
        healthz_p50_ms=statistics.median(healthz),
        healthz_p95_ms=float(np.percentile(healthz, 95)),
        upload_s=statistics.median(report["upload_seconds"] or [float("nan")]),
        uploads=report["upload_statuses"],
        flood_closes=report["flood_closes"],
    )


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--baseline", help="src folder of the baseline server (e.g. /work/main/src)")
    parser.add_argument("--candidate", default=str(Path(__file__).parents[1] / "src"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quiet-s", type=float, default=3.0)
    parser.add_argument("--load-s", type=float, default=6.0)
    parser.add_argument(
        "--engine", default="passthrough", help="the server's engine (world: more Python per block)"
    )
    args = parser.parse_args()
    servers = [("baseline", args.baseline)] if args.baseline else []
    servers.append(("candidate", args.candidate))
    results: dict[str, list[Outcome]] = {label: [] for label, _ in servers}
    with tempfile.TemporaryDirectory() as folder:
        for round_index in range(args.rounds):
            for label, src in servers:  # interleaved: both see the same neighbours on shared cores
                data = Path(folder) / f"{label}-{round_index}"
                data.mkdir()
                write_wav(data / "ref.wav", tone(3.0, 16000), 16000)
                outcome = one_call(src, label, args.quiet_s, args.load_s, data, args.engine)
                results[label].append(outcome)
                print(json.dumps(outcome.__dict__, default=float), flush=True)
    print("\nmedian over rounds:")
    keys = ["received_s", "sent_s", "max_gap_ms", "gaps_over_60ms", "late_blocks", "dropped_ms"]
    keys += ["healthz_p50_ms", "healthz_p95_ms", "upload_s"]
    medians = {
        label: {k: statistics.median(float(getattr(o, k)) for o in outs) for k in keys}
        for label, outs in results.items()
    }
    for label, values in medians.items():
        print(f"  {label:9s} " + "  ".join(f"{k}={v:.2f}" for k, v in values.items()))
    if "baseline" in medians:
        base, cand = medians["baseline"], medians["candidate"]
        ratios = {k: cand[k] / base[k] if base[k] else float("nan") for k in keys}
        print("  candidate/baseline " + "  ".join(f"{k}={v:.2f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
