"""``vcstream bench calls``: the server process's own CPU cost per real WebRTC call.

For each call count N: ``vcstream serve`` starts as its own process with the chosen engine on a
free port; client processes (``vcstream.bench.call_client``, a few calls each) open N real WebRTC
calls and talk flite speech into them in real time. Once every call returns converted audio and a
warm-up has passed, the server's CPU time (utime + stime from ``/proc/PID/stat``) is read over the
measured window, with its thread count; the clients report the audio each call received over the
same window (against the window's length), arrival gaps over 60 ms, and the growth of the late and
dropped counters the server reports in its ``stats`` messages.

``--compare-src DIR`` also runs a server from another source tree (e.g. an export of the commit
before a change) for every N, interleaved with this one, and prints the ratio: on shared cores only
figures from the same run compare.
"""

from __future__ import annotations

import io
import json
import mimetypes
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import wave
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vcstream.bench.client_events import ClientEvents
from vcstream.bench.signals import flite_speech

#: calls one client process holds (its own CPU is not the server's)
CALLS_PER_CLIENT = 4
#: for every call of a client process to bring converted audio back (Seed-VC on CPU is slow to start)
READY_TIMEOUT_S = 180.0
#: after "stop", for a client process to hang up and report its calls
REPORT_TIMEOUT_S = 60.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CallsResult:
    variant: str
    calls: int
    window_s: float
    server_cpu_pct: float
    threads_idle: int
    threads: int
    received_s: float
    expected_s: float
    gaps: int
    late_blocks: int
    dropped_ms: float
    failures: int

    @property
    def cpu_per_call_pct(self) -> float:
        return self.server_cpu_pct / max(1, self.calls)

    @property
    def threads_per_call(self) -> float:
        return (self.threads - self.threads_idle) / max(1, self.calls)


# -- the server process -----------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime (fields 14, 15)


