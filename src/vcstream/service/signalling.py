"""WebSocket signalling at ``/ws`` and the WebRTC conversion sessions behind it.

Protocol v1
===========

Every message is one JSON object in one text frame, with ``"v": 1`` and a ``"type"``. The browser
makes the offer; ICE candidates trickle both ways. Frames above 64 KiB, binary frames, invalid JSON,
unknown types and out-of-order messages each get an ``error`` and never affect other connections.

Client -> server
  ``hello``     ``{}``, within 10 s of connecting. The server answers ``ready`` (or ``error``
                ``server_full``/``server_draining``/``server_not_ready`` and closes). A connection
                without a call is closed (``error`` ``timeout``) after 10 minutes without a message.
  ``offer``     ``{"sdp": "v=0...", "voice": "<voice id>", "settings": {...}?}``: starts the session
                (audio only, Opus, sendrecv). Answered with ``answer``; one offer per connection (no
                renegotiation: voice and settings change without it).
  ``ice``       ``{"candidate": "candidate:...", "sdpMLineIndex": 0}``; ``"candidate": null`` marks the
                end of the client's candidates. Only after ``offer``.
  ``voice``     ``{"voice": "<voice id>"}``: choose the voice, or switch it mid-call; the switch takes
                effect from the next block. Acknowledged with ``voice`` ``{"voice", "name"}``.
  ``settings``  ``{"settings": {"block_time": 0.2, "diffusion_steps": 10}}``: keys from the
                ``settings_schema`` of ``ready``; a change mid-call re-opens the engine session (never
                renegotiates). Acknowledged with ``settings`` ``{"settings": {...all current}}``.
  ``bye``       ``{}``: end the session; the server answers ``bye`` and closes the socket.

Server -> client
  ``ready``     ``{"session", "ice_servers": [RTCIceServer...], "engine": {"name", "note", "cpu_fallback",
                "device", "sample_rate"}, "voices": [{"id", "name", "duration_s"}], "settings": {...},
                "settings_schema": {"block_time": {"type", "unit", "min", "max", "step", "default"},
                ...}, "max_message_bytes", "stats_interval_s"}``. TURN entries carry time-limited
                credentials (coturn's REST scheme, see ``vcstream.service.ice``).
  ``answer``    ``{"sdp"}``.
  ``ice``       ``{"candidate", "sdpMLineIndex"}``; ``"candidate": null`` once the server gathered all.
  ``state``     ``{"connection"|"ice"|"gathering": "<state>"}``: the server side's WebRTC states.
  ``stats``     every ``stats_interval_s``: ``latency_ms`` (estimate, below), ``algorithmic_ms``,
                ``inference_ms`` (median) and ``inference_ms_p95``, ``block_ms``, ``backlog_ms``,
                ``blocks``, ``output_ms`` (converted audio sent), ``late_blocks``, ``dropped_ms``,
                ``drop_events``, ``engine_errors``, ``rtt_ms``, ``jitter_ms`` (of the audio the server
                receives), ``remote_jitter_ms`` and ``remote_packets_lost`` (the client's reports on the
                audio it receives),
                ``bitrate_in_kbps``, ``bitrate_out_kbps``, and ``timeline`` (ms from the offer to the
                answer, to the connection, to the first audio in and the first converted audio out).
  ``voice``, ``settings``: acknowledgements (above).
  ``error``     ``{"code", "message", "fatal"}``; after a fatal one the server closes the socket.
  ``bye``       ``{"reason": "client"|"shutdown"|...}``, then the socket closes.

Error codes: ``bad_json``, ``bad_message``, ``unsupported_version``, ``unknown_type``,
``message_too_large``, ``rate_limited``, ``unexpected`` (out of order), ``bad_sdp``, ``bad_candidate``,
``too_many_candidates``, ``no_call``, ``voice_required``, ``voice_not_found``, ``voice_unusable``,
``bad_settings``, ``renegotiation_unsupported``, ``server_full``, ``server_draining``,
``server_not_ready``, ``timeout``, ``ice_failed``, ``media_error``, ``engine_error``, ``internal_error``.

``latency_ms`` estimates mouth-to-ear delay outside the browser: the round-trip time (one way in, one
way out), the server's jitter buffer (``webrtc_latency_ms``), one Opus frame, the stream's algorithmic
latency (block filling, engine look-ahead, resampling), median inference time and the backlog waiting
for the engine. The browser adds its own capture and playout buffers (the client shows them).

Threads
=======

The asyncio loop runs this module's handlers; GStreamer's threads report WebRTC events through
``AsyncioBridge`` (one per application, captured at start-up); decoded audio goes from the GStreamer
streaming thread straight into the session's ``LiveSession`` (its own worker thread runs the engine),
whose output goes straight into the peer's appsrc. Blocking GStreamer calls (state changes, teardown,
statistics) run in the registry's thread pool. Inference never runs on the asyncio or the GLib thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

from aiohttp import WSMsgType, web

from vcstream.audio.types import Audio
from vcstream.engines.base import Engine, VoiceProfile
from vcstream.engines.settings import SessionSettings, SettingsError
from vcstream.errors import VcstreamError
from vcstream.media.mainloop import AsyncioBridge, GLibLoop
from vcstream.media.webrtc import (
    OPUS_RATE,
    InvalidSdpError,
    PeerConfig,
    WebRtcPeer,
    opus_payload_type,
    prepare,
)
from vcstream.service.health import STATE_KEY, session_refusal
from vcstream.service.ice import ice_servers
from vcstream.service.keys import (
    DEFAULTS_KEY,
    ENGINE_KEY,
    METRICS_KEY,
    SESSIONS_KEY,
    SETTINGS_KEY,
    VOICES_KEY,
)
from vcstream.service.metrics import ServiceMetrics
from vcstream.service.openapi import error, operation, reply
from vcstream.service.voices import VoiceNotFoundError
from vcstream.streaming.converter import StreamConverter
from vcstream.streaming.live import LiveSession

__all__ = [
    "MAX_MESSAGE_BYTES",
    "PROTOCOL_VERSION",
    "SessionRegistry",
    "SignallingError",
    "settings_schema",
    "setup",
]

log = logging.getLogger(__name__)
#: the protocol section of this docstring, served as /ws's description in the OpenAPI document
_PROTOCOL = (
    (__doc__ or "").partition("Protocol v1\n===========\n")[2].partition("Threads\n=======")[0].strip()
)

T = TypeVar("T")

PROTOCOL_VERSION = 1
#: largest message accepted (an SDP offer is 3-6 KB); larger ones get an error and a close
MAX_MESSAGE_BYTES = 64 * 1024
#: aiohttp's own cap, above ours so that we can answer with an error before closing
_FRAME_LIMIT = 1 << 20
STATS_INTERVAL_S = 1.0
#: a connection must say hello within this time of opening
HELLO_TIMEOUT_S = 10.0
#: a connection without a call is closed after this long without a message (a page left open)
IDLE_TIMEOUT_S = 600.0
#: ICE and DTLS must complete within this time of the answer
CONNECT_TIMEOUT_S = 20.0
#: a call whose connection stays ``disconnected`` this long is ended
DISCONNECTED_GRACE_S = 8.0
#: messages waiting for a client that does not read; beyond this it is disconnected
OUTBOX_LIMIT = 256
#: message rate allowed per connection: a steady rate and a burst (token bucket)
RATE_PER_S, RATE_BURST = 50.0, 200.0
MAX_REMOTE_CANDIDATES = 100
MAX_CANDIDATE_CHARS = 1024
#: the Opus frame the server sends (ms): part of the latency estimate
OPUS_FRAME_MS = 20
#: after a shutdown ``bye``, how long connections get to close before they are abandoned
_SHUTDOWN_WAIT_S = 10.0
_WORKERS = 8


class SignallingError(VcstreamError):
    """A message that cannot be acted on; becomes an ``error`` reply (and a close when fatal)."""

    def __init__(self, code: str, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.code, self.message, self.fatal = code, message, fatal


# -- settings ---------------------------------------------------------------------------------------


def settings_schema(defaults: SessionSettings) -> dict[str, dict[str, Any]]:
    """The per-session settings a client may change, with their ranges and defaults."""
    return defaults.schema(per_call_only=True)


def validate_settings(raw: object, current: SessionSettings) -> SessionSettings:
    """``current`` with the client's changes applied; every refusal is a ``bad_settings``."""
    if raw is None:
        return current
    if not isinstance(raw, dict):
        raise SignallingError("bad_settings", "settings must be an object")
    try:
        return current.updated(raw, per_call_only=True)
    except SettingsError as exc:
        raise SignallingError("bad_settings", str(exc)) from exc


