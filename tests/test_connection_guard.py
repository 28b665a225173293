"""The server's guards below the handlers, with real sockets against the real application run as
``vcstream serve`` runs it (``app_runner`` + ``GuardedSite``): slow request headers and bodies are cut
after their deadline while normal requests are served, and connections past the cap are answered
503 without being read while the server keeps serving."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from vcstream.engines.passthrough import PassthroughEngine
from vcstream.service.app import create_app
from vcstream.service.config import ServiceSettings
from vcstream.service.connection_guard import (
    MIN_BODY_BYTES_PER_S,
    REFUSAL,
    ConnectionCap,
    GuardedSite,
    app_runner,
)
from waiting import wait_until_async


@dataclass
class Running:
    app: web.Application
    cap: ConnectionCap
    port: int

    async def get(self, path: str) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{self.port}{path}", timeout=aiohttp.ClientTimeout(total=5)) as r,
        ):
            return r.status, await r.text()

    async def raw(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


@asynccontextmanager
async def guarded(tmp_path: Path, **changes: Any) -> AsyncIterator[Running]:
    settings = ServiceSettings(host="127.0.0.1", port=0, data_dir=tmp_path / "var", **changes)
    runner = app_runner(create_app(settings, PassthroughEngine()), settings.header_timeout_s)
    await runner.setup()
    cap = ConnectionCap(settings.max_connections)
    site = GuardedSite(runner, settings.host, settings.port, cap)
    try:
        await site.start()
        yield Running(runner.app, cap, runner.addresses[0][1])
    finally:
        await runner.cleanup()


async def _closed_by_server(reader: asyncio.StreamReader, within_s: float) -> bytes:
    """Everything the server sent until it closed the connection (fails if it does not within). A
    reset counts as a close: closing a socket with unread input makes the kernel send one."""
    received = b""
    try:
        async with asyncio.timeout(within_s):
            while chunk := await reader.read(65536):
                received += chunk
    except ConnectionResetError:
        pass
    return received


async def _dribble(writer: asyncio.StreamWriter, first: bytes, every_s: float) -> None:
    """Send ``first``, then one more header byte every ``every_s`` (a slowloris)."""
    writer.write(first)
    while True:
        await asyncio.sleep(every_s)  # the attacker's pace, not a wait for a condition
        writer.write(b"X")
        await writer.drain()


def test_slow_headers_are_cut_after_the_timeout_while_normal_requests_are_served(tmp_path: Path) -> None:
    slow = 30

    async def main() -> None:
        async with guarded(tmp_path, header_timeout_s=1.0) as server:
            connections = [await server.raw() for _ in range(slow)]
            started = time.monotonic()
            dribbling = [
                asyncio.create_task(_dribble(w, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ", 0.2))
                for _, w in connections
            ]
            try:
                await wait_until_async(lambda: server.cap.open >= slow, 5, "the slow clients connected")
                assert await server.get("/healthz") == (200, '{"status":"ok"}')
                sent = await asyncio.gather(*(_closed_by_server(r, 10) for r, _ in connections))
                elapsed = time.monotonic() - started
            finally:
                for task in dribbling:
                    task.cancel()
                for _, writer in connections:
                    writer.close()
            print(f"\n{slow} slowloris connections closed after {elapsed:.2f} s (header timeout 1 s)")
            assert sent == [b""] * slow  # closed without an answer: no request was ever complete
            assert 0.9 < elapsed < 5
            assert await server.get("/healthz") == (200, '{"status":"ok"}')
            await wait_until_async(lambda: server.cap.open == 0, 5, "every connection was counted out")

    asyncio.run(main())


def test_a_slow_body_is_cut_and_a_fast_one_is_answered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vcstream.service.connection_guard")

    async def main() -> None:
        async with guarded(tmp_path, header_timeout_s=1.0) as server:
            await wait_until_async(lambda: _ready(server), 20, "the server became ready")
            reader, writer = await server.raw()
            head = (
                b"POST /api/voices HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 100000\r\n\r\n--b\r\n"
            )
            started = time.monotonic()
            dribbling = asyncio.create_task(_dribble(writer, head, 0.2))
            try:
                sent = await _closed_by_server(reader, 10)
            finally:
                dribbling.cancel()
                writer.close()
            elapsed = time.monotonic() - started
            print(f"\na body at 5 B/s was cut after {elapsed:.2f} s (at least {MIN_BODY_BYTES_PER_S} B/s)")
            assert sent == b"" and 0.9 < elapsed < 5

            # a body that arrives at once gets its answer (a refusal of what it contains)
            async with aiohttp.ClientSession() as http:
                form = aiohttp.FormData()
                form.add_field("name", "noise")
                form.add_field("file", b"not a wav" * 20000, filename="x.wav", content_type="audio/wav")
                async with http.post(f"http://127.0.0.1:{server.port}/api/voices", data=form) as response:
                    assert response.status == 415, await response.text()
                    assert (await response.json())["error"] == "unsupported_media_type"

    asyncio.run(main())
    # the cut is the guard's doing, not a handler failure: logged as information only
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("body slower than" in r.getMessage() for r in caplog.records)


async def _ready(server: Running) -> bool:
    return (await server.get("/readyz"))[0] == 200


def test_connections_beyond_the_cap_are_refused_unread_and_the_server_keeps_serving(
    tmp_path: Path,
) -> None:
    cap = 8

    async def main() -> None:
        async with guarded(tmp_path, max_connections=cap, header_timeout_s=30.0) as server:
            held = [await server.raw() for _ in range(cap)]  # connected, sending nothing
            await wait_until_async(lambda: server.cap.open == cap, 5, "the cap is reached")
            refused = [await server.raw() for _ in range(3)]
            answers = await asyncio.gather(*(_closed_by_server(r, 5) for r, _ in refused))
            # the 503, then the close, though nothing was sent: the request was never read
            assert answers == [REFUSAL] * 3
            assert (
                REFUSAL.startswith(b"HTTP/1.1 503 Service Unavailable\r\n") and b"Retry-After: 1" in REFUSAL
            )
            assert server.cap.refused == 3 and server.cap.open == cap
            for _, writer in refused:
                writer.close()

            # a held connection still gets its request served; then one goes and a newcomer is served
            reader, writer = held[0]
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert (await _closed_by_server(reader, 5)).startswith(b"HTTP/1.1 200 OK\r\n")
            writer.close()
            await wait_until_async(
                lambda: server.cap.open == cap - 1, 5, "the served connection was counted out"
            )
            assert await server.get("/healthz") == (200, '{"status":"ok"}')
            for _, writer in held[1:]:
                writer.close()
            await wait_until_async(lambda: server.cap.open == 0, 5, "every connection was counted out")

    asyncio.run(main())
