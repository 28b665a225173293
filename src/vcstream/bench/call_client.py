"""The client side of ``vcstream bench calls``: one process holding several real WebRTC calls.

Run as ``python -m vcstream.bench.call_client --ws URL --voice ID --calls K``. Each call is a
``WebRtcPeer`` that offers over the signalling WebSocket, like a browser would. All calls of the
process are fed the same speech in real time (20 ms per push, paced on the clock). The process
talks to the benchmark over its standard streams, one JSON object or word per line:

* it prints ``{"event": "ready"}`` once every call receives converted audio (or ``{"event":
  "failed", ...}``);
* ``measure`` on stdin starts the measured window, ``stop`` ends it: it then prints ``{"event":
  "result", "calls": [...]}`` with each call's audio health over the window, and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import numpy as np

from vcstream.audio.types import Audio
from vcstream.bench.signals import flite_speech
from vcstream.errors import VcstreamError
from vcstream.media.webrtc import OPUS_RATE, PeerConfig, WebRtcPeer

#: 20 ms, one Opus frame
CHUNK = OPUS_RATE // 50
#: an arrival gap longer than this is heard as a drop-out
GAP_S = 0.06
#: server ``stats`` counters whose growth over the window is reported
SERVER_COUNTERS = ("late_blocks", "dropped_ms", "drop_events")


@dataclass(frozen=True)
class Refusal:
    """Why a call did not start: ``code`` is the server's error code (``server_full``,
    ``server_draining``...), ``http_<status>`` when the upgrade itself was refused (a balancer with no
    free replica) or ``unreachable``; ``retry_after_s`` is the hint that came with it, if any."""

    code: str
    message: str
    retry_after_s: float | None = None


class CallRefused(VcstreamError):
    """The call did not start: ``refusal`` says why; ``reply`` is the server's own message when it
    answered ``hello`` with one (else empty)."""

    def __init__(self, refusal: Refusal, reply: dict[str, Any] | None = None) -> None:
        super().__init__(f"call refused: {refusal.code}: {refusal.message}")
        self.refusal = refusal
        self.reply = reply or {}


def gst_turn_servers(ice_servers: Iterable[dict[str, Any]]) -> tuple[str, ...]:
    """The ``turn:``/``turns:`` entries of a ``ready`` message's ``ice_servers`` in webrtcbin's form
    (``turn://user:password@host:port?transport=udp``, the credentials percent-encoded: the
    username holds a ':'), as the server gives its own webrtcbin."""
    found: list[str] = []
    for server in ice_servers:
        user, password = server.get("username"), server.get("credential")
        if not (user and password):
            continue
        userinfo = f"{quote(user, safe='')}:{quote(password, safe='')}@"
        for url in server.get("urls", []):
            scheme, _, rest = url.partition(":")
            if scheme in ("turn", "turns"):
                found.append(f"{scheme}://{userinfo}{rest.removeprefix('//')}")
    return tuple(found)


@dataclass
class Window:
    """Received audio over the measured window."""

    measuring: bool = False
    samples: int = 0
    gaps: int = 0
    longest_gap_s: float = 0.0
    last_arrival: float | None = None


@dataclass
class BenchCall:
    """One call: its WebSocket, its peer, and the ``PeerListener`` side (GStreamer threads)."""

    loop: asyncio.AbstractEventLoop
    ws: aiohttp.ClientWebSocketResponse
    peer: WebRtcPeer | None = None
    outgoing: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    converting: asyncio.Event = field(default_factory=asyncio.Event)
    window: Window = field(default_factory=Window)
    lock: threading.Lock = field(default_factory=threading.Lock)
    errors: list[str] = field(default_factory=list)
    #: the server's ``error`` messages as sent (code, fatal, retry_after_s ...)
    server_errors: list[dict[str, Any]] = field(default_factory=list)
    #: the server's latest ``stats`` message, and the one when the window opened
    stats: dict[str, Any] = field(default_factory=dict)
    stats_at_start: dict[str, Any] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    #: the server's ``ready`` message (engine, voices, settings)
    welcome: dict[str, Any] = field(default_factory=dict)
    #: the latest WebRTC states of both ends and the signalling seen, for a report when a call fails
    states: dict[str, str] = field(default_factory=dict)
    #: make the call through the TURN server the ``ready`` message names, relay candidates only
    relay_only: bool = False
    #: the server's ``draining`` message once one came
    draining: asyncio.Event = field(default_factory=asyncio.Event)
    draining_message: dict[str, Any] = field(default_factory=dict)
    #: set when the signalling WebSocket is gone; ``end_reason`` says how it went
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    end_reason: str = ""
    #: when converted audio last arrived (time.perf_counter)
    last_audio: float | None = None

    # -- PeerListener ---------------------------------------------------------------------------

    def on_description(self, kind: str, sdp: str) -> None:
        self.loop.call_soon_threadsafe(self.outgoing.put_nowait, {"type": kind, "sdp": sdp})

    def on_ice_candidate(self, mline_index: int, candidate: str) -> None:
        message = {"type": "ice", "candidate": candidate, "sdpMLineIndex": mline_index}
        self.loop.call_soon_threadsafe(self.outgoing.put_nowait, message)

    def on_state(self, name: str, value: str) -> None:
        self.states[f"client {name}"] = value

    def on_audio(self, samples: Audio) -> None:
        now = time.perf_counter()
        self.last_audio = now
        if not self.converting.is_set() and np.max(np.abs(samples), initial=0.0) > 1e-3:
            self.loop.call_soon_threadsafe(self.converting.set)
        with self.lock:
            window = self.window
            if not window.measuring:
                return
            window.samples += samples.shape[0]
            if window.last_arrival is not None:
                gap = now - window.last_arrival
                window.gaps += gap > GAP_S
                window.longest_gap_s = max(window.longest_gap_s, gap)
            window.last_arrival = now

    def on_error(self, kind: str, message: str) -> None:
        self.errors.append(f"{kind}: {message}")

    # -- signalling -----------------------------------------------------------------------------

    async def send(self, kind: str, **fields: Any) -> None:
        await self.ws.send_str(json.dumps({"v": 1, "type": kind, **fields}))

    async def dial(self, voice: str) -> None:
        """Hello (reserving a place: the offer follows at once), then the offer; ``CallRefused`` when
        the server answers hello with an error."""
        await self.send("hello", reserve=True)
        message = await self.ws.receive(timeout=10)
        if message.type != aiohttp.WSMsgType.TEXT:
            raise CallRefused(Refusal("closed", f"the server closed the connection at hello: {message}"))
        ready = json.loads(message.data)
        if ready.get("type") != "ready":
            hint = ready.get("retry_after_s")
            seconds = None if hint is None else float(hint)
            raise CallRefused(Refusal(str(ready.get("code")), str(ready.get("message")), seconds), ready)
        self.welcome = ready
        config = None
        if self.relay_only:
            turn = gst_turn_servers(ready.get("ice_servers", []))
            if not turn:
                raise CallRefused(Refusal("no_turn", "relay_only, but the server names no TURN server"))
            config = PeerConfig(turn_servers=turn, relay_only=True)
        self.peer = WebRtcPeer(self, config)
        await asyncio.to_thread(self.peer.offer)
        offer = await asyncio.wait_for(self.outgoing.get(), 10)
        await self.send("offer", sdp=offer["sdp"], voice=voice)
        self.tasks = [asyncio.create_task(self._pump()), asyncio.create_task(self._read())]

    async def _pump(self) -> None:
        while True:
            message = await self.outgoing.get()
            await self.send(message.pop("type"), **message)

    async def _read(self) -> None:
        try:
            await self._read_messages()
        finally:
            if not self.end_reason:
                self.end_reason = f"connection closed (code {self.ws.close_code})"
            self.ended.set()

    async def _read_messages(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            peer = self.peer
            self.states["last message"] = str(data["type"])
            if data["type"] == "stats":
                self.stats = data
            elif data["type"] == "draining":
                self.draining_message = data
                self.draining.set()
            elif data["type"] == "bye":
                self.end_reason = f"bye: {data.get('reason')}"
            elif data["type"] == "state":
                self.states.update({f"server {k}": str(v) for k, v in data.items() if k not in ("v", "type")})
            elif data["type"] == "error":
                self.server_errors.append(data)
                self.errors.append(f"server: {data.get('code')}: {data.get('message')}")
                if data.get("fatal"):
                    self.end_reason = f"error {data.get('code')}: {data.get('message')}"
            elif peer is not None and data["type"] == "answer":
                await asyncio.to_thread(peer.accept_answer, data["sdp"])
            elif peer is not None and data["type"] == "ice" and data["candidate"] is not None:
                peer.add_ice_candidate(data["sdpMLineIndex"], data["candidate"])

    # -- the window -----------------------------------------------------------------------------

    def start_window(self) -> None:
        with self.lock:
            self.window = Window(measuring=True)
        self.stats_at_start = dict(self.stats)

    def result(self, window_s: float) -> dict[str, Any]:
        with self.lock:
            window = self.window
            window.measuring = False
        grown = {
            name: (self.stats.get(name) or 0) - (self.stats_at_start.get(name) or 0)
            for name in SERVER_COUNTERS
        }
        return {
            "expected_s": round(window_s, 3),
            "received_s": round(window.samples / OPUS_RATE, 3),
            "gaps": window.gaps,
            "longest_gap_ms": round(1000 * window.longest_gap_s, 1),
            "server": grown,
            "stats_seen": bool(self.stats),
            "errors": self.errors,
        }

    async def close(self) -> None:
        """Hang up (idempotent): the signalling tasks stop, the socket and the peer close."""
        if not self.end_reason:
            self.end_reason = "hung up"
        for task in self.tasks:
            task.cancel()
        await self.ws.close()
        if self.peer is not None and not self.peer.closed:
            await asyncio.to_thread(self.peer.close)


async def talk(calls: Callable[[], Iterable[BenchCall]], speech: Audio) -> None:
    """Feed every call ``calls()`` names (read again at each step: calls come and go) the same
    speech, looped, 20 ms at a time on the clock."""
    started = time.perf_counter()
    index = 0
    while True:
        start = (index * CHUNK) % (speech.shape[0] - CHUNK)
        chunk = speech[start : start + CHUNK]
        for call in calls():
            if call.peer is not None and not call.peer.closed:
                call.peer.push(chunk)
        index += 1
        await asyncio.sleep(max(0.0, started + index / 50 - time.perf_counter()))


def _say(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


async def run(ws_url: str, voice: str, count: int, ready_within_s: float) -> None:
    loop = asyncio.get_running_loop()
    speech = flite_speech("slt", OPUS_RATE)
    async with aiohttp.ClientSession() as http:
        calls = [BenchCall(loop, await http.ws_connect(ws_url)) for _ in range(count)]
        talking = asyncio.create_task(talk(lambda: calls, speech))
        try:
            for call in calls:
                await call.dial(voice)
            waits = [asyncio.wait_for(call.converting.wait(), ready_within_s) for call in calls]
            try:
                await asyncio.gather(*waits)
            except TimeoutError:
                failed = [
                    {"errors": c.errors, "states": c.states} for c in calls if not c.converting.is_set()
                ]
                _say({"event": "failed", "calls": failed})
                return
            _say({"event": "ready"})
            await _command("measure")
            opened = time.perf_counter()
            for call in calls:
                call.start_window()
            await _command("stop")
            window_s = time.perf_counter() - opened
            _say({"event": "result", "calls": [call.result(window_s) for call in calls]})
        finally:
            talking.cancel()
            for call in calls:
                await call.close()


async def _command(word: str) -> None:
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            raise SystemExit("the benchmark went away")
        if line.strip() == word:
            return


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ws", required=True, help="the server's signalling URL (ws://host:port/ws)")
    parser.add_argument("--voice", required=True, help="voice id to convert to")
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--ready-within", type=float, default=30.0, help="seconds for every call to convert")
    args = parser.parse_args()
    asyncio.run(run(args.ws, args.voice, args.calls, args.ready_within))


if __name__ == "__main__":
    main()