# -- the call: peer + live session ------------------------------------------------------------------


@dataclass
class _Reported:
    """What has been passed to the metrics already (counters are cumulative)."""

    live: LiveSession | None = None
    late: int = 0
    dropped_blocks: int = 0
    bytes_in: float = 0.0
    bytes_out: float = 0.0
    at: float = field(default_factory=time.monotonic)


class Call:
    """One WebRTC session: a ``WebRtcPeer`` and the ``LiveSession`` converting between its directions.

    Built and closed in the registry's thread pool (``open``/``close`` block). PeerListener methods run
    on GStreamer threads: audio is fed to the live session there, events are handed to the asyncio
    loop.
    """

    def __init__(
        self,
        name: str,
        engine: Engine,
        voice: VoiceProfile,
        settings: SessionSettings,
        metrics: ServiceMetrics,
        to_loop: Callable[..., None],
        events: CallEvents,
        started: float | None = None,
    ) -> None:
        self.name = name
        self.engine = engine
        self.voice = voice
        self.settings = settings
        self.metrics = metrics
        self._to_loop = to_loop
        self._events = events
        self.live: LiveSession | None = None
        self.peer: WebRtcPeer | None = None
        #: serialises swapping the live session (settings) against closing
        self._lock = threading.Lock()
        self._closed = False
        #: perf_counter time of the offer: the timeline counts from it
        self.started = time.perf_counter() if started is None else started
        #: ms from the offer to: answer, connected, first_audio_in, first_audio_out
        self.timeline: dict[str, float] = {}

    @classmethod
    def open(
        cls,
        name: str,
        engine: Engine,
        voice: VoiceProfile,
        settings: SessionSettings,
        metrics: ServiceMetrics,
        to_loop: Callable[..., None],
        events: CallEvents,
        peer_config: PeerConfig,
        started: float | None = None,
    ) -> Call:
        """Open the engine session and the peer (blocking)."""
        call = cls(name, engine, voice, settings, metrics, to_loop, events, started)
        call.live = call._new_live(call.settings)
        try:
            call.peer = WebRtcPeer(call, peer_config, name=name)
        except BaseException:
            call.live.stop()
            raise
        return call

    def _new_live(self, settings: SessionSettings) -> LiveSession:
        converter = StreamConverter(
            self.engine, self.voice, OPUS_RATE, settings, on_block=self.metrics.observe_inference
        )
        return LiveSession(converter, self._on_output, name=self.name)

    def _mark(self, event: str) -> None:
        if event not in self.timeline:
            self.timeline[event] = 1000 * (time.perf_counter() - self.started)

    # -- PeerListener (GStreamer threads) ---------------------------------------------------------

    def on_description(self, kind: str, sdp: str) -> None:
        self._mark("answer")
        self._to_loop(self._events.on_answer, sdp)

    def on_ice_candidate(self, mline_index: int, candidate: str) -> None:
        self._to_loop(self._events.on_local_candidate, mline_index, candidate)

    def on_state(self, name: str, value: str) -> None:
        if name == "connection" and value == "connected":
            self._mark("connected")
        self._to_loop(self._events.on_peer_state, name, value)

    def on_audio(self, samples: Audio) -> None:
        live = self.live
        if live is not None:
            if "first_audio_in" not in self.timeline:
                self._mark("first_audio_in")
            live.feed(samples)

    def on_error(self, kind: str, message: str) -> None:
        self._to_loop(self._events.on_peer_error, kind, message)

    # -- LiveSession output (its worker thread) ---------------------------------------------------

    def _on_output(self, samples: Audio) -> None:
        peer = self.peer
        if peer is not None and peer.push(samples) and "first_audio_out" not in self.timeline:
            self._mark("first_audio_out")

    # -- control (registry pool threads) ----------------------------------------------------------

    def set_voice(self, voice: VoiceProfile) -> None:
        with self._lock:
            self.voice = voice
            if self.live is not None:
                self.live.set_voice(voice)

    def reopen(self, settings: SessionSettings) -> None:
        """New engine settings: a new engine session and worker, same peer (no renegotiation)."""
        with self._lock:
            if self._closed:
                return
            replacement = self._new_live(settings)
            old, self.live = self.live, replacement
            self.settings = settings
        if old is not None:
            old.stop()

    def sample(
        self, stats_timeout_s: float = 0.5
    ) -> tuple[LiveSession | None, dict[str, Any], dict[str, float]]:
        live, peer = self.live, self.peer
        snapshot = live.snapshot() if live is not None else {}
        return live, snapshot, peer.stats(stats_timeout_s) if peer is not None else {}

    def close(self) -> None:
        """Stop media first (no more input), then the worker and engine session."""
        with self._lock:
            self._closed = True
            peer, self.peer = self.peer, None
            live, self.live = self.live, None
        try:
            if peer is not None:
                peer.close()
        finally:
            if live is not None:
                live.stop()


