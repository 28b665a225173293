"""The waiting room of a full server, against a real server (aiohttp on a socket, the passthrough
engine): a ``hello`` with ``"reserve": true, "wait": true`` that finds every place taken is queued and
told its position (``waiting``); places given back go to the waiters first come first served, as a
reservation announced with ``ready``; the queue is bounded; a waiter that leaves lets those behind it
move up; a drain turns every waiter away at once. The places here are held by reserving hellos (a
place each, given back when their connection closes or the reservation expires), so no call is
needed to fill the server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from vcstream.engines.passthrough import PassthroughEngine
from vcstream.service.app import drain
from vcstream.service.keys import ADMISSION_KEY, METRICS_KEY
from vcstream.service.signalling import connection as signalling_connection
from vcstream.service.signalling.connection import RETRY_FULL_S
from vcstream.service.signalling.waiting_room import QUEUE_FACTOR
from waiting import wait_until_async
from webrtc_harness import Server, receive_json, serving, settled

Socket = aiohttp.ClientWebSocketResponse


@asynccontextmanager
async def full_server(tmp_path: Path, places: int) -> AsyncIterator[tuple[Server, list[Socket]]]:
    """A server with ``places`` places, each held by a reserving connection (returned, open)."""
    async with serving(tmp_path / "data", running=PassthroughEngine(), max_sessions=places) as server:
        assert server.app[ADMISSION_KEY].places == places
        holders = [await server.http.ws_connect(server.ws_url) for _ in range(places)]
        try:
            for holder in holders:
                assert (await hello(holder, reserve=True))["type"] == "ready"
            yield server, holders
        finally:
            for holder in holders:
                await holder.close()
        await settled(server)


async def hello(ws: Socket, **fields: object) -> dict[str, Any]:
    await ws.send_str(json.dumps({"v": 1, "type": "hello", **fields}))
    return await receive_json(ws)


async def queue(server: Server, stack: AsyncExitStack, expected_position: int) -> Socket:
    """A new connection that waits for a place; it must be told ``expected_position``."""
    ws = await stack.enter_async_context(server.http.ws_connect(server.ws_url))
    told = await hello(ws, reserve=True, wait=True)
    assert told == {"v": 1, "type": "waiting", "position": expected_position, "retry_after_s": RETRY_FULL_S}
    return ws


def waiters_gauge(server: Server) -> float:
    for line in server.app[METRICS_KEY].render().decode().splitlines():
        if line.startswith("vcstream_waiting_connections "):
            return float(line.split()[1])
    raise AssertionError("no vcstream_waiting_connections in /metrics")


async def closed_with(ws: Socket, wait_s: float = 5.0) -> int | None:
    message = await ws.receive(timeout=wait_s)
    assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), message
    return ws.close_code


def test_places_go_to_the_waiters_in_the_order_they_came(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(signalling_connection, "RESERVE_S", 1.0)

    async def main() -> None:
        async with full_server(tmp_path, 1) as (server, [holder]), AsyncExitStack() as stack:
            admission = server.app[ADMISSION_KEY]
            first = await queue(server, stack, 1)
            second = await queue(server, stack, 2)
            assert waiters_gauge(server) == 2
            freed_at = time.perf_counter()
            await holder.close()
            ready = await receive_json(first)
            waited_ms = 1000 * (time.perf_counter() - freed_at)
            print(f"\nthe first waiter was ready {waited_ms:.0f} ms after the place was given back")
            assert ready["type"] == "ready" and ready["voices"] == [] and ready["settings"]
            assert await receive_json(second) == {
                "v": 1,
                "type": "waiting",
                "position": 1,
                "retry_after_s": RETRY_FULL_S,
            }
            # the place was taken for the first waiter: a newcomer finds the server full
            assert admission.active == 1 and waiters_gauge(server) == 1
            async with server.http.ws_connect(server.ws_url) as newcomer:
                refused = await hello(newcomer, reserve=True)
                assert (refused["code"], refused["fatal"]) == ("server_full", True)
            # the first waiter holds it as a reservation: unused, it expires and goes to the next
            assert (await receive_json(second, 5.0))["type"] == "ready"
            assert admission.active == 1 and waiters_gauge(server) == 0

    asyncio.run(main())


def test_the_queue_is_bounded_and_a_hello_without_wait_is_refused_as_before(tmp_path: Path) -> None:
    async def main() -> None:
        async with full_server(tmp_path, 1) as (server, _), AsyncExitStack() as stack:
            for position in range(1, QUEUE_FACTOR + 1):
                await queue(server, stack, position)
            for fields in ({"reserve": True, "wait": True}, {"wait": True}, {"reserve": True}, {}):
                async with server.http.ws_connect(server.ws_url) as ws:
                    refused = await hello(ws, **fields)
                    assert (refused["code"], refused["fatal"], refused["retry_after_s"]) == (
                        "server_full",
                        True,
                        RETRY_FULL_S,
                    ), fields
                    assert await closed_with(ws) == 1008
            assert waiters_gauge(server) == QUEUE_FACTOR

    asyncio.run(main())


def test_a_waiter_that_leaves_lets_the_others_move_up(tmp_path: Path) -> None:
    async def main() -> None:
        async with full_server(tmp_path, 1) as (server, [holder]), AsyncExitStack() as stack:
            first = await queue(server, stack, 1)
            second = await queue(server, stack, 2)
            # a waiter may not call before its place came
            await second.send_str(json.dumps({"v": 1, "type": "offer", "sdp": "v=0", "voice": "x"}))
            assert (await receive_json(second))["code"] == "unexpected"
            await first.close()
            assert (await receive_json(second))["position"] == 1
            await wait_until_async(lambda: waiters_gauge(server) == 1, 5, "the gauge counts one waiter")
            await holder.close()
            assert (await receive_json(second))["type"] == "ready"
            assert waiters_gauge(server) == 0

    asyncio.run(main())


def test_two_places_freed_at_once_go_to_the_first_two_waiters(tmp_path: Path) -> None:
    async def main() -> None:
        async with full_server(tmp_path, 2) as (server, holders), AsyncExitStack() as stack:
            admission = server.app[ADMISSION_KEY]
            waiters = [await queue(server, stack, position) for position in (1, 2, 3)]
            await asyncio.gather(*(holder.close() for holder in holders))
            assert (await receive_json(waiters[0]))["type"] == "ready"
            assert (await receive_json(waiters[1]))["type"] == "ready"
            # the third moved up as the places were handed out (once or twice), and is next now
            told = [await receive_json(waiters[2])]
            while told[-1]["position"] != 1:
                told.append(await receive_json(waiters[2]))
            assert {m["type"] for m in told} == {"waiting"}
            assert admission.active == 2 and waiters_gauge(server) == 1

    asyncio.run(main())


def test_a_drain_turns_every_waiter_away_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with full_server(tmp_path, 1) as (server, _), AsyncExitStack() as stack:
            waiters = [await queue(server, stack, position) for position in (1, 2)]
            started = time.perf_counter()
            assert await drain(server.app, grace_s=0.2)  # no session runs (the place is a reservation)
            for ws in waiters:
                error = await receive_json(ws)
                assert (error["code"], error["fatal"]) == ("server_draining", True)
                assert await closed_with(ws) == 1008
            assert time.perf_counter() - started < 2.0
            assert waiters_gauge(server) == 0
            async with server.http.ws_connect(server.ws_url) as late:
                refused = await hello(late, reserve=True, wait=True)
                assert (refused["code"], refused["fatal"]) == ("server_draining", True)

    asyncio.run(main())
