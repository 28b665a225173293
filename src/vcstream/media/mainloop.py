"""The one place where threads cross between GLib and the rest of the program.

Live pipelines (RTP, WebRTC) need a running GLib main loop for bus watches, webrtcbin promises and
signals. ``GLibLoop`` runs one ``GLib.MainLoop`` in a dedicated thread for the whole process; code
on other threads hands work to it with ``call_soon`` (fire and forget) or ``call`` (wait for the
result). ``AsyncioBridge`` is the opposite direction: GLib/GStreamer threads hand coroutines to the
asyncio loop with ``run_coroutine_threadsafe``. Neither loop ever runs inference.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from vcstream.media.gst import GLib, ensure_gst

log = logging.getLogger(__name__)

T = TypeVar("T")


class GLibLoop:
    """A GLib main loop on its own daemon thread. Use ``GLibLoop.shared()`` for the process-wide one."""

    _shared: GLibLoop | None = None
    _shared_lock = threading.Lock()

    def __init__(self) -> None:
        ensure_gst()
        self._context = GLib.MainContext.default()
        self._loop = GLib.MainLoop.new(self._context, False)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vcstream-glib", daemon=True)
        self._thread.start()
        self._ready.wait(5)

    @classmethod
    def shared(cls) -> GLibLoop:
        with cls._shared_lock:
            if cls._shared is None or not cls._shared.running:
                cls._shared = cls()
            return cls._shared

    def _run(self) -> None:
        GLib.idle_add(self._signal_ready)
        self._loop.run()

    def _signal_ready(self) -> bool:
        self._ready.set()
        return False  # run once

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the GLib thread; exceptions are logged, not raised."""

        def once() -> bool:
            try:
                fn(*args)
            except Exception:
                log.exception("error in GLib callback %s", getattr(fn, "__name__", fn))
            return False

        GLib.idle_add(once)

    def call(self, fn: Callable[..., T], *args: Any, timeout_s: float = 10.0) -> T:
        """Run ``fn(*args)`` on the GLib thread and return its result (re-raising its exception)."""
        if self.in_loop_thread:
            return fn(*args)
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def once() -> bool:
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)
            return False

        GLib.idle_add(once)
        return future.result(timeout_s)

    def stop(self) -> None:
        self._loop.quit()
        self._thread.join(5)


class AsyncioBridge:
    """Hands work from GLib/GStreamer threads to an asyncio loop captured once at construction."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()

    def send_soon(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        """Schedule ``coro`` on the asyncio loop from any thread; errors are logged."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        future.add_done_callback(_log_failure)
        return future

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run a plain callable on the asyncio loop from any thread."""
        self.loop.call_soon_threadsafe(fn, *args)


def _log_failure(future: concurrent.futures.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("coroutine handed to asyncio failed", exc_info=future.exception())
