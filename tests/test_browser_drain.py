"""Drain that moves calls, with a real browser and a real balancer: Chromium's page reaches two
servers (one voice library) through HAProxy, which health-checks /readyz and sends new connections
to the first ready server. When the server holding the call drains, the page is told (``draining``),
opens a new connection through the same URL, starts the same call on the other server and only then
leaves the first: the converted voice goes on without the user doing anything. With no other server
to go to, the page keeps its call where it is."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from browser_harness import (
    CAPTURE_JS,
    captured,
    launch_chromium,
    looping_microphone,
    open_client_page,
    take,
    voiced_fraction,
    wait_for,
)
from conftest import Speech, write_wav
from ports import free_port
from vcstream.media.webrtc import OPUS_RATE
from vcstream.service.app import drain
from vcstream.service.keys import SESSIONS_KEY
from waiting import wait_until_async
from webrtc_harness import Server, serving

playwright_api = pytest.importorskip("playwright.async_api")

#: seconds of the moved call's converted audio the test measures
MEASURED_S = 3.0
#: voiced share of 20 ms frames in converted speech (the microphone's sentence has its own pauses; a
#: call that stopped converting gives silence, ~0)
VOICED = 0.3


def _haproxy_config(port: int, servers: list[Server]) -> str:
    """HTTP mode (WebSockets pass through), health checks on /readyz every 200 ms, a server out after
    one failed check; ``balance first``: the first ready server takes every new connection."""
    backends = "\n".join(
        f"  server s{i} {s.server.host}:{s.server.port} check" for i, s in enumerate(servers)
    )
    return f"""
global
  maxconn 500
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  timeout tunnel 1h
  option forwardfor
frontend web
  bind 127.0.0.1:{port}
  default_backend replicas
