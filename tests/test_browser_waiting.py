"""Pages waiting in a full server's queue, in Chromium against a real server (passthrough engine, one
place): each page is told its position and moves up as the one before it leaves; a page that stops
waiting leaves the queue (its turn passes to the next page, not to it); the place, once freed, goes
to the page that waited."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from browser_harness import (
    choose_newest_voice,
    launch_chromium,
    looping_microphone,
    open_client_page,
    wait_for,
)
from conftest import Speech, write_wav
from vcstream.engines.passthrough import PassthroughEngine
from vcstream.media.webrtc import OPUS_RATE
from vcstream.service.keys import SESSIONS_KEY
from waiting import wait_until_async
from webrtc_harness import Server, serving

playwright_api = pytest.importorskip("playwright.async_api")


async def queued_page(context: Any, server: Server, position: int) -> Any:
    page = await context.new_page()
    await page.goto(server.base + "/")
    await page.wait_for_selector("#server-state[data-state='full']", timeout=10000)
    await choose_newest_voice(page)
    await page.click("#start-button")
    await wait_for(page, f"window.vcstream.waiting?.position === {position}", 10, f"position {position}")
    assert await page.evaluate("window.vcstream.callState") == "waiting"
    return page


def test_waiting_pages_move_up_and_a_page_that_stops_leaves_the_queue(
    tmp_path: Path, flite_speech: Speech, chromium: str
) -> None:
    microphone = looping_microphone(tmp_path, flite_speech("rms", None, OPUS_RATE)[0])
    reference = write_wav(tmp_path / "slt.wav", *flite_speech("slt", None, 16000))

    async def main() -> None:
        async with (
            serving(tmp_path / "data", running=PassthroughEngine(), max_sessions=1) as server,
            playwright_api.async_playwright() as pw,
        ):
            room = server.app[SESSIONS_KEY].waiting_room
            await server.upload(reference, "slt")
            browser = await launch_chromium(pw, chromium, microphone)
            try:
                context = await browser.new_context(permissions=["microphone"])
                calling = await open_client_page(context, server.base)
                await calling.click("#start-button")
                await wait_for(calling, "window.vcstream.callState === 'live'", 15, "the live state")

                leaving = await queued_page(context, server, 1)
                staying = await queued_page(context, server, 2)
                assert "number 2 in line" in str(await staying.text_content("#call-status"))
                assert room.waiting == 2

                await leaving.click("#start-button")  # Stop while waiting
                await wait_for(leaving, "window.vcstream.callState === 'idle'", 5, "idle after stop")
                await wait_for(staying, "window.vcstream.waiting?.position === 1", 5, "moved up")
                assert "next in line" in str(await staying.text_content("#call-status"))
                await wait_until_async(lambda: room.waiting == 1, 5, "one page left in the queue")

                await calling.click("#start-button")
                await wait_for(staying, "window.vcstream.callState === 'live'", 10, "the waiting page got in")
                assert await staying.evaluate("window.vcstream.micStream !== null")
                # the page that stopped stays stopped: not queued, no microphone
                left = (
                    "[window.vcstream.callState, window.vcstream.waiting?.queued, window.vcstream.micStream]"
                )
                assert await leaving.evaluate(left) == ["idle", False, None]
                assert room.waiting == 0
            finally:
                await browser.close()

    asyncio.run(main())
