import asyncio
import threading

import pytest

from vcstream.media.mainloop import GLibLoop, Runtime


def test_call_runs_on_the_glib_thread_and_returns_its_result() -> None:
    loop = GLibLoop.shared()
    assert loop is GLibLoop.shared()  # one loop per process
    name = loop.call(lambda: threading.current_thread().name)
    assert name == "vcstream-glib"


def test_call_reraises_the_callbacks_exception() -> None:
    def fail() -> None:
        raise ValueError("from glib")

    with pytest.raises(ValueError, match="from glib"):
        GLibLoop.shared().call(fail)


def test_call_soon_survives_a_failing_callback() -> None:
    loop = GLibLoop.shared()
    done = threading.Event()
    loop.call_soon(lambda: 1 / 0)
    loop.call_soon(done.set)
    assert done.wait(2)


def test_bridge_hands_coroutines_from_other_threads_to_asyncio() -> None:
    async def main() -> str:
        runtime = Runtime.start({})
        result: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def deliver(value: str) -> None:
            result.set_result(f"{value} on {threading.current_thread().name}")

        runtime.to_glib(lambda: runtime.submit_coroutine(deliver("hello")))
        try:
            return await asyncio.wait_for(result, 2)
        finally:
            await runtime.close()

    assert asyncio.run(main()) == f"hello on {threading.main_thread().name}"