def thread_names(pid: int) -> list[str]:
    names = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:  # the thread ended meanwhile
            continue
    return names


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _http(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()
    except OSError:
        return 0, b""


def _wav_bytes(samples: np.ndarray[Any, Any], rate: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return out.getvalue()


def upload_voice(base: str) -> str:
    """A voice made from flite's ``rms`` speaker; returns its id."""
    return upload_reference(base, _wav_bytes(flite_speech("rms", 16000), 16000), "ref.wav")


def upload_reference(base: str, data: bytes, filename: str, name: str = "bench") -> str:
    """Upload ``data`` (an audio file) to ``POST /api/voices`` as a user would; returns the voice id."""
    boundary = "vcstream-bench"
    # what a browser would send: the .wav type the API documents, else the type the name suggests
    kind = "audio/wav" if filename.lower().endswith(".wav") else mimetypes.guess_type(filename)[0]
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\n{name}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: {kind or 'application/octet-stream'}\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, reply = _http(
        f"{base}/api/voices", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    if status != 201:
        raise RuntimeError(f"uploading the reference voice failed: {status} {reply[:200]!r}")
    return str(json.loads(reply)["id"])


def serve_command(engine: str, host: str, port: int, data_dir: Path, max_sessions: int) -> list[str]:
    """``vcstream serve`` with ``engine`` on ``host:port``, keeping its data in ``data_dir``."""
    command = [sys.executable, "-m", "vcstream.cli", "serve", "--engine", engine, "--host", host]
    return [*command, "--port", str(port), "--data-dir", str(data_dir), "--max-sessions", str(max_sessions)]


@contextmanager
def _server(
    engine: str, calls: int, src: Path | None, data_dir: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = _free_port()
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
    command = serve_command(engine, "127.0.0.1", port, data_dir, max(1, calls))
    log_path = data_dir / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while _http(f"{base}/readyz")[0] != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {engine} server did not become ready (exit {process.poll()})")
            time.sleep(0.2)
        yield process, base
    except BaseException:
        sys.stderr.write(log_path.read_text(errors="replace")[-3000:])
        raise
    finally:
        end_process(process)


# -- the client processes ---------------------------------------------------------------------------


def _clients(stack: ExitStack, base: str, voice: str, calls: int) -> list[subprocess.Popen[str]]:
    processes = []
    ws = base.replace("http://", "ws://") + "/ws"
    for first in range(0, calls, CALLS_PER_CLIENT):
        count = min(CALLS_PER_CLIENT, calls - first)
        command = [sys.executable, "-m", "vcstream.bench.call_client", "--ws", ws, "--voice", voice]
        process = subprocess.Popen(
            [*command, "--calls", str(count)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        stack.callback(end_process, process)
        processes.append(process)
    return processes


def end_process(process: subprocess.Popen[Any]) -> None:
    """Terminate a child process, killing it after 15 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tell(processes: Sequence[subprocess.Popen[str]], word: str) -> None:
    for process in processes:
        assert process.stdin is not None
        process.stdin.write(word + "\n")
        process.stdin.flush()


# -- one measurement --------------------------------------------------------------------------------


def measure(
    engine: str,
    calls: int,
    seconds: float,
    warmup_s: float,
    *,
    src: Path | None = None,
    variant: str = "this",
) -> CallsResult:
    """Run ``calls`` calls against a fresh ``engine`` server (from ``src`` when given) and measure."""
    with tempfile.TemporaryDirectory(prefix="vcstream-bench-calls-") as tmp, ExitStack() as stack:
        server, base = stack.enter_context(_server(engine, calls, src, Path(tmp)))
        voice = upload_voice(base)
        threads_idle = len(thread_names(server.pid))
        clients = _clients(stack, base, voice, calls)
        readers = [ClientEvents(client) for client in clients]
        events = [reader.next(READY_TIMEOUT_S) for reader in readers]
        if any(event["event"] != "ready" for event in events):
            raise RuntimeError(f"not every call converted: {events}")
        time.sleep(warmup_s)
        _tell(clients, "measure")
        cpu_start, wall_start = cpu_seconds(server.pid), time.perf_counter()
        time.sleep(seconds)
        cpu_end, wall_end = cpu_seconds(server.pid), time.perf_counter()
        threads = len(thread_names(server.pid))
        _tell(clients, "stop")
        reports = [call for reader in readers for call in reader.next(REPORT_TIMEOUT_S).get("calls", [])]
    window = wall_end - wall_start
    return CallsResult(
        variant=variant,
        calls=calls,
        window_s=window,
        server_cpu_pct=100 * (cpu_end - cpu_start) / window,
        threads_idle=threads_idle,
        threads=threads,
        received_s=sum(r["received_s"] for r in reports),
        expected_s=sum(r["expected_s"] for r in reports),
        gaps=sum(r["gaps"] for r in reports),
        late_blocks=sum(int(r["server"]["late_blocks"]) for r in reports),
        dropped_ms=sum(float(r["server"]["dropped_ms"]) for r in reports),
        failures=sum(bool(r["errors"]) for r in reports) + calls - len(reports),
    )


def _row(result: CallsResult) -> str:
    health = result.received_s / result.expected_s if result.expected_s else 0.0
    return (
        f"{result.variant:>9} {result.calls:5d} {result.server_cpu_pct:8.1f} {result.cpu_per_call_pct:9.2f} "
        f"{result.threads_idle:6d} {result.threads:7d} {result.threads_per_call:8.1f} {100 * health:7.1f} "
        f"{result.gaps:5d} {result.late_blocks:5d} {result.dropped_ms:8.0f} {result.failures:5d}"
    )


HEADER = "  variant calls  cpu_%  cpu_%/call  thr_0 threads thr/call  recv_%  gaps  late drop_ms  fail"


def run_calls_bench(
    engine: str,
    counts: Sequence[int],
    seconds: float,
    warmup_s: float = 3.0,
    compare_src: Path | None = None,
    rounds: int = 1,
) -> list[CallsResult]:
    """Measure each call count (``rounds`` times), interleaved with ``compare_src`` when given."""
    print(f"engine {engine}: server CPU over {seconds:g} s after {warmup_s:g} s warm-up, % of one core")
    print(HEADER, flush=True)
    results = []
    for calls in counts:
        for _ in range(rounds):
            variants: list[tuple[str, Path | None]] = [("this", None)]
            if compare_src is not None:
                variants.insert(0, ("baseline", compare_src))
            for variant, src in variants:
                result = measure(engine, calls, seconds, warmup_s, src=src, variant=variant)
                results.append(result)
                print(_row(result), flush=True)
        if compare_src is not None:
            mean = {
                name: float(
                    np.mean([r.cpu_per_call_pct for r in results if r.calls == calls and r.variant == name])
                )
                for name in ("baseline", "this")
            }
            ratio = mean["this"] / mean["baseline"] if mean["baseline"] else float("nan")
            print(f"{'':>9} {calls:5d} cpu per call this/baseline = {ratio:.2f}", flush=True)
    return results
