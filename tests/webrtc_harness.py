"""Shared WebRTC test harness: a vcstream server on a real socket (aiohttp, the WORLD engine) and
``PyClient``, the Python end of a call (a ``WebRtcPeer`` that offers, driven over the signalling
WebSocket). Used by the session-leak, signalling-robustness, browser and ICE tests.
Also what those tests wait for: the server settled (no session, pipeline or descriptor left behind)
and a call converting."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web
from aiohttp.test_utils import TestServer

from conftest import Speech, write_wav
from vcstream.audio.types import Audio
from vcstream.engines.base import Engine
from vcstream.engines.world import WorldEngine
from vcstream.media.webrtc import OPUS_RATE, PeerConfig, WebRtcPeer, live_pipelines
from vcstream.service.app import create_app
from vcstream.service.config import ServiceSettings
from vcstream.service.keys import METRICS_KEY, SESSIONS_KEY
from waiting import wait_until_async

CHUNK = OPUS_RATE // 50  # 20 ms, one Opus packet


# -- a server on a real socket ----------------------------------------------------------------------


@dataclass
class Server:
    app: web.Application
    server: TestServer
    http: aiohttp.ClientSession

    @property
    def base(self) -> str:
        return f"http://{self.server.host}:{self.server.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.server.host}:{self.server.port}/ws"

    async def upload(self, path: Path, name: str, key: str | None = None) -> str:
        """The voice's id; ``key``: a tenant's API key (a server with auth required)."""
        data = await asyncio.to_thread(path.read_bytes)
        form = aiohttp.FormData()
        form.add_field("name", name)
        form.add_field("file", data, filename=path.name, content_type="audio/wav")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with self.http.post(f"{self.base}/api/voices", data=form, headers=headers) as response:
            body = await response.json()
            assert response.status == 201, body
            return str(body["id"])


@asynccontextmanager
async def serving(
    data_dir: Path,
    *,
    running: Engine | None = None,
    load_engine: bool = False,
    ready_within_s: float = 10.0,
    **settings: Any,
) -> AsyncIterator[Server]:
    """A server with the ``running`` engine handed in (default WORLD), or with ``load_engine`` the
    engine its settings name (``engine=``, ``model_cache=``...) loaded at start-up by its own loader."""
    config = ServiceSettings(port=0, data_dir=data_dir, webrtc_latency_ms=20, **settings)
    app = create_app(config, None if load_engine else running or WorldEngine())
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    http = aiohttp.ClientSession()

    async def ready() -> bool:
        async with http.get(f"http://{server.host}:{server.port}/readyz") as response:
            return response.status == 200

    try:
        # loading and warm-up run in the background after start-up
        await wait_until_async(ready, ready_within_s, "the server became ready")
        yield Server(app, server, http)
    finally:
        await http.close()
        await server.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def settled(server: Server, fds_before: int | None = None, timeout_s: float = 5.0) -> None:
    """Wait until the server has no connection and no session, every peer pipeline was finalised
    and, when given, the descriptors are back to ``fds_before`` (libnice closes its sockets a little
    after the call ends)."""

    def left_behind() -> dict[str, int]:
        gc.collect()  # pipelines are counted as they are finalised
        return {
            "connections": server.app[SESSIONS_KEY].connections,
            "sessions": server.app[METRICS_KEY].active_sessions,
            "pipelines": live_pipelines(),
            "extra fds": max(0, open_fds() - fds_before) if fds_before is not None else 0,
        }

    await wait_until_async(
        lambda: not any(left_behind().values()), timeout_s, "the server settled", state=left_behind
    )


def speech_48k(flite_speech: Speech, voice: str) -> Audio:
    samples, _ = flite_speech(voice, None, OPUS_RATE)
    return np.asarray(samples, dtype=np.float32)


def reference_wav(tmp_path: Path, flite_speech: Speech, voice: str) -> Path:
    samples, rate = flite_speech(voice, None, 16000)
    return write_wav(tmp_path / f"ref-{voice}.wav", samples, rate)


async def receive_json(ws: aiohttp.ClientWebSocketResponse, wait_s: float = 5.0) -> dict[str, Any]:
    """The next signalling message (a text frame of JSON), bounded by ``wait_s``."""
    message = await ws.receive(timeout=wait_s)
    assert message.type == aiohttp.WSMsgType.TEXT, message
    data: dict[str, Any] = json.loads(message.data)
    return data


# -- the Python end of a call -----------------------------------------------------------------------


@dataclass
class _Events:
    """PeerListener of the client: GStreamer threads -> the test's asyncio loop."""

    loop: asyncio.AbstractEventLoop
    outgoing: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    received: list[Audio] = field(default_factory=list)
    first_audio: float | None = None
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: when each packet of audio came (time.perf_counter) and its samples
    arrivals: list[tuple[float, int]] = field(default_factory=list)

    def on_description(self, kind: str, sdp: str) -> None:
        self.loop.call_soon_threadsafe(self.outgoing.put_nowait, {"type": kind, "sdp": sdp})

    def on_ice_candidate(self, mline_index: int, candidate: str) -> None:
        message = {"type": "ice", "candidate": candidate, "sdpMLineIndex": mline_index}
        self.loop.call_soon_threadsafe(self.outgoing.put_nowait, message)

    def on_state(self, name: str, value: str) -> None:
        pass

    def on_audio(self, samples: Audio) -> None:
        with self.lock:
            if self.first_audio is None and np.max(np.abs(samples), initial=0.0) > 1e-3:
                self.first_audio = time.perf_counter()
            self.received.append(samples)
            self.arrivals.append((time.perf_counter(), samples.shape[0]))

    def on_error(self, kind: str, message: str) -> None:
        self.errors.append(f"{kind}: {message}")

    def audio(self) -> Audio:
        with self.lock:
            return np.concatenate(self.received) if self.received else np.zeros(0, np.float32)

    def continuity(self, start: float, end: float) -> tuple[float, list[float]]:
        """Seconds of audio that arrived in [start, end), and every gap (s) between arrivals there,
        counting from ``start`` and up to ``end``."""
        with self.lock:
            inside = [(t, n) for t, n in self.arrivals if start <= t < end]
        times = [start, *(t for t, _ in inside), end]
        return sum(n for _, n in inside) / OPUS_RATE, [b - a for a, b in pairwise(times)]


