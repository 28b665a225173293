"""The browser page in each of its states, in Chromium against a real server (passthrough engine, so
the calls cost little): the first screen of an empty library, a failed upload, a call's figures
(time to first audio, cleared after Stop), a full server (a waiting state with the microphone off, in
the server's queue, that gets in as soon as a place frees), a drain (said at once) and a server
restart (reconnected within 2 s of the server being back).

With VCSTREAM_SCREENSHOTS=<folder> each state is also saved as <folder>/<state>.png (docs/screenshots
holds the committed ones)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from browser_harness import (
    choose_newest_voice,
    launch_chromium,
    looping_microphone,
    open_client_page,
    wait_for,
)
from conftest import Speech, write_wav
from ports import free_port
from vcstream.engines.passthrough import PassthroughEngine
from vcstream.media.webrtc import OPUS_RATE
from vcstream.service.app import create_app, drain
from vcstream.service.config import ServiceSettings
from vcstream.service.signalling.connection import RETRY_FULL_S
from waiting import wait_until_async
from webrtc_harness import Server, serving

playwright_api = pytest.importorskip("playwright.async_api")

PHONE = {"width": 390, "height": 844}
#: the page's promise: a server that is back is reached within this many seconds
RECONNECT_WITHIN_S = 2.0
#: the voice selector's options (the first is the "choose a voice" placeholder)
VOICE_OPTIONS = "document.getElementById('voice-select').options.length"


async def snapshot(page: Any, state: str) -> None:
    folder = os.environ.get("VCSTREAM_SCREENSHOTS")
    if folder:
        await asyncio.to_thread(Path(folder).mkdir, parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(folder) / f"{state}.png"), full_page=True)


async def text(page: Any, selector: str) -> str:
    return str(await page.text_content(selector) or "")


async def start_live_call(page: Any) -> None:
    await page.click("#start-button")
    await wait_for(page, "window.vcstream.callState === 'live'", 15, "the live state")


Scenario = Callable[[Server, Any], Awaitable[None]]


def in_chromium(
    tmp_path: Path, flite_speech: Speech, chromium: str, scenario: Scenario, **settings: Any
) -> None:
    """Runs ``scenario(server, browser)`` with a passthrough server and Chromium (fake microphone)."""
    microphone = looping_microphone(tmp_path, flite_speech("rms", None, OPUS_RATE)[0])

    async def main() -> None:
        async with (
            serving(tmp_path / "data", running=PassthroughEngine(), **settings) as server,
            playwright_api.async_playwright() as pw,
        ):
            browser = await launch_chromium(pw, chromium, microphone)
            try:
                await scenario(server, browser)
            finally:
                await browser.close()

    asyncio.run(main())


def test_first_screen_shows_how_to_begin_and_a_failed_upload_keeps_its_inputs(
    tmp_path: Path, flite_speech: Speech, chromium: str
) -> None:
    reference = write_wav(tmp_path / "slt.wav", *flite_speech("slt", None, 16000))
    not_audio = tmp_path / "notes.txt"
    not_audio.write_text("this is not a recording\n")

    async def scenario(server: Server, browser: Any) -> None:
        phone = await browser.new_context(viewport=PHONE, permissions=["microphone"])
        page = await open_client_page(phone, server.base)
        await page.wait_for_selector("#first-steps", state="visible", timeout=5000)
        # the server runs --auth open (scripts/run.sh): the page says everyone shares it
        await page.wait_for_selector("#open-notice", state="visible", timeout=5000)
        assert await page.evaluate("document.getElementById('voice-select').value") == ""
        # on a phone the voice form comes before the call: it is the first thing to do
        voices_top = await page.evaluate("document.getElementById('voices-card').getBoundingClientRect().top")
        call_top = await page.evaluate("document.getElementById('call-title').getBoundingClientRect().top")
        assert voices_top < call_top
        await snapshot(page, "first-screen-phone")
        await page.click("#start-button")
        assert "Add a voice first" in await text(page, "#call-status")
        assert await page.evaluate("window.vcstream.micStream") is None

        # an upload the server refuses: the message says why, the name and the file stay
        await page.fill("#voice-name", "Ada")
        await page.set_input_files("#voice-file", str(not_audio))
        await page.click("#upload-button")
        await page.wait_for_selector("#upload-status[data-state='error']", timeout=10000)
        assert "Not added" in await text(page, "#upload-status")
        assert await page.input_value("#voice-name") == "Ada"
        assert await page.evaluate("document.getElementById('voice-file').files[0]?.name") == "notes.txt"
        await snapshot(page, "upload-failed")

        # a voice added elsewhere is not chosen for this visitor; deleted elsewhere, it leaves the list
        voice = await server.upload(reference, "someone else's")
        await page.evaluate("window.dispatchEvent(new Event('focus'))")
        await wait_for(
            page, "document.getElementById('voice-select').options.length === 2", 5, "the new voice"
        )
        assert await page.evaluate("document.getElementById('voice-select').value") == ""
        assert await page.is_hidden("#first-steps")
        async with server.http.delete(f"{server.base}/api/voices/{voice}") as response:
            assert response.status == 204
        await page.evaluate("window.dispatchEvent(new Event('focus'))")
        await wait_for(
            page, "document.getElementById('voice-select').options.length === 1", 5, "the voice gone"
        )

        desktop = await browser.new_context(permissions=["microphone"])
        await snapshot(await open_client_page(desktop, server.base), "first-screen")

    in_chromium(tmp_path, flite_speech, chromium, scenario)


def test_a_call_shows_its_time_to_first_audio_and_stop_clears_the_figures(
    tmp_path: Path, flite_speech: Speech, chromium: str
) -> None:
    reference = write_wav(tmp_path / "slt.wav", *flite_speech("slt", None, 16000))

    async def scenario(server: Server, browser: Any) -> None:
        await server.upload(reference, "slt")
        context = await browser.new_context(permissions=["microphone"])
        page = await open_client_page(context, server.base)
        await start_live_call(page)
        ttfa = await wait_for(
            page,
            "(t => t !== '–' && t)(document.getElementById('stat-ttfa').textContent)",
            10,
            "time to first audio shown",
        )
        seconds = float(ttfa.split()[0])
        print(f"\ntime to first audio shown: {ttfa}")
        assert 0 < seconds < 10
        await wait_for(page, "document.getElementById('stat-latency').textContent !== '–'", 5, "live figures")
        await snapshot(page, "live")

        await page.click("#start-button")
        await wait_for(page, "window.vcstream.callState === 'idle'", 5, "idle after stop")
        figures = await page.eval_on_selector_all("#stats dd", "dds => dds.map(d => [d.id, d.textContent])")
        # "–" is the page's "no figure" ("– / –" for the two-way ones)
        assert all(set(value.replace("/", " ").split()) == {"–"} for _, value in figures), figures
        await snapshot(page, "stopped")

    in_chromium(tmp_path, flite_speech, chromium, scenario)


def test_a_full_server_keeps_the_call_waiting_with_the_microphone_off_until_a_place_frees(
    tmp_path: Path, flite_speech: Speech, chromium: str
) -> None:
    reference = write_wav(tmp_path / "slt.wav", *flite_speech("slt", None, 16000))

    async def scenario(server: Server, browser: Any) -> None:
        await server.upload(reference, "slt")
        context = await browser.new_context(permissions=["microphone"])
        first = await open_client_page(context, server.base)
        await start_live_call(first)

        second = await context.new_page()
        await second.goto(server.base + "/")
        await second.wait_for_selector("#server-state[data-state='full']", timeout=10000)
        await choose_newest_voice(second)
        await second.click("#start-button")
        await wait_for(second, "window.vcstream.callState === 'waiting'", 10, "the waiting state")
        status = await text(second, "#call-status")
        assert "waiting" in status and "microphone is off" in status, status
        assert "Connection lost" not in status and "not reachable" not in status
        # in the server's queue (hello with "wait"), next in line
        assert await second.evaluate(
            "[window.vcstream.waiting.queued, window.vcstream.waiting.position]"
        ) == [
            True,
            1,
        ]
        assert "next in line" in status, status
        await wait_for(second, "window.vcstream.waiting?.attempts >= 2", 20, "a second try")
        assert await second.evaluate("window.vcstream.callState") == "waiting"
        assert await second.evaluate("window.vcstream.micStream") is None
        await snapshot(second, "server-full")

        freed_at = time.perf_counter()
        await first.click("#start-button")
        await wait_for(second, "window.vcstream.callState === 'live'", 40, "the waiting call got in")
        got_in_s = time.perf_counter() - freed_at
        print(f"\nthe waiting call got in {got_in_s:.1f} s after the place freed")
        # the queue hands the place over at once: a retry of a fresh connection comes 0.8-1.2 x the
        # server's hint (15 s) after the last one at the earliest, so this came through the queue
        assert got_in_s < 0.8 * RETRY_FULL_S, got_in_s
        assert await second.evaluate("window.vcstream.micStream !== null")

    in_chromium(tmp_path, flite_speech, chromium, scenario, max_sessions=1)


def test_a_drain_is_announced_to_the_page_at_once(
    tmp_path: Path, flite_speech: Speech, chromium: str
) -> None:
    reference = write_wav(tmp_path / "slt.wav", *flite_speech("slt", None, 16000))

    async def scenario(server: Server, browser: Any) -> None:
        await server.upload(reference, "slt")
        context = await browser.new_context(permissions=["microphone"])
        page = await open_client_page(context, server.base)
        await start_live_call(page)
        draining = asyncio.create_task(drain(server.app, grace_s=6.0))
        told_at = time.perf_counter()
        await page.wait_for_selector("#server-state[data-state='draining']", timeout=2000)
        await wait_for(page, "window.vcstream.callState === 'moving'", 2, "the moving state")
        print(f"\ndrain shown {time.perf_counter() - told_at:.2f} s after it began")
        assert "shutting down" in await text(page, "#call-status")
        await snapshot(page, "draining")
        # no other server: the call stays, and the page says for how long
        await wait_for(page, "window.vcstream.move?.status === 'stayed'", 10, "the move given up")
        assert "no other server could take your call" in await text(page, "#call-status")
        await draining

    in_chromium(tmp_path, flite_speech, chromium, scenario)


@asynccontextmanager
async def server_on(port: int, data_dir: Path) -> AsyncIterator[str]:
    """A passthrough server on ``port`` (the same address across a restart); yields its base URL once
    /readyz answers 200."""
    app = create_app(ServiceSettings(port=0, data_dir=data_dir, webrtc_latency_ms=20), PassthroughEngine())
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                async with http.get(f"{base}/readyz") as response:
                    return response.status == 200

            await wait_until_async(ready, 10, "the server became ready")
        yield base
    finally:
        await server.close()


def test_the_page_reconnects_within_2_s_of_a_restarted_server_being_back(
    tmp_path: Path, flite_speech: Speech, chromium: str
) -> None:
    microphone = looping_microphone(tmp_path, flite_speech("rms", None, OPUS_RATE)[0])
    port = free_port()

    async def main() -> None:
        async with playwright_api.async_playwright() as pw:
            browser = await launch_chromium(pw, chromium, microphone)
            try:
                context = await browser.new_context(permissions=["microphone"])
                async with server_on(port, tmp_path / "data") as base:
                    page = await open_client_page(context, base)
                # down long enough for the page's pauses to have grown to their longest
                await page.wait_for_selector("#server-state[data-state='down']", timeout=10000)
                await wait_for(page, "window.vcstream.reconnectAttempts >= 6", 20, "six failed tries")
                await snapshot(page, "reconnecting")
                async with server_on(port, tmp_path / "data"):
                    back_at = time.perf_counter()
                    await page.wait_for_selector("#server-state[data-state='ready']", timeout=10000)
                    took = time.perf_counter() - back_at
                    print(f"\nreconnected {took:.2f} s after the server was back")
                    assert took < RECONNECT_WITHIN_S
            finally:
                await browser.close()

    asyncio.run(main())
