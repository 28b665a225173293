"""``vcstream bench load``: N concurrent WebRTC calls against a running server or balancer, ramped up.

Calls are dialled ``step`` at a time, the steps spread evenly over ``ramp`` seconds; once all are
dialled they run ``seconds`` more. Client processes (``vcstream.bench.load_client``, a few calls
each, so that the clients' CPU is spread) talk bursts of flite speech into every call in real time
and time their own converted audio by the machine's monotonic clock. Per step (the calls dialled
so far) it reports mouth-to-ear latency of the markers pushed during the step (p50/p95), time to
first audio of the calls dialled in it (from opening the WebSocket to the first audible buffer),
arrival gaps over 60 ms, refusals (``server_full``, HTTP 503/429) and failures; with
``server_pids`` (servers on this machine: one, or every replica of a local cluster) also those
processes' CPU together over each step.
"""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vcstream.bench.calls import cpu_seconds, end_process, upload_voice
from vcstream.bench.client_events import ClientEvents, ClientProcessError
from vcstream.errors import VcstreamError

#: calls one client process holds
CALLS_PER_CLIENT = 4
#: the longest latency a marker is looked for at
MAX_LAG_S = 2.0
#: time for client processes to import GStreamer and build the talk track
PREPARE_TIMEOUT_S = 60.0
#: after the plan's end, time for a client process to hang up and report its calls
REPORT_TIMEOUT_S = 60.0


class LoadTestError(VcstreamError):
    """The load test cannot run (bad URL, server unreachable, voice upload refused)."""


@dataclass(frozen=True)
class LoadPlan:
    calls: int
    ramp_s: float
    seconds: float
    step: int

    @property
    def steps(self) -> int:
        return math.ceil(self.calls / self.step)

    def step_start(self, index: int) -> float:
        return index * self.ramp_s / self.steps if self.steps > 1 else 0.0

    def call_start(self, call: int) -> float:
        return self.step_start(call // self.step)

    @property
    def end_s(self) -> float:
        return self.step_start(self.steps - 1) + self.seconds

    def step_end(self, index: int) -> float:
        return self.step_start(index + 1) if index + 1 < self.steps else self.end_s


@dataclass
class StepResult:
    step: int
    dialled: int
    converting: int
    window_s: float
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    markers: int
    markers_found: int
    first_audio_ms_p50: float | None
    first_audio_ms_max: float | None
    gaps: int
    refusals: int
    failures: int
    retry_after_s: list[float] = field(default_factory=list)
    #: the server processes' CPU over the step, all together, % of one core (``--server-pid`` only)
    server_cpu_pct: float | None = None


@dataclass
class LoadResult:
    url: str
    engine: str | None
    voice: str
    plan: LoadPlan
    steps: list[StepResult]
    calls: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "engine": self.engine,
            "voice": self.voice,
            "plan": asdict(self.plan),
            "steps": [asdict(step) for step in self.steps],
            "calls": self.calls,
        }


# -- the target ------------------------------------------------------------------------------------


def signalling_url(url: str) -> str:
    """The page's signalling URL for a server URL: ws(s)://host:port/ws."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise LoadTestError(f"--url must be http(s)://host:port, got {url!r}")
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}/ws"


def check_reachable(base: str) -> int:
    """The status of ``GET /readyz``; a clear error when nothing answers."""
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise LoadTestError(f"cannot reach {base}: {reason}") from None


# -- the clients -----------------------------------------------------------------------------------


def _client_command(ws: str, voice: str, starts: Sequence[float], end_s: float) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vcstream.bench.load_client",
        *("--ws", ws, "--voice", voice, "--end", f"{end_s:.3f}", "--max-lag", str(MAX_LAG_S)),
        *("--starts", ",".join(f"{s:.3f}" for s in starts)),
    ]


def run_clients(ws: str, voice: str, plan: LoadPlan) -> tuple[float, list[dict[str, Any]], str | None]:
    """Start the client processes, dial on the plan, and collect every call's report."""
    # calls spread round-robin, so that every step loads every client process alike
    processes_wanted = math.ceil(plan.calls / CALLS_PER_CLIENT)
    assignment = [list(range(p, plan.calls, processes_wanted)) for p in range(processes_wanted)]
    with ExitStack() as stack:
        processes = []
        for calls in assignment:
            command = _client_command(ws, voice, [plan.call_start(c) for c in calls], plan.end_s)
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            stack.callback(end_process, process)
            processes.append(process)
        events = [ClientEvents(process) for process in processes]
        try:
            for client in events:
                client.next(PREPARE_TIMEOUT_S, "prepared")
            go = time.monotonic() + 0.5
            for process in processes:
                assert process.stdin is not None
                process.stdin.write(f"go {go!r}\n")
                process.stdin.flush()
            # every call hangs up at the plan's end; then its report is a few seconds of work
            results = [client.next(plan.end_s + REPORT_TIMEOUT_S, "result") for client in events]
        except ClientProcessError as error:
            raise LoadTestError(str(error)) from None
    by_call: dict[int, dict[str, Any]] = {}
    for calls, result in zip(assignment, results, strict=True):
        by_call.update(zip(calls, result["calls"], strict=True))
    engine = next((str(r["engine"]["name"]) for r in results if r.get("engine")), None)
    return go, [by_call[c] for c in range(plan.calls)], engine


