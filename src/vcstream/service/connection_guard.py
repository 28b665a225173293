"""What a public endpoint needs below the handlers: a cap on open connections, and deadlines for
clients that send their requests too slowly (slowloris).

* **Open connections** (``max_connections``): ``GuardedSite`` listens like aiohttp's ``TCPSite``
  but wraps each connection's protocol in ``_Guarded``. Past the cap a new connection is answered
  ``503`` (``Retry-After``) and closed before a byte of it is read; the count is taken when asyncio
  hands the connection over (``connection_made``), so connections accepted in one loop turn cannot
  all slip under it.
* **Request headers** (``header_timeout_s``): aiohttp arms its keep-alive timer when a connection
  opens and again after each response, and when it fires closes the connection if it is still
  waiting for a request's headers (``RequestHandler._process_keepalive``). Its default is an hour;
  ``app_runner`` sets it to the header timeout, so headers must be complete within that time of
  connecting (or of the previous response). Idle keep-alive connections are closed as soon, which
  a balancer's pool of connections to the replica must allow for (its idle timeout shorter).
* **Request bodies**: ``body_deadline`` (a middleware) watches a request's body while its handler
  runs: within each ``header_timeout_s`` at least ``MIN_BODY_BYTES_PER_S`` a second must arrive, or
  the body must be complete; else the connection is closed. A slow but real upload keeps going.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

__all__ = ["MIN_BODY_BYTES_PER_S", "ConnectionCap", "GuardedSite", "app_runner", "body_deadline"]

log = logging.getLogger(__name__)

#: the slowest request body accepted (Apache's mod_reqtimeout takes 500 B/s); far above a slowloris
#: byte every few seconds, far below any real upload
MIN_BODY_BYTES_PER_S = 1024
_REFUSAL_BODY = b'{"error":"too_many_connections","message":"this server has no connection to spare"}'
#: what a connection over the cap gets (nothing of the request is read)
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_REFUSAL_BODY), _REFUSAL_BODY)
)


class ConnectionCap:
    """Counts the open connections of a site and refuses those past ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self.refused = 0

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` whose connections this cap counts."""
        return lambda: _Guarded(self, factory())


class _Guarded(asyncio.Protocol):
    """Passes one connection's events to aiohttp's protocol once the cap admitted it."""

    def __init__(self, cap: ConnectionCap, inner: asyncio.Protocol) -> None:
        self._cap, self._inner = cap, inner
        self._admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cap = self._cap
        if cap.open >= cap.limit:
            cap.refused += 1
            if cap.refused == 1 or cap.refused % 100 == 0:
                log.warning("%d connection(s) refused: %d open, the limit", cap.refused, cap.open)
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(REFUSAL)
            transport.close()
            return
        cap.open += 1
        self._admitted = True
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._admitted:
            self._admitted = False
            self._cap.open -= 1
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._admitted:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._admitted else None

    def pause_writing(self) -> None:
        if self._admitted:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self._inner.resume_writing()


class GuardedSite(web.BaseSite):
    """aiohttp's ``TCPSite`` with ``ConnectionCap`` between the socket and aiohttp."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        cap: ConnectionCap,
        *,
        ssl_context: Any = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host, self._port, self.cap = host, port, cap

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()  # registers the site with the runner
        factory = self._runner.server
        assert factory is not None  # BaseSite refuses a runner that was not set up
        self._server = await asyncio.get_running_loop().create_server(
            self.cap.wrap(factory),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=True,
        )


def app_runner(app: web.Application, header_timeout_s: float, **options: Any) -> web.AppRunner:
    """An ``AppRunner`` whose connections must send a request's headers within ``header_timeout_s``
    of connecting or of the previous response (aiohttp's keep-alive timer, see above)."""
    return web.AppRunner(app, keepalive_timeout=header_timeout_s, **options)


def body_deadline(window_s: float) -> Middleware:
    """Middleware: a request body must arrive at ``MIN_BODY_BYTES_PER_S`` at least (checked every
    ``window_s``), else its connection is closed."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.body_exists:
            return await handler(request)
        watch = asyncio.create_task(_watch_body(request, window_s), name="body-deadline")
        try:
            return await handler(request)
        except ConnectionError:
            if not (watch.done() and watch.result()):
                raise
            # the handler's read failed because the watch cut the body: an answer nobody receives,
            # instead of an error logged as the handler's
            return web.Response(status=408, text="request body too slow")
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch

    return middleware


async def _watch_body(request: web.Request, window_s: float) -> bool:
    """Whether it closed the connection (the body fell below the rate)."""
    content = request.content
    least = MIN_BODY_BYTES_PER_S * window_s
    seen = content.total_bytes
    while not content.is_eof():
        await asyncio.sleep(window_s)  # the rule's own window, not a wait for a condition
        if content.is_eof():
            return False
        if content.total_bytes - seen < least:
            log.info(
                "%s %s: body slower than %d B/s (%d B in %g s): closing",
                request.method,
                request.path,
                MIN_BODY_BYTES_PER_S,
                content.total_bytes - seen,
                window_s,
            )
            if request.transport is not None:
                request.transport.close()
            return True
        seen = content.total_bytes
    return False
