"""Benchmark: the server's memory under many parallel voice uploads (issue 10: 50 parallel 9 MB
uploads took the server to 766 MB, and 325 MB stayed).

For each server given (a source tree, and optionally ``VCSTREAM_MAX_UPLOADS``), interleaved over
``--rounds``: start ``vcstream serve --engine passthrough`` from that tree in its own process (the
passthrough engine: what is measured is upload handling, not an engine's features), send
``--uploads`` uploads of one ``--size-mb`` WAV at once (48 kHz 16-bit mono, a harmonic tone with a
syllable rhythm, so it is a valid reference, trimmed to 30 s), each under its own name; a client
answered 503 waits its Retry-After and tries again, as a browser's retry would. Prints per server the
answers, wall time, the server's RSS before, its peak (VmHWM) and what it kept after, and the ratio of
each figure to the first server's (the baseline), measured in the same run.

    PYTHONPATH=src python tests/bench_upload_memory.py --server base=/work/main/src \\
        --server new=src --server new-unbounded=src:50
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import subprocess
import sys
import tempfile
import time
import wave
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from ports import free_port

RATE = 48000


@dataclass(frozen=True)
class Server:
    label: str
    src: Path
    max_uploads: int | None


@dataclass
class Outcome:
    statuses: Counter[int] = field(default_factory=Counter)
    retries: int = 0
    wall_s: float = 0.0
    rss_before_mb: float = 0.0
    peak_mb: float = 0.0
    kept_mb: float = 0.0


def reference_wav(size_mb: float) -> bytes:
    seconds = size_mb * 2**20 / (2 * RATE)
    t = np.arange(int(seconds * RATE)) / RATE
    voice = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 8))
    syllables = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    samples = (0.2 * voice * syllables / np.max(np.abs(voice))).astype(np.float32)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((samples * 32767).astype("<i2").tobytes())
    return out.getvalue()


def memory_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(key)


async def upload(http: aiohttp.ClientSession, url: str, name: str, wav: bytes, outcome: Outcome) -> None:
    for _ in range(100):
        form = aiohttp.FormData()
        form.add_field("name", name)
        form.add_field("file", wav, filename=f"{name}.wav", content_type="audio/wav")
        async with http.post(url, data=form) as response:
            await response.read()
            if response.status != 503:
                outcome.statuses[response.status] += 1
                return
            outcome.retries += 1
            await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
    outcome.statuses[503] += 1


async def wait_ready(base: str) -> None:
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + 120
        while True:
            try:
                async with http.get(f"{base}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not become ready")
            await asyncio.sleep(0.2)  # a server starting in another process: nothing to wait on


async def load(base: str, uploads: int, wav: bytes, round_no: int, outcome: Outcome) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
        started = time.monotonic()
        names = [f"voice {round_no}-{n}" for n in range(uploads)]
        await asyncio.gather(*(upload(http, f"{base}/api/voices", name, wav, outcome) for name in names))
        outcome.wall_s = time.monotonic() - started


def measure(server: Server, uploads: int, wav: bytes, round_no: int) -> Outcome:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(server.src.resolve())}
    if server.max_uploads is not None:
        env["VCSTREAM_MAX_UPLOADS"] = str(server.max_uploads)
    outcome = Outcome()
    with tempfile.TemporaryDirectory(prefix="vcstream-upload-bench-") as data:
        command = [sys.executable, "-m", "vcstream.cli", "serve", "--engine", "passthrough"]
        command += ["--host", "127.0.0.1", "--port", str(port), "--data-dir", data]
        with open(Path(data) / "server.log", "wb") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"

            async def run() -> None:
                await wait_ready(base)
                outcome.rss_before_mb = memory_mb(process.pid, "VmRSS")
                await load(base, uploads, wav, round_no, outcome)

            asyncio.run(run())
            outcome.peak_mb = memory_mb(process.pid, "VmHWM")
            outcome.kept_mb = memory_mb(process.pid, "VmRSS")
        finally:
            process.terminate()
            process.wait(30)
    return outcome


def parse_server(text: str) -> Server:
    """``label=SRC`` or ``label=SRC:MAX_UPLOADS``."""
    label, _, rest = text.partition("=")
    src, _, limit = rest.partition(":")
    return Server(label, Path(src), int(limit) if limit else None)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", type=parse_server, action="append", required=True)
    parser.add_argument("--uploads", type=int, default=50)
    parser.add_argument("--size-mb", type=float, default=9.0)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    wav = reference_wav(args.size_mb)
    print(f"{args.uploads} parallel uploads of {len(wav) / 1e6:.1f} MB, {args.rounds} round(s), interleaved")
    results: dict[str, list[Outcome]] = {server.label: [] for server in args.server}
    for round_no in range(args.rounds):
        for server in args.server:
            outcome = measure(server, args.uploads, wav, round_no)
            results[server.label].append(outcome)
            print(
                f"  {server.label:<16} answers {dict(outcome.statuses)} after {outcome.retries} 503s, "
                f"{outcome.wall_s:5.1f} s; RSS before {outcome.rss_before_mb:5.0f} MB, "
                f"peak {outcome.peak_mb:5.0f} MB, kept {outcome.kept_mb:5.0f} MB",
                flush=True,
            )
    baseline = args.server[0].label
    base_peak = np.median([o.peak_mb for o in results[baseline]])
    base_kept = np.median([o.kept_mb for o in results[baseline]])
    base_wall = np.median([o.wall_s for o in results[baseline]])
    print(f"medians, ratio to {baseline}:")
    for label, outcomes in results.items():
        peak = np.median([o.peak_mb for o in outcomes])
        kept = np.median([o.kept_mb for o in outcomes])
        wall = np.median([o.wall_s for o in outcomes])
        print(
            f"  {label:<16} peak {peak:5.0f} MB ({peak / base_peak:.2f}x), kept {kept:5.0f} MB "
            f"({kept / base_kept:.2f}x), wall {wall:5.1f} s ({wall / base_wall:.2f}x)"
        )


if __name__ == "__main__":
    main()
