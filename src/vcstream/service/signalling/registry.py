"""The signalling connections of one application and the services they share.

Threads: the asyncio loop runs the connections' handlers; GStreamer's threads report WebRTC events
through the application's ``Runtime`` (``RUNTIME_KEY``); decoded audio goes from the GStreamer
streaming thread straight into the call's ``LiveSession`` (its own worker thread runs the engine),
whose output goes straight into the peer's appsrc. Blocking GStreamer calls (state changes, teardown,
statistics) run on the runtime's ``MEDIA_POOL``. Inference never runs on the asyncio or the GLib
thread.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

from aiohttp import hdrs, web

from vcstream.errors import VcstreamError
from vcstream.media.mainloop import RuntimeClosedError
from vcstream.media.webrtc import PeerConfig, prepare
from vcstream.service.admission import EngineSlot
from vcstream.service.api import error_response
from vcstream.service.budget import AddressBudget
from vcstream.service.forwarded import TrustedProxies
from vcstream.service.health import session_refusal
from vcstream.service.ice import ice_servers
from vcstream.service.keys import (
    ADMISSION_KEY,
    MEDIA_POOL,
    METRICS_KEY,
    RUNTIME_KEY,
    SESSIONS_KEY,
    SETTINGS_KEY,
)
from vcstream.service.openapi import error, operation, reply
from vcstream.service.origins import origin_allowed
from vcstream.service.signalling.call_meter import CallMeter
from vcstream.service.signalling.connection import Connection
from vcstream.service.signalling.protocol import FRAME_LIMIT, PROTOCOL_DESCRIPTION, SignallingError
from vcstream.service.signalling.waiting_room import WaitingRoom
from vcstream.transports.webrtc_call import Call

__all__ = ["SessionRegistry", "setup"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: after a shutdown ``bye``, how long connections get to close before they are abandoned
_SHUTDOWN_WAIT_S = 10.0
#: WebSockets one client address may open: a burst, then a steady rate (a browser opens one per
#: call). Beyond it the upgrade is refused with 429 before any WebSocket work. Behind a reverse
#: proxy the address is the client's from X-Forwarded-For when the proxy is one of
#: ``trusted_proxies``; otherwise every client shares the proxy's address and budget.
CONNECTS_PER_S, CONNECT_BURST = 2.0, 20.0
#: signalling connections one client address may hold open at once (the rate above bounds how fast
#: they come, this how many stay: idle sockets cost a file descriptor and a task each)
MAX_OPEN_PER_ADDRESS = 20


class SessionRegistry:
    """The signalling connections of one application; blocking GStreamer calls and hand-offs to the
    loop go through the application's ``Runtime``. Admission follows ``health.session_refusal`` (max
    sessions, warm-up, draining); on shutdown every connection gets ``bye`` and its session is
    closed."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._connections: set[Connection] = set()
        self._retiring: set[asyncio.Task[None]] = set()
        self.closing = False
        self._connects = AddressBudget(CONNECTS_PER_S, CONNECT_BURST)
        self._open_by_address: Counter[str] = Counter()
        self._proxies = TrustedProxies(app[SETTINGS_KEY].trusted_proxies)
        self._waiting_room: WaitingRoom | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: the DTLS certificate before the first call (the runtime, set up before, runs
        the GLib loop and the pools, and closes after), and the waiting room on the engines' places."""
        self._waiting_room = WaitingRoom(
            app[ADMISSION_KEY], lambda: not self.closing and session_refusal(app) is None, app[METRICS_KEY]
        )
        self._waiting_room.attach(asyncio.get_running_loop())
        try:
            started = time.perf_counter()
            await self.blocking(prepare)
            log.debug("WebRTC ready in %.0f ms", 1000 * (time.perf_counter() - started))
        except VcstreamError as exc:
            log.error("WebRTC sessions will fail: %s", exc)
        yield
        await self.close_all("shutdown")

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

    def announce_draining(self, grace_s: float) -> int:
        """Tell every connection with a call that this server drains (``draining``), so that its
        client moves the call elsewhere within ``grace_s``; returns how many were told."""
        told = [c for c in self._connections if c.state == "calling"]
        for connection in told:
            connection.send("draining", grace_s=grace_s)
        if self._waiting_room is not None:  # no place will come: waiters try elsewhere at once
            self._waiting_room.turn_away()
        return len(told)

    def retire(
        self,
        connection_id: str,
        target: Call | asyncio.Future[Call] | None,
        held: EngineSlot | None,
    ) -> asyncio.Task[None]:
        """Close a call on a task of the registry's own (a cancelled handler cannot interrupt it),
        count the session as ended and give its place back on ``held`` (after the call is closed,
        so the engine never runs more sessions than its places)."""
        return self._owned(self._close_call(connection_id, target, held))

    def end_usage(self, meter: CallMeter) -> asyncio.Task[None]:
        """Write a call's end to the usage ledger on a task of the registry's own (shutdown waits
        for it; a cancelled handler cannot interrupt it)."""
        return self._owned(meter.end())

    def _owned(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        return task

    async def _close_call(
        self,
        connection_id: str,
        target: Call | asyncio.Future[Call] | None,
        held: EngineSlot | None,
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
            if held is not None:
                self._app[ADMISSION_KEY].release(held)
                self._app[METRICS_KEY].session_ended()
                log.info("connection %s: session ended", connection_id)

    # -- services to connections ------------------------------------------------------------------

    @property
    def waiting_room(self) -> WaitingRoom:
        """The queue for places on this server (set up with the application)."""
        if self._waiting_room is None:
            raise RuntimeError("the session registry has not started")
        return self._waiting_room

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking call (GStreamer state changes, engine session setup) on the media pool."""
        try:
            return await self._app[RUNTIME_KEY].run_blocking(MEDIA_POOL, fn, *args)
        except RuntimeClosedError as exc:
            raise SignallingError("server_not_ready", "the server is not running", fatal=True) from exc

    def to_loop(self, fn: Callable[..., None], *args: Any) -> None:
        """Hand a call from a GStreamer thread to the asyncio loop (dropped once the loop is gone)."""
        self._app[RUNTIME_KEY].to_loop(fn, *args)

    def peer_config(self, session_id: str) -> PeerConfig:
        settings = self._app[SETTINGS_KEY]
        servers = ice_servers(settings, f"vcstream-{session_id}")
        return PeerConfig(
            latency_ms=settings.webrtc_latency_ms,
            stun_server=servers.stun_server(),
            turn_servers=servers.turn_servers(),
            ice_port_range=settings.ice_port_range,
            announced_address=settings.announced_address,
        )

    @property
    def connections(self) -> int:
        return len(self._connections)

    @property
    def calls(self) -> int:
        return sum(1 for c in self._connections if c.call is not None)

    @property
    def relayed_calls(self) -> int:
        """Calls whose selected ICE pair goes through a TURN relay (as of their last stats sample)."""
        return sum(1 for c in self._connections if c.call is not None and c.relayed)

    def calling(self) -> list[Connection]:
        """The connections with a call running now."""
        return [c for c in self._connections if c.call is not None]

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
            403: error(
                "origin_not_allowed: the page's Origin may not open calls here (VCSTREAM_ALLOWED_ORIGINS)"
            ),
            429: error("too_many_connections: this address opens WebSockets too fast (Retry-After)"),
        },
        description=PROTOCOL_DESCRIPTION,
    )
    async def websocket(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get(hdrs.ORIGIN)
        if not origin_allowed(origin, request.host, self._app[SETTINGS_KEY].allowed_origins):
            return error_response(
                403,
                "origin_not_allowed",
                f"pages from {origin[:200] if origin else '?'} may not open calls on this server "
                "(the operator lists the allowed ones in VCSTREAM_ALLOWED_ORIGINS)",
            )
        client = self._proxies.client(request.remote, request.headers.getall(hdrs.X_FORWARDED_FOR, []))
        retry_s = self._connects.take(client)
        if retry_s is not None:
            return error_response(
                429,
                "too_many_connections",
                f"at most {CONNECT_BURST:g} signalling connections at once and {CONNECTS_PER_S:g} a second "
                f"from one address; try again in {retry_s:.1f} s",
                headers={hdrs.RETRY_AFTER: str(max(1, math.ceil(retry_s)))},
            )
        if self._open_by_address[client] >= MAX_OPEN_PER_ADDRESS:
            return error_response(
                429,
                "too_many_connections",
                f"at most {MAX_OPEN_PER_ADDRESS} signalling connections may stay open from one address; "
                "close one first",
                headers={hdrs.RETRY_AFTER: "5"},
            )
        self._open_by_address[client] += 1
        try:
            return await self._serve(request, client)
        finally:
            self._open_by_address[client] -= 1
            if not self._open_by_address[client]:
                del self._open_by_address[client]

    async def _serve(self, request: web.Request, client: str) -> web.WebSocketResponse:
        # autoclose off: the answer to a client's close frame is the connection's to send, after the
        # call's end is in the usage ledger (Connection._end_usage)
        ws = web.WebSocketResponse(max_msg_size=FRAME_LIMIT, heartbeat=20.0, timeout=2.0, autoclose=False)
        await ws.prepare(request)
        transport = request.transport
        connection = Connection(
            self, request.app, ws, transport if isinstance(transport, asyncio.Transport) else None, client
        )
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