backend replicas
  balance first
  option httpchk GET /readyz
  http-check expect status 200
  # a server out after one failed check; a check may take 2 s on a loaded machine (the default is inter)
  timeout check 2s
  default-server inter 200ms fall 1 rise 1
{backends}
"""


@asynccontextmanager
async def haproxy(folder: Path, servers: list[Server]) -> AsyncIterator[str]:
    """HAProxy in front of ``servers``; yields its base URL once it forwards to a ready server."""
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is missing: apt-get install haproxy (scripts/setup.sh does)")
    port = free_port()
    config = folder / "haproxy.cfg"
    config.write_text(_haproxy_config(port, servers))
    process = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block; it is waited for below
        ["haproxy", "-db", "-f", str(config)], stderr=subprocess.PIPE, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def forwards() -> bool:
                try:
                    async with http.get(f"{base}/readyz") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_until_async(forwards, 10, "HAProxy forwards to a ready server")
        yield base
    finally:
        process.terminate()
        process.communicate(timeout=10)


async def _move(page: Any) -> str:
    return str(await page.evaluate("JSON.stringify(window.vcstream.move)"))


def _calls(server: Server) -> int:
    return server.app[SESSIONS_KEY].calls


async def _start_call(page: Any) -> None:
    await page.click("#start-button")
    await wait_for(page, "!!window.vcstream.remoteStream", 15, "the remote track")
    await wait_for(page, "window.vcstream.callState === 'live'", 15, "the live state")


async def _converted_audio(page: Any) -> Any:
    """``MEASURED_S`` of what the page plays now (a capture of its current remote stream)."""
    await page.evaluate("window.__capture?.context.close()")  # an earlier capture's tap costs CPU
    await page.evaluate(CAPTURE_JS)
    await wait_for(page, "window.__capture.first", 15, "converted audio")
    start = await captured(page)
    await wait_for(
        page, f"window.__capture.chunks.length * 128 >= {start + MEASURED_S * OPUS_RATE}", 10, "audio"
    )
    audio, _ = await take(page, start)
    return audio


def _microphone(tmp_path: Path, flite_speech: Speech) -> tuple[Path, Path]:
    microphone, _ = flite_speech("rms", None, OPUS_RATE)
    reference = write_wav(tmp_path / "slt.wav", *flite_speech("slt", None, 16000))
    return looping_microphone(tmp_path, microphone), reference


def test_a_draining_server_moves_the_call_to_another_without_the_user(
    tmp_path: Path, flite_speech: Speech, chromium: str
) -> None:
    mic_wav, reference = _microphone(tmp_path, flite_speech)
    library = tmp_path / "data"  # one voice library for both servers, as in a cluster

    async def main() -> None:
        async with (
            serving(library, trusted_proxies=("127.0.0.1",)) as first,
            serving(library, trusted_proxies=("127.0.0.1",)) as second,
            haproxy(tmp_path, [first, second]) as base,
            playwright_api.async_playwright() as pw,
        ):
            voice = await first.upload(reference, "slt")
            browser = await launch_chromium(pw, chromium, mic_wav)
            try:
                context = await browser.new_context(permissions=["microphone"])
                page = await open_client_page(context, base)
                await _start_call(page)
                before = voiced_fraction(await _converted_audio(page), OPUS_RATE)
                assert before > VOICED
                assert (_calls(first), _calls(second)) == (1, 0)

                draining = asyncio.create_task(drain(first.app, grace_s=30))
                try:
                    await wait_for(page, "window.vcstream.moves === 1", 20, "the call moved")
                except AssertionError as exc:
                    raise AssertionError(f"{exc}; the page's tries: {await _move(page)}") from exc
                await wait_until_async(
                    lambda: (_calls(first), _calls(second)) == (0, 1),
                    10,
                    "the call runs on the second server only",
                    state=lambda: (_calls(first), _calls(second)),
                )
                # the first server's drain ends as soon as its call left, long before the grace
                assert await asyncio.wait_for(draining, 10) is True
                (moved,) = second.app[SESSIONS_KEY].calling()
                assert moved.voice_id == voice  # the same voice, chosen by the page without the user

                after = voiced_fraction(await _converted_audio(page), OPUS_RATE)
                tries = await page.evaluate("window.vcstream.move.attempts")
                print(
                    f"\nvoiced 20 ms frames: {before:.2f} before the move, {after:.2f} after ({tries} tries)"
                )
                assert after > VOICED
                assert await page.evaluate("window.vcstream.move.status") == "moved"
                assert await page.evaluate("window.vcstream.callState") == "live"
                status = await page.text_content("#call-status")
                assert status is not None and "moved to another server" in status
            finally:
                await browser.close()

    asyncio.run(main())


def test_with_nowhere_to_go_the_call_stays_until_the_server_ends_it(
    tmp_path: Path, flite_speech: Speech, chromium: str
) -> None:
    mic_wav, reference = _microphone(tmp_path, flite_speech)

    async def main() -> None:
        async with (
            serving(tmp_path / "data") as only,
            haproxy(tmp_path, [only]) as base,
            playwright_api.async_playwright() as pw,
        ):
            await only.upload(reference, "slt")
            browser = await launch_chromium(pw, chromium, mic_wav)
            try:
                context = await browser.new_context(permissions=["microphone"])
                page = await open_client_page(context, base)
                await _start_call(page)
                draining = asyncio.create_task(drain(only.app, grace_s=30))
                # the balancer has no ready server: the new connection is refused, the call stays
                await wait_for(page, "window.vcstream.move?.status === 'stayed'", 20, "the move given up")
                assert _calls(only) == 1 and not draining.done()
                assert voiced_fraction(await _converted_audio(page), OPUS_RATE) > VOICED
                status = await page.text_content("#call-status")
                assert status is not None and "continues on this server" in status
                await page.click("#start-button")  # the user hangs up: the drain ends
                assert await asyncio.wait_for(draining, 10) is True
            finally:
                await browser.close()

    asyncio.run(main())
