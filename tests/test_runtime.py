"""The runtime bridge on a real GLib main loop, a real asyncio loop and real thread pools."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from vcstream.errors import ConfigurationError
from vcstream.media.mainloop import GLibLoop, Runtime, RuntimeClosedError

T = TypeVar("T")

POOLS = {"media": 2, "engine": 1}
WAIT_S = 5.0


def run(test: Callable[[Runtime], Awaitable[T]], pools: dict[str, int] | None = None) -> T:
    """``test(runtime)`` on a fresh asyncio loop, the runtime closed afterwards."""

    async def main() -> T:
        runtime = Runtime.start(POOLS if pools is None else pools)
        try:
            return await test(runtime)
        finally:
            await runtime.close()

    return asyncio.run(main())


def current_thread_name() -> str:
    return threading.current_thread().name


async def arrived(runtime: Runtime, hand_off: Callable[[Callable[[str], None]], None]) -> str:
    """The name of the thread a value handed back to the asyncio loop was produced on."""
    result: asyncio.Future[str] = runtime.loop.create_future()
    hand_off(result.set_result)
    return await asyncio.wait_for(result, WAIT_S)


# -- hand-offs ----------------------------------------------------------------------------------------


def test_to_glib_and_call_in_glib_run_on_the_glib_thread() -> None:
    async def test(runtime: Runtime) -> None:
        # fire and forget: the GLib thread hands its name back to asyncio
        name = await arrived(
            runtime,
            lambda deliver: runtime.to_glib(lambda: runtime.to_loop(deliver, current_thread_name())),
        )
        assert name == "vcstream-glib"
        # waiting for the result, from a worker thread (it blocks)
        assert (
            await runtime.run_blocking("media", runtime.call_in_glib, current_thread_name) == "vcstream-glib"
        )

    run(test)


def test_to_loop_and_submit_coroutine_run_on_the_asyncio_thread() -> None:
    async def test(runtime: Runtime) -> None:
        loop_thread = threading.current_thread()
        seen: list[str] = []

        def from_glib(deliver: Callable[[str], None]) -> None:
            def on_loop() -> None:
                seen.append(current_thread_name())
                deliver(current_thread_name())

            runtime.to_glib(runtime.to_loop, on_loop)

        assert await arrived(runtime, from_glib) == loop_thread.name

        async def coroutine() -> str:
            return current_thread_name()

        future = await runtime.run_blocking("media", lambda: runtime.submit_coroutine(coroutine()))
        assert await asyncio.wrap_future(future) == loop_thread.name
        assert seen == [loop_thread.name]

    run(test)


# -- GLib timers --------------------------------------------------------------------------------------


async def witness_ticks(runtime: Runtime, interval_ms: int, ticks: int) -> None:
    """Wait until a second timer has ticked ``ticks`` times: timers due earlier had their turns."""
    counted = asyncio.Event()
    seen: list[int] = []

    def tick() -> bool:
        seen.append(1)
        if len(seen) < ticks:
            return True
        runtime.to_loop(counted.set)
        return False

    runtime.glib_timer(interval_ms, tick)
    await asyncio.wait_for(counted.wait(), WAIT_S)


def test_a_glib_timer_fires_on_the_glib_thread_until_cancelled() -> None:
    async def test(runtime: Runtime) -> None:
        ticks: list[str] = []
        three = threading.Event()

        def tick() -> bool:
            ticks.append(current_thread_name())
            if len(ticks) == 3:
                three.set()
            return True

        timer = runtime.glib_timer(5, tick)
        assert await runtime.run_blocking("media", three.wait, WAIT_S)
        timer.cancel()
        assert not timer.active
        count = len(ticks)
        await witness_ticks(runtime, 5, 4)
        assert len(ticks) == count
        assert set(ticks) == {"vcstream-glib"}
        timer.cancel()  # idempotent

    run(test)


def test_a_glib_timer_ends_when_its_callable_returns_false() -> None:
    async def test(runtime: Runtime) -> None:
        ended = threading.Event()
        ticks: list[int] = []

        def twice() -> bool:
            ticks.append(1)
            if len(ticks) == 2:
                ended.set()
                return False
            return True

        timer = runtime.glib_timer(1, twice)
        assert await runtime.run_blocking("media", ended.wait, WAIT_S)
        # the GLib thread is past the last tick once it has run a later hand-off
        await arrived(runtime, lambda deliver: runtime.to_glib(runtime.to_loop, deliver, "after"))
        assert not timer.active
        assert len(ticks) == 2

    run(test)


def test_a_failing_timer_is_logged_and_stops(caplog: pytest.LogCaptureFixture) -> None:
    async def test(runtime: Runtime) -> None:
        calls: list[int] = []

        def broken() -> bool:
            calls.append(1)
            raise ValueError("timer broke")

        timer = runtime.glib_timer(1, broken)
        await witness_ticks(runtime, 1, 4)
        assert not timer.active
        assert calls == [1]

    with caplog.at_level(logging.ERROR, logger="vcstream.media.mainloop"):
        run(test)
    failures = [r for r in caplog.records if "GLib timer" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None and "timer broke" in str(failures[0].exc_info[1])


# -- blocking work ------------------------------------------------------------------------------------


def test_blocking_work_runs_on_its_named_pool_and_not_on_a_loop_thread() -> None:
    async def test(runtime: Runtime) -> tuple[list[str], list[str], str]:
        media = await asyncio.gather(*(runtime.run_blocking("media", current_thread_name) for _ in range(8)))
        engine = await asyncio.gather(
            *(runtime.run_blocking("engine", current_thread_name) for _ in range(4))
        )
        return media, engine, threading.current_thread().name

    media, engine, loop_thread = run(test)
    assert all(name.startswith("vcstream-media_") for name in media)
    assert len(set(media)) <= POOLS["media"]  # bounded: never more threads than workers
    assert set(engine) == {"vcstream-engine_0"}
    assert loop_thread not in media + engine and "vcstream-glib" not in media + engine


def test_blocking_work_returns_its_result_or_raises_its_error() -> None:
    def fail() -> None:
        raise KeyError("not here")

    async def test(runtime: Runtime) -> None:
        assert await runtime.run_blocking("media", pow, 2, 10) == 1024
        with pytest.raises(KeyError, match="not here"):
            await runtime.run_blocking("media", fail)
        with pytest.raises(ConfigurationError, match="no thread pool 'gpu'"):
            runtime.run_blocking("gpu", pow, 2, 10)

    run(test)


def test_a_pool_needs_a_worker() -> None:
    async def test(runtime: Runtime) -> None:
        pass

    with pytest.raises(ConfigurationError, match="'media' needs at least one worker"):
        run(test, {"media": 0})


# -- errors and closing -------------------------------------------------------------------------------


def test_errors_in_handed_off_callables_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    def broken_glib() -> None:
        raise ValueError("glib side")

    def broken_loop() -> None:
        raise ValueError("loop side")

    async def broken_coroutine() -> None:
        raise ValueError("coroutine side")

    async def test(runtime: Runtime) -> None:
        runtime.to_glib(broken_glib)
        # hand-offs to one thread run in order: the next one arriving means the broken one ran
        await arrived(runtime, lambda deliver: runtime.to_glib(runtime.to_loop, deliver, ""))
        runtime.to_loop(broken_loop)
        await arrived(runtime, lambda deliver: runtime.to_loop(deliver, ""))
        with pytest.raises(ValueError, match="coroutine side"):
            await asyncio.wrap_future(runtime.submit_coroutine(broken_coroutine()))

    with caplog.at_level(logging.ERROR, logger="vcstream.media.mainloop"):
        run(test)
    logged = {str(r.exc_info[1]) for r in caplog.records if r.exc_info}
    assert {"glib side", "loop side", "coroutine side"} <= logged


def test_close_ends_every_runtime_thread_and_refuses_new_work(caplog: pytest.LogCaptureFixture) -> None:
    GLibLoop.shared().stop()  # a loop left by earlier tests: this runtime starts (and owns) its own
    before = {thread.ident for thread in threading.enumerate()}

    async def main() -> Runtime:
        runtime = Runtime.start(POOLS)
        # every kind of thread at work once
        await asyncio.gather(*(runtime.run_blocking("media", current_thread_name) for _ in range(4)))
        await runtime.run_blocking("engine", current_thread_name)
        await arrived(runtime, lambda deliver: runtime.to_glib(runtime.to_loop, deliver, ""))
        timer = runtime.glib_timer(1000, lambda: True)
        await runtime.close()
        assert not timer.active
        assert runtime.closed
        await runtime.close()  # idempotent

        for refused in (
            lambda: runtime.run_blocking("media", pow, 2, 2),
            lambda: runtime.to_glib(pow, 2, 2),
            lambda: runtime.call_in_glib(pow, 2, 2),
            lambda: runtime.glib_timer(10, lambda: True),
        ):
            with pytest.raises(RuntimeClosedError, match="the runtime is closed"):
                refused()

        async def never() -> None:
            raise AssertionError("must not run")

        with pytest.raises(RuntimeClosedError, match="the runtime is closed"):
            runtime.submit_coroutine(never())
        with caplog.at_level(logging.DEBUG, logger="vcstream.media.mainloop"):
            runtime.to_loop(pow, 2, 2)  # GStreamer's late events: dropped, not raised
        assert any("dropped" in r.getMessage() for r in caplog.records)
        return runtime

    runtime = asyncio.run(main())
    left = [t for t in threading.enumerate() if t.ident not in before]
    assert left == []
    assert not runtime.glib.running
    # the CLI's way keeps working after a runtime stopped the loop it had started
    assert GLibLoop.shared().call(current_thread_name) == "vcstream-glib"


def test_close_cancels_queued_work_and_waits_for_running_work() -> None:
    async def test(runtime: Runtime) -> None:
        started = asyncio.Event()
        release = threading.Event()

        def running() -> str:
            runtime.to_loop(started.set)
            release.wait(WAIT_S)
            return "finished"

        first = runtime.run_blocking("engine", running)
        queued = runtime.run_blocking("engine", current_thread_name)
        await asyncio.wait_for(started.wait(), WAIT_S)
        closing = asyncio.create_task(runtime.close())
        await asyncio.sleep(0)  # close starts: from here nothing new is accepted
        with pytest.raises(RuntimeClosedError, match="the runtime is closing"):
            runtime.run_blocking("engine", current_thread_name)
        release.set()
        await asyncio.wait_for(closing, WAIT_S)
        assert await first == "finished"
        with pytest.raises(asyncio.CancelledError):
            await queued

    run(test)


def test_a_runtime_leaves_a_glib_loop_it_did_not_start_running() -> None:
    shared = GLibLoop.shared()

    async def test(runtime: Runtime) -> None:
        assert runtime.glib is shared

    run(test)
    assert shared.running and GLibLoop.shared() is shared
    assert shared.call(current_thread_name) == "vcstream-glib"