class PyClient:
    """A call from Python: hello, offer (webrtcbin), answer, trickle ICE, audio out and back."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events = _Events(asyncio.get_running_loop())
        self.peer: WebRtcPeer | None = None
        self.ready: dict[str, Any] = {}
        self.messages: list[dict[str, Any]] = []
        self.offer_sent: float | None = None
        self._offer_sdp: str | None = None
        self._pump: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()

    async def send(self, kind: str, **fields: Any) -> None:
        await self.ws.send_str(json.dumps({"v": 1, "type": kind, **fields}))

    async def receive(self, wait_s: float = 5.0) -> dict[str, Any]:
        return await receive_json(self.ws, wait_s)

    async def hello(self, token: str | None = None) -> dict[str, Any]:
        """``token``: an access token (a server with auth required)."""
        await self.send("hello", **({"token": token} if token else {}))
        self.ready = await self.receive()
        return self.ready

    async def start(
        self, voice: str, settings: dict[str, Any] | None = None, peer_config: PeerConfig | None = None
    ) -> None:
        """Offer and let signalling run in the background (``self.messages`` collects the rest)."""
        await self.prepare_offer(peer_config)
        await self.send_offer(voice, settings)

    async def prepare_offer(self, peer_config: PeerConfig | None = None) -> None:
        """The peer and its offer, not sent yet (several callers can then offer in the same instant)."""
        self.peer = WebRtcPeer(self.events, peer_config)
        await asyncio.to_thread(self.peer.offer)
        offer = await asyncio.wait_for(self.events.outgoing.get(), 5)
        assert offer["type"] == "offer"
        self._offer_sdp = str(offer["sdp"])

    async def send_offer(self, voice: str, settings: dict[str, Any] | None = None) -> None:
        """Sends the prepared offer; signalling then runs in the background."""
        assert self._offer_sdp is not None, "prepare_offer first"
        self.offer_sent = time.perf_counter()
        await self.send(
            "offer", sdp=self._offer_sdp, voice=voice, **({"settings": settings} if settings else {})
        )
        self._pump = asyncio.create_task(self._pump_candidates())
        self._reader = asyncio.create_task(self._read())

    async def dial(
        self, voice: str, settings: dict[str, Any] | None = None, token: str | None = None
    ) -> None:
        """Hello, then the offer: the call is under way (``start``)."""
        await self.hello(token)
        await self.start(voice, settings)

    async def talk_until_converted(self, samples: Audio, timeout_s: float = 10.0) -> float:
        """Talk until the first converted audio comes back (a failure if it does not); returns when
        it came (``time.perf_counter``)."""
        await self.talk(samples, lambda: self.events.first_audio is not None, timeout_s)
        assert self.events.first_audio is not None, self.messages
        return self.events.first_audio

    async def _pump_candidates(self) -> None:
        while True:
            message = await self.events.outgoing.get()
            await self.send(message.pop("type"), **message)

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                data = json.loads(message.data)
                self.messages.append(data)
                peer = self.peer
                if peer is None:
                    continue
                if data["type"] == "answer":
                    await asyncio.to_thread(peer.accept_answer, data["sdp"])
                elif data["type"] == "ice" and data["candidate"] is not None:
                    peer.add_ice_candidate(data["sdpMLineIndex"], data["candidate"])
        finally:
            self.closed.set()

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    async def converting(self, timeout_s: float = 10.0) -> None:
        """Wait for the first converted audio (the call connected and the engine runs)."""
        await wait_until_async(
            lambda: self.events.first_audio is not None,
            timeout_s,
            "converted audio arrived",
            state=lambda: {"messages": self.messages[-3:], "errors": self.events.errors},
        )

    async def talk(self, samples: Audio, until: Callable[[], bool], timeout_s: float) -> None:
        """Send ``samples`` in real time (looped) until ``until()`` or ``timeout_s``."""
        assert self.peer is not None
        started = time.perf_counter()
        for index in range(int(timeout_s * 50)):
            if until():
                return
            start = (index * CHUNK) % (samples.shape[0] - CHUNK)
            self.peer.push(samples[start : start + CHUNK])
            # pace on the clock, not on sleep alone, so slow iterations do not stretch the audio
            await asyncio.sleep(max(0.0, started + (index + 1) / 50 - time.perf_counter()))

    async def close(self) -> None:
        for task in (self._pump, self._reader):
            if task is not None:
                task.cancel()
        if not self.ws.closed:
            await self.ws.close()
        if self.peer is not None:
            await asyncio.to_thread(self.peer.close)
            self.peer = None


@asynccontextmanager
async def client(server: Server) -> AsyncIterator[PyClient]:
    ws = await server.http.ws_connect(server.ws_url)
    connection = PyClient(ws)
    try:
        yield connection
    finally:
        await connection.close()
