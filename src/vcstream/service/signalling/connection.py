"""One signalling WebSocket: its state machine (``new`` -> ``ready`` -> ``calling``), outbox, rate
limit, message handlers, timers and the periodic ``stats`` message of its call."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from vcstream.engines.base import VoiceProfile
from vcstream.engines.settings import SessionSettings, SettingsError
from vcstream.errors import VcstreamError
from vcstream.media.webrtc import InvalidSdpError, opus_payload_type
from vcstream.quality.live import CallQuality
from vcstream.service.admission import EngineSlot
from vcstream.service.auth import OPEN, Principal
from vcstream.service.budget import TokenBucket
from vcstream.service.health import session_refusal
from vcstream.service.keys import (
    ADMISSION_KEY,
    DEFAULTS_KEY,
    LIVE_QUALITY_KEY,
    METRICS_KEY,
    SETTINGS_KEY,
    VOICES_KEY,
)
from vcstream.service.metrics import ServiceMetrics
from vcstream.service.signalling.call_meter import CallMeter
from vcstream.service.signalling.hello import authenticated, ready_fields
from vcstream.service.signalling.protocol import (
    MAX_REMOTE_CANDIDATES,
    PROTOCOL_VERSION,
    STATS_INTERVAL_S,
    SignallingError,
    parse_candidate,
    parse_message,
    validate_settings,
)
from vcstream.service.signalling.stats import CallStatistics
from vcstream.service.signalling.waiting_room import WaitingRoom
from vcstream.service.tenant_api import LEDGER_KEY
from vcstream.service.voices import VoiceNotFoundError
from vcstream.transports.webrtc_call import Call

if TYPE_CHECKING:
    from vcstream.service.signalling.registry import SessionRegistry

__all__ = ["Connection"]

log = logging.getLogger(__name__)

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
#: the retry hint sent with server_full: about the time it takes a call to end somewhere
RETRY_FULL_S = 15.0
#: how long a place reserved at ``hello`` (``"reserve": true``) waits for the offer
RESERVE_S = 10.0
#: message rate allowed per connection: a steady rate and a burst (token bucket); a browser sends
#: hello, offer, a few dozen ICE candidates and now and then a voice or settings change
RATE_PER_S, RATE_BURST = 50.0, 200.0
#: what a message answered with a (non-fatal) error costs from that budget: a client that keeps
#: sending malformed messages is cut off sooner than one that talks a lot
ERROR_COST = 4.0
#: errors that mark a client as abusive: the close frame is sent but its answer is not waited for
#: (waiting means parsing whatever the client still floods in, up to the close timeout)
ABUSE_CODES = frozenset({"rate_limited", "message_too_large"})
ABUSE_CLOSE_WAIT_S = 0.1
#: how long the close frame waits for the call's end to be written to the usage ledger (a database
#: that hangs must not hold the client's hang-up)
USAGE_END_WAIT_S = 3.0


@dataclass(frozen=True)
class _Close:
    code: int
    reason: str
    abrupt: bool = False


class Connection:
    """The signalling state of one WebSocket: ``new`` -> ``ready`` (hello) -> ``calling`` (offer)."""

    def __init__(
        self,
        registry: SessionRegistry,
        app: web.Application,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None = None,
        client_address: str = "?",
    ) -> None:
        self.registry = registry
        #: the client's address (through trusted proxies): failed credentials are charged to it
        self.client_address = client_address
        #: who this connection acts for, known at hello
        self.principal: Principal = OPEN
        #: the call's entry in the usage ledger, from the offer
        self._meter: CallMeter | None = None
        #: the write of the call's end to the usage ledger, once it has begun
        self._usage_end: asyncio.Task[None] | None = None
        self.app = app
        self.ws = ws
        #: the socket under ``ws``: reading stops at once when a client is cut off for abuse
        self.transport = transport
        self.id = secrets.token_hex(6)
        self.state = "new"
        self.call: Call | None = None
        #: the call being opened in the pool (until it is assigned to ``call``)
        self._opening: asyncio.Future[Call] | None = None
        self.voice_id: str | None = None
        self.settings: SessionSettings = app[DEFAULTS_KEY]
        #: the engine this connection's call runs on, chosen at hello (the overflow engine when the
        #: primary is full); its place is taken at the offer
        self.slot: EngineSlot | None = None
        self._outbox: asyncio.Queue[dict[str, Any] | _Close] = asyncio.Queue()
        self._closing = False
        self._budget = TokenBucket(RATE_PER_S, RATE_BURST)
        self._remote_candidates = 0
        #: the slot whose place this connection's call holds (given back when the call ends)
        self._held: EngineSlot | None = None
        #: a place taken at hello for the offer to come (``"reserve": true``), and its expiry
        self._reserved: EngineSlot | None = None
        self._reserve_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._disconnected: asyncio.TimerHandle | None = None
        self._connect_timer: asyncio.TimerHandle | None = None
        self._statistics = CallStatistics(app[METRICS_KEY])
        #: the call's live quality tap and estimate (None: estimation is off, or no call yet)
        self.quality: CallQuality | None = None
        #: the call's selected ICE pair goes through TURN (as of its last statistics sample)
        self.relayed = False
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

    def send_error(
        self, code: str, message: str, *, fatal: bool = False, retry_after_s: float | None = None
    ) -> None:
        hint = {} if retry_after_s is None else {"retry_after_s": retry_after_s}
        self.send("error", code=code, message=message, fatal=fatal, **hint)
        if fatal:
            status = 1008 if code not in ("internal_error", "media_error") else 1011
            self.close(status, code, abrupt=code in ABUSE_CODES)

    def close(self, code: int = 1000, reason: str = "", *, abrupt: bool = False) -> None:
        """Close after the messages already queued (idempotent); ``abrupt``: without waiting for the
        client's close frame."""
        if not self._closing:
            self._closing = True
            if self._meter is not None:
                self._meter.end_reason = reason or "closed"
                self._end_usage()
            if abrupt and self.transport is not None:
                # nothing more of what it floods in is parsed (aiohttp reads ahead 128 KiB of messages)
                self.transport.pause_reading()
            self._outbox.put_nowait(_Close(code, reason, abrupt))

    async def _send_loop(self) -> None:
        while True:
            item = await self._outbox.get()
            if isinstance(item, _Close):
                if self._usage_end is not None:  # the close frame ends the hang-up: the call's end first
                    await asyncio.wait({self._usage_end}, timeout=USAGE_END_WAIT_S)
                closing = self.ws.close(code=item.code, message=item.reason.encode()[:120])
                if item.abrupt:  # the close frame goes out at once; then aiohttp drops the socket
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(closing, ABUSE_CLOSE_WAIT_S)
                else:
                    await closing
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
            self._end_usage()  # the client closed: before the answer to its close frame
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

    def _within_budget(self, cost: float) -> bool:
        """Take ``cost`` from the connection's message budget; past it, say so and close."""
        if self._budget.take(cost):
            return True
        self.send_error(
            "rate_limited",
            f"too many messages: at most {RATE_BURST:g} at once and {RATE_PER_S:g} a second "
            f"(a message answered with an error counts {ERROR_COST:g})",
            fatal=True,
        )
        return False

    async def _dispatch(self, text: str | None) -> None:
        """Handle one text frame (None: a binary frame); every failure becomes an ``error``."""
        kind: object = "?"
        if not self._within_budget(1.0):
            return
        try:
            kind, data = parse_message(text)
            await self._handlers[kind](data)
        except SignallingError as exc:
            if exc.fatal or self._within_budget(ERROR_COST - 1.0):
                self.send_error(exc.code, exc.message, fatal=exc.fatal, retry_after_s=exc.retry_after_s)
        except Exception:
            log.exception("connection %s: handling %r failed", self.id, kind)
            self.send_error("internal_error", "the server could not handle this message (logged)", fatal=True)

    # -- handlers ---------------------------------------------------------------------------------

    def _full(self) -> SignallingError:
        self.metrics.session_failed("full")
        return SignallingError(
            "server_full",
            f"all {self.app[ADMISSION_KEY].places} session places are taken; try again later",
            fatal=True,
            retry_after_s=RETRY_FULL_S,
        )

    def _refusal(self) -> SignallingError | None:
        if self.registry.closing:
            return SignallingError("server_draining", "the server is shutting down", fatal=True)
        refused = session_refusal(self.app)
        if refused is None:
            return None
        reason, message = refused
        self.metrics.session_failed(reason)
        code = {"full": "server_full", "draining": "server_draining"}.get(reason, "server_not_ready")
        retry = RETRY_FULL_S if reason == "full" else None
        return SignallingError(code, message, fatal=True, retry_after_s=retry)

    async def _hello(self, data: dict[str, Any]) -> None:
        if self.state != "new":
            raise SignallingError("unexpected", "hello was already received")
        reserve = data.get("reserve") is True
        wait = reserve and data.get("wait") is True  # a full server queues it (waiting_room)
        refusal = self._refusal()
        if refusal is not None and not (wait and refusal.code == "server_full"):
            raise refusal
        self.principal = await authenticated(self.app, data.get("token"), self.client_address)
        admission, room = self.app[ADMISSION_KEY], self.registry.waiting_room
        # places given back go to those already waiting: nobody overtakes the queue
        slot = admission.choose() if room.waiting == 0 else None
        if slot is not None and reserve:
            # a client about to call holds its place from now: two callers racing for the last place
            # are told at hello (one ``ready``, one ``server_full``), never after ``ready``
            slot = slot if admission.take(slot) else None
            if slot is not None:
                self._hold(slot)
        if slot is None:
            if wait and not self._closing and self._queue(room):
                return
            raise refusal or self._full()
        await self._welcome(slot)

    def _hold(self, slot: EngineSlot) -> None:
        """Keep a place taken for this connection until its offer, for ``RESERVE_S`` at most."""
        self._reserved = slot
        self._reserve_timer = asyncio.get_running_loop().call_later(RESERVE_S, self._unreserve)

    def _queue(self, room: WaitingRoom) -> bool:
        """Wait in ``room`` for a place (``waiting``); False when its queue is full."""
        self.state = "waiting"
        position = room.join(self)
        if position is None:
            self.state = "new"
            return False
        self.moved_up(position)
        room.admit()  # a place given back while this hello was being checked
        return True

    # -- the waiting room's calls (``waiting_room.Waiter``) ---------------------------------------

    def admitted(self, slot: EngineSlot) -> None:
        self._hold(slot)
        self._spawn(self._welcome_waiter(slot), "admitted")

    def moved_up(self, position: int) -> None:
        self.send("waiting", position=position, retry_after_s=RETRY_FULL_S)

    def turned_away(self) -> None:
        self.send_error("server_draining", "the server is shutting down", fatal=True)

    async def _welcome_waiter(self, slot: EngineSlot) -> None:
        try:
            await self._welcome(slot)
        except Exception:  # as a failed hello would (its place is given back as the connection closes)
            log.exception("connection %s: a place came, but ready could not be sent", self.id)
            self.send_error("internal_error", "the server could not answer ready (logged)", fatal=True)

    async def _welcome(self, slot: EngineSlot) -> None:
        """``ready``: the connection may call on ``slot``."""
        fields = await ready_fields(self.app, slot, self.principal, self.id)
        self.slot, self.settings = slot, slot.defaults
        self.state = "ready"
        self.send("ready", **fields)

    async def _metered(self, slot: EngineSlot) -> CallMeter:
        """The call admitted under the tenant's plan and recorded (a fatal error when it is not)."""
        meter = CallMeter(
            self.app[LEDGER_KEY], self.registry.blocking, self.principal, slot.engine.name, self.metrics
        )
        await meter.start()
        return meter

    async def _profile(self, voice_id: object) -> tuple[str, VoiceProfile]:
        if not isinstance(voice_id, str) or not voice_id:
            raise SignallingError("voice_required", 'choose a voice ("voice": a voice id from the library)')
        library = self.app[VOICES_KEY]
        try:
            if not self.principal.may_use(voice_id):  # as if it did not exist: ids do not leak
                raise VoiceNotFoundError(f"no voice with id {voice_id!r}")
            engine = self.slot.engine if self.slot is not None else None
            info, profile = await library.voice_for_call(voice_id, engine, self.principal.tenant_id)
            return info.name, profile
        except VoiceNotFoundError as exc:
            raise SignallingError("voice_not_found", str(exc)) from exc
        except VcstreamError as exc:
            raise SignallingError("voice_unusable", f"the voice cannot be used: {exc}") from exc

    def _validated(self, raw: object) -> SessionSettings:
        """The connection's settings with the client's changes, within this server's call choices."""
        merged = validate_settings(raw, self.settings)
        if self.slot is not None:
            try:
                self.slot.choices.check(merged)
            except SettingsError as exc:
                raise SignallingError("bad_settings", str(exc)) from exc
        return merged

    async def _offer(self, data: dict[str, Any]) -> None:
        if self.state in ("new", "waiting"):
            raise SignallingError("unexpected", "send the offer after ready")
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
        settings = self._validated(data.get("settings"))
        voice_id = data.get("voice", self.voice_id)
        _, profile = await self._profile(voice_id)
        if self._closing:
            return
        slot = self.slot
        assert slot is not None  # set by hello
        if self._reserved is slot:  # the place taken at hello becomes the call's
            self._reserved = None
            if self._reserve_timer is not None:
                self._reserve_timer.cancel()
                self._reserve_timer = None
        else:
            refusal = self._refusal()
            if refusal is not None:
                raise refusal
            if not self.app[ADMISSION_KEY].take(slot):
                raise self._full()
        try:
            self._meter = await self._metered(slot)
        except SignallingError:
            self.app[ADMISSION_KEY].release(slot)  # the plan refused the call: its place was never used
            raise
        if self._closing:  # the client left while the ledger admitted it
            self.app[ADMISSION_KEY].release(slot)
            self._meter.end_reason = "closed"
            self._end_usage()
            return
        self._held = slot
        self.metrics.session_started()
        self.state = "calling"
        self.voice_id, self.settings = str(voice_id), settings
        registry = self.registry
        config = registry.peer_config(self.id)
        self.quality = self._open_quality(slot.engine.name, str(voice_id))
        try:
            self._opening = asyncio.ensure_future(
                registry.blocking(
                    partial(
                        Call.open,
                        f"session-{self.id}",
                        slot.engine,
                        profile,
                        settings,
                        registry.to_loop,
                        self,
                        config,
                        scheduler=slot.scheduler,
                        on_block=self.metrics.observe_inference,
                        started=offered_at,
                        tap=self.quality,
                    )
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
        parsed = parse_candidate(data)
        if parsed is None:
            return  # the client's end of candidates: webrtcbin needs no notice
        self._remote_candidates += 1
        if self._remote_candidates > MAX_REMOTE_CANDIDATES:
            raise SignallingError("too_many_candidates", f"at most {MAX_REMOTE_CANDIDATES} candidates")
        call.peer.add_ice_candidate(*parsed)

    async def _voice(self, data: dict[str, Any]) -> None:
        if self.state == "new":
            raise SignallingError("unexpected", "send hello first")
        voice_id = data.get("voice")
        name, profile = await self._profile(voice_id)
        self.voice_id = str(voice_id)
        call = self.call
        if call is not None:
            await self.registry.blocking(call.set_voice, profile)
            if self.quality is not None:
                self._quality_voice(self.quality, self.voice_id)
        self.send("voice", voice=voice_id, name=name)

    async def _settings(self, data: dict[str, Any]) -> None:
        if self.state == "new":
            raise SignallingError("unexpected", "send hello first")
        raw = data.get("settings")
        if raw is None:
            raise SignallingError("bad_settings", "'settings' is missing")
        merged = self._validated(raw)
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
            live, stats, peer = await self.registry.blocking(call.sample)
            if stats is None:
                continue
            if peer.relayed is not None:
                self.relayed = peer.relayed
            estimate = self.quality.estimate if self.quality is not None else None
            fields, engine_failed = self._statistics.message(call, live, stats, peer, latency_ms, estimate)
            if engine_failed:
                self.send("error", code="engine_error", message="the engine failed on a block", fatal=False)
            self.send("stats", **fields)
            if self._meter is not None:
                await self._allowance(self._meter.observe(live, stats.samples_out / call.io_rate))

    async def _allowance(self, verdict: str | None) -> None:
        """Tell the caller a minute before its plan's minutes run out; end the call when they have."""
        meter = self._meter
        if verdict is None or meter is None:
            return
        if verdict == "warn":
            left = meter.seconds_left(meter.converted_s) or 0.0
            self.send(
                "warning",
                code="minutes_ending",
                message=f"this month's minutes run out in {left:.0f} s; the call will end then",
                seconds_left=round(left, 1),
            )
        elif verdict == "end":
            self.send_error(
                "minutes_used_up", "this month's minutes are used up; the call has ended", fatal=True
            )

    # -- live quality ---------------------------------------------------------------------------------

    def _open_quality(self, engine: str, voice_id: str) -> CallQuality | None:
        """The call's live quality tap (None when estimation is off)."""
        worker = self.app.get(LIVE_QUALITY_KEY)
        if worker is None:
            return None
        quality = worker.open_call(engine, self.metrics.observe_voice_similarity)
        self._quality_voice(quality, voice_id)
        return quality

    def _quality_voice(self, quality: CallQuality, voice_id: str) -> None:
        """Estimate against ``voice_id`` from now on; its reference is read in the background the
        first time (until then only ``own_voice_similarity`` is estimated): the call never waits."""
        quality.set_voice(voice_id)
        if not self.app[LIVE_QUALITY_KEY].knows_voice(voice_id):
            self._spawn(self._fetch_reference(voice_id), "quality-reference")

    async def _fetch_reference(self, voice_id: str) -> None:
        try:
            wav = await self.app[VOICES_KEY].audio(voice_id, self.principal.tenant_id)
        except VcstreamError as exc:  # deleted meanwhile: no estimate against it
            log.info("connection %s: no reference for live quality: %s", self.id, exc)
            return
        self.app[LIVE_QUALITY_KEY].add_reference(voice_id, wav)

    # -- teardown ---------------------------------------------------------------------------------

    def _unreserve(self) -> None:
        """Give back a place reserved at hello that no offer used (expired, or the connection ended)."""
        if self._reserve_timer is not None:
            self._reserve_timer.cancel()
            self._reserve_timer = None
        reserved, self._reserved = self._reserved, None
        if reserved is not None:
            self.app[ADMISSION_KEY].release(reserved)

    def _end_usage(self) -> None:
        """Write the call's end to the usage ledger now (once, on a task the registry owns), before
        the close frame goes out and before the call is closed: a client that redials the moment
        its hang-up completes finds the call's place in its plan free, on any replica."""
        if self._meter is not None and self._usage_end is None:
            self._usage_end = self.registry.end_usage(self._meter)

    def _retire(self) -> asyncio.Task[None] | None:
        """Hand the call (or the one being opened) to the registry to close; None if there is none."""
        self.registry.waiting_room.leave(self)
        self._unreserve()
        if self.quality is not None:
            self.quality.close()
        target: Call | asyncio.Future[Call] | None = self.call or self._opening
        self.call, self._opening = None, None
        held, self._held = self._held, None
        self._meter = None  # its end is written by _end_usage
        if target is None and held is None:
            return None
        return self.registry.retire(self.id, target, held)
