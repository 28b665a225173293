"""The client side of ``vcstream bench load``: one process dialling several WebRTC calls on a schedule.

Run as ``python -m vcstream.bench.load_client --ws URL --voice ID --starts 0,2.5 --end 20``. It
prepares (GStreamer, the talk track), prints ``{"event": "prepared"}`` and waits for ``go T`` on
stdin, T a ``time.monotonic()`` instant (one clock for every process of the machine). Call k is
dialled at T + starts[k]; every call is fed the same talk track (``bench.talk_markers``) in real
time from T, 20 ms per push, and records what it receives with arrival times. At T + end it hangs
up, finds its markers and prints ``{"event": "result", "engine": ..., "calls": [...]}``: for each
call when it was dialled, when its first audible audio arrived, each marker's push time and
latency, arrival gaps over 60 ms, and whether it was refused (``server_full``, HTTP 503/429) or
failed.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from vcstream.audio.types import Audio
from vcstream.bench.call_client import CHUNK, GAP_S, BenchCall, CallRefused
from vcstream.bench.latency import StreamRecorder
from vcstream.bench.redial import retry_after_seconds
from vcstream.bench.signals import flite_speech
from vcstream.bench.talk_markers import MarkerLocator, TalkTrack, talk_track
from vcstream.media.webrtc import OPUS_RATE

#: markers count once a call has played this long (its first buffers are the jitter buffer filling)
SETTLE_S = 0.5
#: refusals a load test expects: the server or a balancer in front of it is full
REFUSAL_CODES = frozenset({"server_full"})
REFUSAL_HTTP = frozenset({503, 429})
#: figures of the server's last ``stats`` message kept in a call's report
SERVER_STATS = ("latency_ms", "late_blocks", "skipped_blocks", "dropped_ms", "block_ms")


@dataclass
class LoadCall(BenchCall):
    """A ``BenchCall`` that keeps what it receives, with arrival times."""

    recorder: StreamRecorder = field(default_factory=StreamRecorder)
    first_audio_at: float | None = None

    def on_audio(self, samples: Audio) -> None:
        super().on_audio(samples)
        if self.first_audio_at is None and np.max(np.abs(samples), initial=0.0) > 1e-3:
            self.first_audio_at = time.monotonic()
        self.recorder(samples)

    @property
    def connected(self) -> bool:
        """Audio pushed before the connection only fills the send queue, whose backlog then
        stays as delay: talking waits for it, as a person waits to hear the other end."""
        return self.states.get("client connection") == "connected"

    def refusal(self) -> dict[str, Any] | None:
        """The refusal a server sent after ``ready`` (e.g. ``server_full`` at the offer), if any."""
        return next((e for e in self.server_errors if e.get("code") in REFUSAL_CODES), None)


@dataclass
class Outcome:
    """What became of one scheduled call."""

    start_s: float
    dialled_at: float = float("nan")
    call: LoadCall | None = None
    refused: str | None = None
    retry_after_s: float | None = None
    failure: str | None = None


async def _dial(http: aiohttp.ClientSession, ws_url: str, voice: str, outcome: Outcome, at: float) -> None:
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    outcome.dialled_at = time.monotonic()
    try:
        ws = await http.ws_connect(ws_url)
    except aiohttp.WSServerHandshakeError as error:
        if error.status in REFUSAL_HTTP:
            outcome.refused = f"http_{error.status}"
            outcome.retry_after_s = retry_after_seconds(
                error.headers.get("Retry-After") if error.headers else None
            )
        else:
            outcome.failure = f"WebSocket upgrade answered {error.status}: {error.message}"
        return
    except (aiohttp.ClientError, OSError) as error:
        outcome.failure = f"cannot open the signalling WebSocket: {error}"
        return
    call = LoadCall(asyncio.get_running_loop(), ws)
    outcome.call = call
    try:
        await call.dial(voice)
    except CallRefused as refused:
        code = str(refused.reply.get("code"))
        if code in REFUSAL_CODES:
            outcome.refused = code
            outcome.retry_after_s = refused.reply.get("retry_after_s")
        else:
            outcome.failure = str(refused)
    except (TimeoutError, aiohttp.ClientError, RuntimeError) as error:
        outcome.failure = f"dialling failed: {error!r}"


async def _talk(calls: list[Outcome], track: TalkTrack, go: float, pushes: list[float]) -> None:
    """Feed every live call the looped track, 20 ms at a time on the clock from ``go``."""
    samples = track.samples
    index = 0
    while True:
        await asyncio.sleep(max(0.0, go + index / 50 - time.monotonic()))
        start = (index * CHUNK) % samples.shape[0]
        chunk = samples[start : start + CHUNK]
        pushes.append(time.monotonic())
        for outcome in calls:
            call = outcome.call
            if call is not None and call.peer is not None and call.connected:
                call.peer.push(chunk)
        index += 1


def _gaps(arrivals: list[tuple[float, int]], since: float) -> list[float]:
    """Arrival times of buffers that came more than ``GAP_S`` after the previous one."""
    times = [at for at, _ in arrivals]
    return [b for a, b in itertools.pairwise(times) if a >= since and b - a > GAP_S]


def report(outcome: Outcome, locator: MarkerLocator, end: float, max_lag_s: float) -> dict[str, Any]:
    call = outcome.call
    late_refusal = call.refusal() if call is not None and outcome.refused is None else None
    if late_refusal is not None:
        outcome.refused, outcome.retry_after_s = late_refusal["code"], late_refusal.get("retry_after_s")
    result: dict[str, Any] = {
        "start_s": outcome.start_s,
        "dialled_at": outcome.dialled_at,
        "refused": outcome.refused,
        "retry_after_s": outcome.retry_after_s,
        "failure": outcome.failure,
        "first_audio_at": None,
        "markers": [],
        "gaps": [],
        "errors": list(call.errors) if call is not None else [],
    }
    if call is None or result["refused"] or outcome.failure:
        return result
    if call.first_audio_at is None:
        result["failure"] = f"no audio came back (states: {call.states})"
        return result
    result["first_audio_at"] = call.first_audio_at
    # the server's own view at hang-up: blocks it converted late or concealed, audio it dropped
    result["server_stats"] = {name: call.stats.get(name) for name in SERVER_STATS}
    arrivals = call.recorder.arrivals()
    since = call.first_audio_at + SETTLE_S
    markers = locator.latencies(call.recorder.audio(), arrivals, since, end - max_lag_s, max_lag_s)
    result["markers"] = [[round(at, 4), None if lag is None else round(lag, 4)] for at, lag in markers]
    result["gaps"] = [round(at, 4) for at in _gaps(arrivals, call.first_audio_at)]
    return result


async def run(ws_url: str, voice: str, starts: list[float], end_s: float, max_lag_s: float) -> None:
    track = talk_track(flite_speech("slt", OPUS_RATE), OPUS_RATE, chunk=CHUNK)
    async with aiohttp.ClientSession() as http:
        _say({"event": "prepared"})
        go = float((await _line()).removeprefix("go "))
        outcomes = [Outcome(start) for start in starts]
        pushes: list[float] = []
        talking = asyncio.create_task(_talk(outcomes, track, go, pushes))
        dials = [asyncio.create_task(_dial(http, ws_url, voice, o, go + o.start_s)) for o in outcomes]
        try:
            await asyncio.sleep(max(0.0, go + end_s - time.monotonic()))
        finally:
            talking.cancel()
            for dial in dials:
                dial.cancel()
            await asyncio.gather(*dials, return_exceptions=True)
            for outcome in outcomes:
                if outcome.call is not None:
                    await outcome.call.close()
        locator = MarkerLocator(track, CHUNK, pushes)
        engine = next((o.call.welcome.get("engine") for o in outcomes if o.call and o.call.welcome), None)
        calls = [report(o, locator, go + end_s, max_lag_s) for o in outcomes]
        _say({"event": "result", "engine": engine, "calls": calls})


async def _line() -> str:
    line: str = await asyncio.to_thread(sys.stdin.readline)
    if not line:
        raise SystemExit("the benchmark went away")
    return line.strip()


def _say(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ws", required=True, help="the signalling URL (ws(s)://host:port/ws)")
    parser.add_argument("--voice", required=True, help="voice id to convert to")
    parser.add_argument("--starts", required=True, help="comma-separated seconds after go to dial each call")
    parser.add_argument("--end", type=float, required=True, help="seconds after go to hang up")
    parser.add_argument("--max-lag", type=float, default=2.0, help="longest latency looked for (s)")
    args = parser.parse_args()
    starts = [float(s) for s in args.starts.split(",")]
    asyncio.run(run(args.ws, args.voice, starts, args.end, args.max_lag))


if __name__ == "__main__":
    main()