class CallEvents(Protocol):
    """What a ``Call`` reports, called on the asyncio loop (``Connection`` implements it)."""

    def on_answer(self, sdp: str) -> None: ...

    def on_local_candidate(self, mline_index: int, candidate: str) -> None: ...

    def on_peer_state(self, name: str, value: str) -> None: ...

    def on_peer_error(self, kind: str, message: str) -> None: ...


# -- one WebSocket connection ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Close:
    code: int
    reason: str


class Connection:
    """The signalling state of one WebSocket: ``new`` -> ``ready`` (hello) -> ``calling`` (offer)."""

    def __init__(self, registry: SessionRegistry, app: web.Application, ws: web.WebSocketResponse) -> None:
        self.registry = registry
        self.app = app
        self.ws = ws
        self.id = secrets.token_hex(6)
        self.state = "new"
        self.call: Call | None = None
        #: the call being opened in the pool (until it is assigned to ``call``)
        self._opening: asyncio.Future[Call] | None = None
        self.voice_id: str | None = None
        self.settings: SessionSettings = app[DEFAULTS_KEY]
        self._outbox: asyncio.Queue[dict[str, Any] | _Close] = asyncio.Queue()
        self._closing = False
        self._tokens = RATE_BURST
        self._tokens_at = time.monotonic()
        self._remote_candidates = 0
        self._started_session = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._disconnected: asyncio.TimerHandle | None = None
        self._connect_timer: asyncio.TimerHandle | None = None
        self._engine_errors = 0
        self._reported = _Reported()
        self.done = asyncio.Event()
        self._handlers: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
            "hello": self._hello,
            "offer": self._offer,
            "ice": self._ice,
            "voice": self._voice,
            "settings": self._settings,
            "bye": self._bye,
        }

    @property
    def metrics(self) -> ServiceMetrics:
        return self.app[METRICS_KEY]

    # -- sending ----------------------------------------------------------------------------------

    def send(self, kind: str, **fields: Any) -> None:
        if self._closing:
            return
        if self._outbox.qsize() >= OUTBOX_LIMIT:
            log.warning("connection %s: client does not read its messages; closing", self.id)
            self.close(1008, "not reading")
            return
        self._outbox.put_nowait({"v": PROTOCOL_VERSION, "type": kind, **fields})

    def send_error(self, code: str, message: str, *, fatal: bool = False) -> None:
        self.send("error", code=code, message=message, fatal=fatal)
        if fatal:
            self.close(1008 if code not in ("internal_error", "media_error") else 1011, code)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close after the messages already queued (idempotent)."""
        if not self._closing:
            self._closing = True
            self._outbox.put_nowait(_Close(code, reason))

    async def _send_loop(self) -> None:
        while True:
            item = await self._outbox.get()
            if isinstance(item, _Close):
                await self.ws.close(code=item.code, message=item.reason.encode()[:120])
                return
            try:
                await self.ws.send_str(json.dumps(item, separators=(",", ":")))
            except (ConnectionError, RuntimeError) as exc:  # the client is gone
                log.debug("connection %s: send failed: %s", self.id, exc)
                self._closing = True
                return

    # -- receiving --------------------------------------------------------------------------------

    async def run(self) -> None:
        sender = asyncio.create_task(self._send_loop(), name=f"ws-send-{self.id}")
        last = time.monotonic()
        try:
            while not self._closing and not self.ws.closed:
                # during a call the WebSocket heartbeat and ICE watch the client; before, time does
                timeout = None
                if self.state != "calling":
                    limit = HELLO_TIMEOUT_S if self.state == "new" else IDLE_TIMEOUT_S
                    timeout = limit - (time.monotonic() - last)
                    if timeout <= 0:
                        what = "no hello" if self.state == "new" else "no call"
                        self.send_error("timeout", f"{what} within {limit:g} s: closing", fatal=True)
                        break
                try:
                    message = await self.ws.receive(timeout=timeout)
                except TimeoutError:
                    continue  # the deadline check above answers
                last = time.monotonic()
                if message.type == WSMsgType.TEXT:
                    await self._dispatch(message.data)
                elif message.type == WSMsgType.BINARY:
                    await self._dispatch(None)
                elif message.type == WSMsgType.ERROR:
                    log.info("connection %s: %s", self.id, self.ws.exception())
                    break
                else:  # CLOSE, CLOSING, CLOSED
                    break
        finally:
            # nothing here may be skipped when the handler is cancelled (client gone): the teardown
            # is scheduled first, synchronously, on a task the registry owns
            self._cancel_timers()
            for task in list(self._tasks):
                task.cancel()
            retiring = self._retire()
            self.close(1000, "")
            try:
                if retiring is not None:
                    await asyncio.shield(retiring)
                await asyncio.wait_for(sender, 5.0)
            except (TimeoutError, ConnectionError, RuntimeError):
                sender.cancel()
            except asyncio.CancelledError:
                sender.cancel()
                raise
            finally:
                self.done.set()

    def _limit_rate(self) -> None:
        now = time.monotonic()
        self._tokens = min(RATE_BURST, self._tokens + (now - self._tokens_at) * RATE_PER_S)
        self._tokens_at = now
        self._tokens -= 1
        if self._tokens < 0:
            raise SignallingError("rate_limited", "too many messages", fatal=True)

    async def _dispatch(self, text: str | None) -> None:
        """Handle one text frame (None: a binary frame); every failure becomes an ``error``."""
        kind: object = "?"
        try:
            self._limit_rate()
            if text is None:
                raise SignallingError("bad_message", "binary frames are not part of the protocol")
            if len(text) > MAX_MESSAGE_BYTES:
                raise SignallingError(
                    "message_too_large", f"messages are limited to {MAX_MESSAGE_BYTES} bytes", fatal=True
                )
            try:
                data = json.loads(text)
            except ValueError as exc:
                raise SignallingError("bad_json", f"the message is not JSON: {exc}") from exc
            if not isinstance(data, dict):
                raise SignallingError("bad_message", "a message is a JSON object")
            if data.get("v") != PROTOCOL_VERSION:
                raise SignallingError(
                    "unsupported_version", f'this server speaks protocol v{PROTOCOL_VERSION} ("v": 1)'
                )
            kind = data.get("type")
            handler = self._handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise SignallingError("unknown_type", f"unknown message type {str(kind)[:40]!r}")
            await handler(data)
        except SignallingError as exc:
            self.send_error(exc.code, exc.message, fatal=exc.fatal)
        except Exception:
            log.exception("connection %s: handling %r failed", self.id, kind)
            self.send_error("internal_error", "the server could not handle this message (logged)", fatal=True)

    # -- handlers ---------------------------------------------------------------------------------

    def _refusal(self) -> SignallingError | None:
        if self.registry.closing:
            return SignallingError("server_draining", "the server is shutting down", fatal=True)
        refused = session_refusal(self.app)
        if refused is None:
            return None
        reason, message = refused
        self.metrics.session_failed(reason)
        code = {"full": "server_full", "draining": "server_draining"}.get(reason, "server_not_ready")
        return SignallingError(code, message, fatal=True)

    async def _hello(self, data: dict[str, Any]) -> None:
        if self.state != "new":
            raise SignallingError("unexpected", "hello was already received")
        refusal = self._refusal()
        if refusal is not None:
            raise refusal
        app = self.app
        settings, state, engine = app[SETTINGS_KEY], app[STATE_KEY], app[ENGINE_KEY]
        voices = await app[VOICES_KEY].list()
        self.state = "ready"
        self.send(
            "ready",
            session=self.id,
            ice_servers=ice_servers(settings, f"vcstream-{self.id}").for_browser(),
            engine={
                "name": engine.name,
                "note": state.engine_note,
                "cpu_fallback": state.cpu_fallback,
                "device": str(engine.describe().get("device", "cpu")),
                "sample_rate": engine.sample_rate,
            },
            voices=[{"id": v.id, "name": v.name, "duration_s": round(v.duration_s, 2)} for v in voices],
            settings=self.settings.values(per_call_only=True),
            settings_schema=settings_schema(self.settings),
            max_message_bytes=MAX_MESSAGE_BYTES,
            stats_interval_s=STATS_INTERVAL_S,
        )

    async def _profile(self, voice_id: object) -> tuple[str, VoiceProfile]:
        if not isinstance(voice_id, str) or not voice_id:
            raise SignallingError("voice_required", 'choose a voice ("voice": a voice id from the library)')
        library = self.app[VOICES_KEY]
        try:
            info = await library.get(voice_id)
            return info.name, await library.profile(voice_id)
        except VoiceNotFoundError as exc:
            raise SignallingError("voice_not_found", str(exc)) from exc
        except VcstreamError as exc:
            raise SignallingError("voice_unusable", f"the voice cannot be used: {exc}") from exc

    async def _offer(self, data: dict[str, Any]) -> None:
        if self.state == "new":
            raise SignallingError("unexpected", "send hello before the offer")
        if self.state == "calling":
            raise SignallingError(
                "renegotiation_unsupported", "one offer per connection: change voice or settings instead"
            )
        offered_at = time.perf_counter()
        sdp = data.get("sdp")
        try:
            opus_payload_type(sdp)
        except InvalidSdpError as exc:
            raise SignallingError("bad_sdp", str(exc)) from exc
        settings = validate_settings(data.get("settings"), self.settings)
        voice_id = data.get("voice", self.voice_id)
        _, profile = await self._profile(voice_id)
        if self._closing:
            return
        refusal = self._refusal()
        if refusal is not None:
            raise refusal
        # no await between the admission check and counting the session (health.session_refusal)
        self.metrics.session_started()
        self._started_session = True
        self.state = "calling"
        self.voice_id, self.settings = str(voice_id), settings
        registry, app = self.registry, self.app
        config = registry.peer_config(self.id)
        try:
            self._opening = asyncio.ensure_future(
                registry.blocking(
                    Call.open,
                    f"session-{self.id}",
                    app[ENGINE_KEY],
                    profile,
                    settings,
                    self.metrics,
                    registry.to_loop,
                    self,
                    config,
                    offered_at,
                )
            )
            # shielded: if this handler is cancelled, the registry still closes what gets opened
            call = await asyncio.shield(self._opening)
        except Exception as exc:
            self.metrics.session_failed("engine")
            log.exception("connection %s: the session could not be opened", self.id)
            raise SignallingError(
                "engine_error", f"the session could not be opened: {exc}", fatal=True
            ) from exc
        self.call = call
        assert call.peer is not None
        try:
            await registry.blocking(call.peer.answer, sdp)
        except InvalidSdpError as exc:
            self.metrics.session_failed("sdp")
            raise SignallingError("bad_sdp", str(exc), fatal=True) from exc
        except VcstreamError as exc:
            self.metrics.session_failed("media")
            raise SignallingError("media_error", str(exc), fatal=True) from exc
        loop = asyncio.get_running_loop()
        self._connect_timer = loop.call_later(CONNECT_TIMEOUT_S, self._connect_timeout)
        self._spawn(self._stats_loop(call), "stats")
        log.info("connection %s: session started (voice %s, %s)", self.id, voice_id, settings.values())

    async def _ice(self, data: dict[str, Any]) -> None:
        call = self.call
        if call is None or call.peer is None:
            raise SignallingError("no_call", "send the offer before ICE candidates")
        candidate = data.get("candidate")
        if candidate is None:
            return  # the client's end of candidates: webrtcbin needs no notice
        mline = data.get("sdpMLineIndex", 0)
        if (
            not isinstance(candidate, str)
            or len(candidate) > MAX_CANDIDATE_CHARS
            or not candidate.removeprefix("a=").startswith("candidate:")
        ):
            raise SignallingError("bad_candidate", "an ICE candidate is a 'candidate:...' string")
        if isinstance(mline, bool) or not isinstance(mline, int) or not 0 <= mline < 16:
            raise SignallingError("bad_candidate", "sdpMLineIndex must be a small integer")
        self._remote_candidates += 1
        if self._remote_candidates > MAX_REMOTE_CANDIDATES:
            raise SignallingError("too_many_candidates", f"at most {MAX_REMOTE_CANDIDATES} candidates")
        if "".join(candidate.split()) == "":
            return
        call.peer.add_ice_candidate(mline, candidate.removeprefix("a="))

    async def _voice(self, data: dict[str, Any]) -> None:
        if self.state == "new":
            raise SignallingError("unexpected", "send hello first")
        voice_id = data.get("voice")
        name, profile = await self._profile(voice_id)
        self.voice_id = str(voice_id)
        call = self.call
        if call is not None:
            await self.registry.blocking(call.set_voice, profile)
        self.send("voice", voice=voice_id, name=name)

    async def _settings(self, data: dict[str, Any]) -> None:
        if self.state == "new":
            raise SignallingError("unexpected", "send hello first")
        raw = data.get("settings")
        if raw is None:
            raise SignallingError("bad_settings", "'settings' is missing")
        merged = validate_settings(raw, self.settings)
        call = self.call
        if call is not None and merged != call.settings:
            try:
                await self.registry.blocking(call.reopen, merged)
            except VcstreamError as exc:
                raise SignallingError("bad_settings", f"the engine refused the settings: {exc}") from exc
        self.settings = merged
        self.send("settings", settings=merged.values(per_call_only=True))

    async def _bye(self, data: dict[str, Any]) -> None:
        self.send("bye", reason="client")
        self.close(1000, "bye")

    # -- events from the call (asyncio loop) -------------------------------------------------------

    def on_answer(self, sdp: str) -> None:
        self.send("answer", sdp=sdp)

    def on_local_candidate(self, mline_index: int, candidate: str) -> None:
        self.send("ice", candidate=candidate, sdpMLineIndex=mline_index)

    def on_peer_state(self, name: str, value: str) -> None:
        if self.call is None:
            return
        self.send("state", **{name: value})
        if name == "gathering" and value == "complete":
            self.send("ice", candidate=None, sdpMLineIndex=0)
        if name != "connection":
            return
        if value == "connected":
            for timer in (self._connect_timer, self._disconnected):
                if timer is not None:
                    timer.cancel()
            self._connect_timer = self._disconnected = None
        elif value == "failed":
            self.metrics.session_failed("ice")
            self.send_error("ice_failed", "the WebRTC connection failed (ICE/DTLS)", fatal=True)
        elif value == "disconnected" and self._disconnected is None:
            self._disconnected = asyncio.get_running_loop().call_later(
                DISCONNECTED_GRACE_S, self._disconnected_too_long
            )

    def on_peer_error(self, kind: str, message: str) -> None:
        if self.call is None:
            return
        if kind == "negotiation":  # webrtcbin refused the offer: the client's description is at fault
            self.metrics.session_failed("sdp")
            self.send_error("bad_sdp", message, fatal=True)
        else:
            self.metrics.session_failed("media")
            self.send_error("media_error", message, fatal=True)

    def _connect_timeout(self) -> None:
        self._connect_timer = None
        self.metrics.session_failed("ice")
        self.send_error("ice_failed", f"no WebRTC connection within {CONNECT_TIMEOUT_S:g} s", fatal=True)

    def _disconnected_too_long(self) -> None:
        self._disconnected = None
        self.metrics.session_failed("ice")
        self.send_error("ice_failed", f"disconnected for {DISCONNECTED_GRACE_S:g} s", fatal=True)

    def _cancel_timers(self) -> None:
        for timer in (self._connect_timer, self._disconnected):
            if timer is not None:
                timer.cancel()
        self._connect_timer = self._disconnected = None

    def shutdown(self, reason: str) -> None:
        self.send("bye", reason=reason)
        self.close(1001, reason)

    # -- statistics -------------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(f"{name}-{self.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stats_loop(self, call: Call) -> None:
        latency_ms = self.app[SETTINGS_KEY].webrtc_latency_ms
        while self.call is call and not self._closing:
            await asyncio.sleep(STATS_INTERVAL_S)
            if self.call is not call:
                return
            live, snapshot, peer = await self.registry.blocking(call.sample)
            if not snapshot:
                continue
            self.send("stats", **self._stats_message(call, live, snapshot, peer, latency_ms))

    def _stats_message(
        self,
        call: Call,
        live: LiveSession | None,
        snap: dict[str, Any],
        peer: dict[str, float],
        webrtc_latency_ms: int,
    ) -> dict[str, Any]:
        reported, metrics, now = self._reported, self.metrics, time.monotonic()
        if reported.live is not live:  # settings re-opened the session: its counters start at 0
            reported.live, reported.late, reported.dropped_blocks = live, 0, 0
        block = max(1, round(snap["block_ms"] * OPUS_RATE / 1000))
        dropped_blocks = snap["dropped_samples"] // block
        metrics.blocks_late(snap["late_blocks"] - reported.late)
        metrics.blocks_dropped(dropped_blocks - reported.dropped_blocks)
        reported.late, reported.dropped_blocks = snap["late_blocks"], dropped_blocks
        elapsed = max(1e-3, now - reported.at)
        bytes_in, bytes_out = (
            peer.get("bytes_received", reported.bytes_in),
            peer.get("bytes_sent", reported.bytes_out),
        )
        rate_in = 8 * max(0.0, bytes_in - reported.bytes_in) / elapsed / 1000
        rate_out = 8 * max(0.0, bytes_out - reported.bytes_out) / elapsed / 1000
        metrics.bytes_in(int(bytes_in - reported.bytes_in))
        metrics.bytes_out(int(bytes_out - reported.bytes_out))
        reported.bytes_in, reported.bytes_out, reported.at = bytes_in, bytes_out, now
        inference = snap.get("inference_ms_p50") or 0.0
        rtt = peer.get("rtt_ms")
        latency = (
            snap["algorithmic_latency_ms"]
            + inference
            + snap["backlog_ms"]
            + webrtc_latency_ms
            + OPUS_FRAME_MS
            + (rtt or 0.0)
        )
        if snap["blocks"]:
            metrics.observe_latency(latency / 1000)
        if snap["errors"] > self._engine_errors:
            self._engine_errors = snap["errors"]
            self.send("error", code="engine_error", message="the engine failed on a block", fatal=False)

        def r(value: float | None) -> float | None:
            return None if value is None else round(float(value), 2)

        return {
            "latency_ms": r(latency),
            "algorithmic_ms": r(snap["algorithmic_latency_ms"]),
            "inference_ms": r(snap.get("inference_ms_p50")),
            "inference_ms_p95": r(snap.get("inference_ms_p95")),
            "block_ms": r(snap["block_ms"]),
            "backlog_ms": r(snap["backlog_ms"]),
            "blocks": snap["blocks"],
            "output_ms": r(1000 * snap["samples_out"] / OPUS_RATE),
            "late_blocks": snap["late_blocks"],
            "dropped_ms": r(snap["dropped_ms"]),
            "drop_events": snap["drop_events"],
            "engine_errors": snap["errors"],
            "rtt_ms": r(rtt),
            "jitter_ms": r(peer.get("jitter_ms")),
            "remote_jitter_ms": r(peer.get("remote_jitter_ms")),
            "remote_packets_lost": peer.get("remote_packets_lost"),
            "bitrate_in_kbps": r(rate_in),
            "bitrate_out_kbps": r(rate_out),
            "webrtc_latency_ms": webrtc_latency_ms,
            # dict() copies atomically; streaming threads may add to it meanwhile
            "timeline": {k: round(v, 1) for k, v in dict(call.timeline).items()},
        }

    # -- teardown ---------------------------------------------------------------------------------

    def _retire(self) -> asyncio.Task[None] | None:
        """Hand the call (or the one being opened) to the registry to close; None if there is none."""
        target: Call | asyncio.Future[Call] | None = self.call or self._opening
        self.call, self._opening = None, None
        started, self._started_session = self._started_session, False
        if target is None and not started:
            return None
        return self.registry.retire(self.id, target, started)


# -- the registry -----------------------------------------------------------------------------------


class SessionRegistry:
    """The signalling connections of one application, its thread pool for blocking GStreamer calls,
    and its ``AsyncioBridge``. Admission follows ``health.session_refusal`` (max sessions, warm-up,
    draining); on shutdown every connection gets ``bye`` and its session is closed."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._connections: set[Connection] = set()
        self._pool: ThreadPoolExecutor | None = None
        self._bridge: AsyncioBridge | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self.closing = False

    # -- lifecycle --------------------------------------------------------------------------------

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: pool, bridge, GLib loop and the DTLS certificate before the first call."""
        self._pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="vcstream-webrtc")
        self._bridge = AsyncioBridge()
        GLibLoop.shared()
        try:
            started = time.perf_counter()
            await self.blocking(prepare)
            log.debug("WebRTC ready in %.0f ms", 1000 * (time.perf_counter() - started))
        except VcstreamError as exc:
            log.error("WebRTC sessions will fail: %s", exc)
        yield
        await self.close_all("shutdown")
        pool, self._pool = self._pool, None
        await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)

    async def on_shutdown(self, app: web.Application) -> None:
        await self.close_all("shutdown")

    async def close_all(self, reason: str, *, final: bool = True) -> None:
        """Say ``bye`` (with ``reason``) to every connection and wait (bounded) until their sessions
        are closed. ``final`` (shutdown) also refuses connections from then on."""
        if final:
            self.closing = True
        connections = list(self._connections)
        for connection in connections:
            connection.shutdown(reason)
        if connections:
            waits = [asyncio.ensure_future(c.done.wait()) for c in connections]
            _, pending = await asyncio.wait(waits, timeout=_SHUTDOWN_WAIT_S)
            for waiter in pending:
                waiter.cancel()
            if pending:
                log.warning("%d connection(s) did not close within %g s", len(pending), _SHUTDOWN_WAIT_S)
        if self._retiring:
            await asyncio.wait(list(self._retiring), timeout=_SHUTDOWN_WAIT_S)

    def retire(
        self, connection_id: str, target: Call | asyncio.Future[Call] | None, started: bool
    ) -> asyncio.Task[None]:
        """Close a call on a task of the registry's own (a cancelled handler cannot interrupt it) and
        count the session as ended."""
        task = asyncio.get_running_loop().create_task(self._close_call(connection_id, target, started))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        return task

    async def _close_call(
        self, connection_id: str, target: Call | asyncio.Future[Call] | None, started: bool
    ) -> None:
        try:
            call = target
            if isinstance(call, asyncio.Future):
                try:
                    call = await call
                except Exception:  # opening failed: nothing to close
                    call = None
            if call is not None:
                await self.blocking(call.close)
        except Exception:
            log.exception("connection %s: closing the session failed", connection_id)
        finally:
            if started:
                self._app[METRICS_KEY].session_ended()
                log.info("connection %s: session ended", connection_id)

    # -- services to connections ------------------------------------------------------------------

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking call (GStreamer state changes, engine session setup) in the pool."""
        if self._pool is None:
            raise SignallingError("server_not_ready", "the server is not running", fatal=True)
        return await asyncio.get_running_loop().run_in_executor(self._pool, partial(fn, *args))

    def to_loop(self, fn: Callable[..., None], *args: Any) -> None:
        """Hand a call from a GStreamer thread to the asyncio loop (dropped once the loop is gone)."""
        bridge = self._bridge
        if bridge is None:
            return
        try:
            bridge.call_soon(fn, *args)
        except RuntimeError:  # the loop closed during shutdown; nobody is listening any more
            log.debug("event after the loop closed: %s", getattr(fn, "__name__", fn))

    def peer_config(self, session_id: str) -> PeerConfig:
        settings = self._app[SETTINGS_KEY]
        servers = ice_servers(settings, f"vcstream-{session_id}")
        return PeerConfig(
            latency_ms=settings.webrtc_latency_ms,
            stun_server=servers.stun_server(),
            turn_servers=servers.turn_servers(),
        )

    @property
    def connections(self) -> int:
        return len(self._connections)

    @property
    def calls(self) -> int:
        return sum(1 for c in self._connections if c.call is not None)

    def active_calls(self) -> list[Call]:
        """The calls running now (for operators' views and tests)."""
        return [c.call for c in self._connections if c.call is not None]

    # -- the endpoint -----------------------------------------------------------------------------

    @operation(
        "signalling",
        "WebSocket signalling for WebRTC conversion sessions (GET with Upgrade: websocket)",
        {
            101: reply("Switching Protocols: the WebSocket is open; messages as described above"),
            400: error("bad_request: not a WebSocket upgrade request"),
        },
        description=_PROTOCOL,
    )
    async def websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=_FRAME_LIMIT, heartbeat=20.0, timeout=2.0)
        await ws.prepare(request)
        connection = Connection(self, request.app, ws)
        if self.closing:
            connection.shutdown("shutdown")
        self._connections.add(connection)
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)
        return ws


def setup(app: web.Application) -> None:
    """Register ``/ws`` and the session registry (``SESSIONS_KEY``) on ``app``."""
    registry = SessionRegistry(app)
    app[SESSIONS_KEY] = registry
    app.router.add_get("/ws", registry.websocket)
    app.cleanup_ctx.append(registry.context)
    app.on_shutdown.append(registry.on_shutdown)