# -- per step ----------------------------------------------------------------------------------------


def _percentile(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


class CpuSampler:
    """Samples the CPU time of local server processes (``/proc``), summed, in a thread while the
    calls run."""

    def __init__(self, pids: Sequence[int], every_s: float = 0.25) -> None:
        self.pids = list(pids)
        self.every_s = every_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def __enter__(self) -> CpuSampler:
        self._total()  # a clear error now if there is no such process
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _total(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), self._total()))
            except OSError:  # a server ended: the sum would no longer mean the same
                return
            self._stop.wait(self.every_s)

    def percent(self, since: float, until: float) -> float | None:
        """CPU % of one core between two instants (interpolated between samples)."""
        if len(self.samples) < 2 or until <= since:
            return None
        at, cpu = zip(*self.samples, strict=True)
        spent = float(np.interp(until, at, cpu) - np.interp(since, at, cpu))
        return round(100 * spent / (until - since), 1)


def summarise(
    plan: LoadPlan, go: float, calls: Sequence[dict[str, Any]], sampler: CpuSampler | None = None
) -> list[StepResult]:
    steps = []
    for index in range(plan.steps):
        since, until = go + plan.step_start(index), go + plan.step_end(index)
        mine = [c for k, c in enumerate(calls) if k // plan.step == index]
        live = [c for k, c in enumerate(calls) if k // plan.step <= index and c["first_audio_at"] is not None]
        markers = [lag for c in live for at, lag in c["markers"] if since <= at < until]
        found = [1000 * lag for lag in markers if lag is not None]
        first_audio = [
            1000 * (c["first_audio_at"] - c["dialled_at"]) for c in mine if c["first_audio_at"] is not None
        ]
        steps.append(
            StepResult(
                step=index + 1,
                dialled=min(plan.calls, (index + 1) * plan.step),
                converting=len(live),
                window_s=round(until - since, 2),
                latency_ms_p50=_percentile(found, 50),
                latency_ms_p95=_percentile(found, 95),
                markers=len(markers),
                markers_found=len(found),
                first_audio_ms_p50=_percentile(first_audio, 50),
                first_audio_ms_max=round(max(first_audio), 1) if first_audio else None,
                gaps=sum(since <= at < until for c in live for at in c["gaps"]),
                refusals=sum(bool(c["refused"]) for c in mine),
                failures=sum(bool(c["failure"]) and not c["refused"] for c in mine),
                retry_after_s=[c["retry_after_s"] for c in mine if c["retry_after_s"] is not None],
                server_cpu_pct=sampler.percent(since, until) if sampler is not None else None,
            )
        )
    return steps


HEADER = (
    "step calls conv  window  lat_p50  lat_p95  markers  ttfa_p50 ttfa_max  gaps  refused  failed  srv_cpu%"
)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def row(step: StepResult) -> str:
    return (
        f"{step.step:4d} {step.dialled:5d} {step.converting:4d} {step.window_s:6.1f}s "
        f"{_ms(step.latency_ms_p50):>8} {_ms(step.latency_ms_p95):>8} "
        f"{step.markers_found:4d}/{step.markers:<4d} "
        f"{_ms(step.first_audio_ms_p50):>9} {_ms(step.first_audio_ms_max):>8} {step.gaps:5d} "
        f"{step.refusals:8d} {step.failures:7d} {_ms(step.server_cpu_pct):>9}"
    )


def run_load_bench(
    url: str, plan: LoadPlan, voice: str | None = None, server_pids: Sequence[int] = ()
) -> LoadResult:
    base = url.rstrip("/")
    ws = signalling_url(base)
    ready = check_reachable(base)
    if ready != 200:
        print(f"note: {base}/readyz answers {ready} (warming, draining or full)", flush=True)
    if voice is None:
        try:
            voice = upload_voice(base)
        except RuntimeError as error:
            raise LoadTestError(str(error)) from None
    print(
        f"{base}: {plan.calls} calls, {plan.step} per step over {plan.ramp_s:g} s, then {plan.seconds:g} s; "
        f"voice {voice}",
        flush=True,
    )
    with ExitStack() as stack:
        sampler = stack.enter_context(CpuSampler(server_pids)) if server_pids else None
        go, calls, engine = run_clients(ws, voice, plan)
    steps = summarise(plan, go, calls, sampler)
    print(f"engine {engine or '?'}; latency = mouth-to-ear of speech-burst markers, ms")
    print(HEADER)
    for step in steps:
        print(row(step), flush=True)
    for k, call in enumerate(calls):
        if call["failure"]:
            print(f"call {k + 1} failed: {call['failure']}", flush=True)
    return LoadResult(base, engine, voice, plan, steps, calls)
