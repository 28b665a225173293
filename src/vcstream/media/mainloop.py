"""The one place where threads cross: GLib, asyncio and the pools for blocking work.

Live pipelines (RTP, WebRTC) need a running GLib main loop for bus watches, webrtcbin promises and
signals. ``GLibLoop`` runs one ``GLib.MainLoop`` in a dedicated thread for the whole process; code
on other threads hands work to it with ``call_soon`` (fire and forget) or ``call`` (wait for the
result), and repeats work on it with ``timer``.

``Runtime`` is what an application holds: the GLib loop (it starts the process-wide one unless it
runs already, and then stops it again when it closes), the asyncio loop it was started on, and named
thread pools of fixed sizes for blocking work. Every crossing goes through one of its methods; its
``close`` ends them all. Neither loop ever runs inference.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import logging
import threading
import weakref
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from vcstream.errors import ConfigurationError, VcstreamError
from vcstream.media.gst import GLib, ensure_gst

log = logging.getLogger(__name__)

T = TypeVar("T")


class RuntimeClosedError(VcstreamError, RuntimeError):
    """Work handed to a runtime (or a GLib loop) that has been closed: nothing would run it."""


def _name(fn: Callable[..., Any] | Coroutine[Any, Any, Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


# -- GLib ---------------------------------------------------------------------------------------------


class GLibTimer:
    """A repeating GLib timeout: ``fn()`` runs on the GLib thread every ``interval_ms`` until it
    returns False, raises (logged) or ``cancel`` is called. Made by ``GLibLoop.timer``."""

    def __init__(self, interval_ms: int, fn: Callable[[], bool]) -> None:
        if interval_ms < 0:
            raise ConfigurationError(f"a timer interval must be >= 0 ms, got {interval_ms}")
        self.interval_ms = interval_ms
        self._fn = fn
        self._lock = threading.Lock()
        self._source_id: int | None = None
        self._ended = False

    def _attach(self) -> None:
        with self._lock:
            if not self._ended:
                self._source_id = GLib.timeout_add(self.interval_ms, self._tick)

    def _tick(self) -> bool:
        try:
            again = bool(self._fn())
        except Exception:
            log.exception("GLib timer %s failed; it stops", _name(self._fn))
            again = False
        with self._lock:
            if again and not self._ended:
                return True
            self._ended = True
            self._source_id = None  # GLib removes the source when we return False
        return False

    @property
    def active(self) -> bool:
        return not self._ended

    def cancel(self) -> None:
        """Stop the timer (from any thread, idempotent). A tick already running finishes; none starts."""
        with self._lock:
            self._ended = True
            source_id, self._source_id = self._source_id, None
        if source_id is not None:
            GLib.source_remove(source_id)


class GLibLoop:
    """A GLib main loop on its own daemon thread. Use ``GLibLoop.shared()`` for the process-wide one."""

    _shared: GLibLoop | None = None
    _shared_lock = threading.Lock()

    def __init__(self) -> None:
        ensure_gst()
        self._context = GLib.MainContext.default()
        self._loop = GLib.MainLoop.new(self._context, False)
        self._timers: weakref.WeakSet[GLibTimer] = weakref.WeakSet()
        self._timers_lock = threading.Lock()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vcstream-glib", daemon=True)
        self._thread.start()
        self._ready.wait(5)

    @classmethod
    def shared(cls) -> GLibLoop:
        return cls.claim_shared()[0]

    @classmethod
    def claim_shared(cls) -> tuple[GLibLoop, bool]:
        """The process-wide loop, and whether this call started it (its owner then stops it)."""
        with cls._shared_lock:
            if cls._shared is not None and cls._shared.running:
                return cls._shared, False
            cls._shared = cls()
            return cls._shared, True

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
                log.exception("error in GLib callback %s", _name(fn))
            return False

        GLib.idle_add(once)

    def call(self, fn: Callable[..., T], *args: Any, timeout_s: float = 10.0) -> T:
        """Run ``fn(*args)`` on the GLib thread and return its result (re-raising its exception)."""
        if self.in_loop_thread:
            return fn(*args)
        if not self.running:  # waiting would only end in a timeout
            raise RuntimeClosedError(f"the GLib loop has stopped: cannot run {_name(fn)}")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def once() -> bool:
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)
            return False

        GLib.idle_add(once)
        return future.result(timeout_s)

    def timer(self, interval_ms: int, fn: Callable[[], bool]) -> GLibTimer:
        """Call ``fn()`` on the GLib thread every ``interval_ms`` while it returns True (see
        ``GLibTimer``). Callable from any thread; the loop cancels what is left when it stops."""
        timer = GLibTimer(interval_ms, fn)
        with self._timers_lock:
            self._timers.add(timer)
        timer._attach()
        return timer

    def stop(self) -> None:
        with self._timers_lock:
            timers = list(self._timers)
        for timer in timers:  # the default context outlives this loop: leave no source on it
            timer.cancel()
        self._loop.quit()
        self._thread.join(5)


# -- asyncio ------------------------------------------------------------------------------------------


def _log_failure(future: concurrent.futures.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("coroutine handed to asyncio failed", exc_info=future.exception())


def _logged(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:
        log.exception("error in a call handed to asyncio: %s", _name(fn))


# -- the runtime --------------------------------------------------------------------------------------


class _State(enum.Enum):
    OPEN = "open"
    #: pools draining: running work may still reach GLib and asyncio, nothing new is accepted
    CLOSING = "closing"
    CLOSED = "closed"


class Runtime:
    """The loops and thread pools of one application, and every hand-off between them.

    - ``to_glib``/``call_in_glib``/``glib_timer``: onto the GLib thread (fire and forget, wait for
      the result, repeat);
    - ``to_loop``/``submit_coroutine``: from any thread onto the asyncio loop;
    - ``run_blocking(pool, fn, *args)``: blocking work on one of the named pools, awaited on the loop.

    Build it on the asyncio loop (``Runtime.start``) and ``await close()`` at the end: queued
    blocking work is cancelled, running work finishes, timers stop, the GLib thread stops if this
    runtime started it, and from then on every method raises ``RuntimeClosedError`` except
    ``to_loop``, which drops the call with a debug log (its callers are GStreamer threads reporting
    events that nobody listens to any more).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, pools: Mapping[str, int]) -> None:
        for pool, workers in pools.items():
            if workers < 1:
                raise ConfigurationError(f"thread pool {pool!r} needs at least one worker, got {workers}")
        self.loop = loop
        self._pools = {
            pool: ThreadPoolExecutor(workers, thread_name_prefix=f"vcstream-{pool}")
            for pool, workers in pools.items()
        }
        self.glib, self._owns_glib = GLibLoop.claim_shared()
        self._timers: weakref.WeakSet[GLibTimer] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._state = _State.OPEN

    @classmethod
    def start(cls, pools: Mapping[str, int]) -> Runtime:
        """A runtime on the running asyncio loop."""
        return cls(asyncio.get_running_loop(), pools)

    @property
    def closed(self) -> bool:
        return self._state is _State.CLOSED

    def _refuse_if(self, *states: _State, work: str) -> None:
        if self._state in states:
            raise RuntimeClosedError(f"the runtime is {self._state.value}: {work} is refused")

    # -- onto GLib --------------------------------------------------------------------------------

    def to_glib(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the GLib thread soon; its exceptions are logged."""
        self._refuse_if(_State.CLOSED, work=f"handing {_name(fn)} to GLib")
        self.glib.call_soon(fn, *args)

    def call_in_glib(self, fn: Callable[..., T], *args: Any, timeout_s: float = 10.0) -> T:
        """Run ``fn(*args)`` on the GLib thread and return its result (or raise its exception).
        Blocks the caller: call it from a worker thread, never from the asyncio loop."""
        self._refuse_if(_State.CLOSED, work=f"calling {_name(fn)} on GLib")
        return self.glib.call(fn, *args, timeout_s=timeout_s)

    def glib_timer(self, interval_ms: int, fn: Callable[[], bool]) -> GLibTimer:
        """Call ``fn()`` on the GLib thread every ``interval_ms`` while it returns True; ``cancel()``
        the handle to stop it (``close`` cancels what is left)."""
        self._refuse_if(_State.CLOSING, _State.CLOSED, work=f"a GLib timer for {_name(fn)}")
        timer = self.glib.timer(interval_ms, fn)
        with self._lock:
            self._timers.add(timer)
        return timer

    # -- onto asyncio -----------------------------------------------------------------------------

    def to_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the asyncio loop soon, from any thread; its exceptions are logged.
        Dropped (debug log) once the runtime or the loop is closed."""
        if self._state is _State.CLOSED:
            log.debug("runtime closed: dropped %s", _name(fn))
            return
        try:
            self.loop.call_soon_threadsafe(_logged, fn, *args)
        except RuntimeError:  # the loop closed during shutdown
            log.debug("asyncio loop closed: dropped %s", _name(fn))

    def submit_coroutine(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the asyncio loop, from any thread; its failure is logged (and kept in the
        returned future)."""
        try:
            self._refuse_if(_State.CLOSING, _State.CLOSED, work=f"coroutine {_name(coro)}")
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError as exc:
            coro.close()  # never scheduled: no "never awaited" warning
            if isinstance(exc, RuntimeClosedError):
                raise
            raise RuntimeClosedError(f"the asyncio loop is closed: coroutine {_name(coro)} refused") from exc
        future.add_done_callback(_log_failure)
        return future

    # -- blocking work ----------------------------------------------------------------------------

    def run_blocking(self, pool: str, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``fn(*args)`` on a thread of ``pool``; await the result on the asyncio loop (call this
        on the loop's thread)."""
        self._refuse_if(_State.CLOSING, _State.CLOSED, work=f"blocking call {_name(fn)} on pool {pool!r}")
        executor = self._pools.get(pool)
        if executor is None:
            raise ConfigurationError(f"no thread pool {pool!r}; the runtime has {sorted(self._pools)}")
        try:
            return self.loop.run_in_executor(executor, partial(fn, *args))
        except RuntimeError as exc:  # shut down between the check and here
            raise RuntimeClosedError(f"pool {pool!r} is shut down: {_name(fn)} refused") from exc

    # -- the end ----------------------------------------------------------------------------------

    async def close(self) -> None:
        """Cancel queued blocking work and wait for the running calls, stop the timers and (if this
        runtime started it) the GLib thread. Idempotent."""
        with self._lock:
            if self._state is not _State.OPEN:
                return
            self._state = _State.CLOSING
            timers = list(self._timers)
        for timer in timers:
            timer.cancel()
        done: asyncio.Future[None] = self.loop.create_future()

        def shut_down() -> None:
            try:
                for executor in self._pools.values():
                    executor.shutdown(wait=True, cancel_futures=True)
                if self._owns_glib:
                    self.glib.stop()
            finally:
                self.loop.call_soon_threadsafe(done.set_result, None)

        # a thread of its own: asyncio's default executor would leave a thread behind
        closer = threading.Thread(target=shut_down, name="vcstream-runtime-close")
        closer.start()
        try:
            await asyncio.shield(done)
        finally:
            self._state = _State.CLOSED
        closer.join()
