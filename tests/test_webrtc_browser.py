"""The browser client in a real headless Chromium (Debian's, driven by Playwright) against a real
server (aiohttp on a socket, webrtcbin, the WORLD engine).

Chromium's fake microphone plays flite speech of a male voice; the page records a reference with
MediaRecorder and uploads a female reference through its own form, starts the microphone and receives
the converted voice, which the test captures in the page with an AudioWorklet and checks: continuous
(no concealment, no drops) and converted toward the reference (F0 moved up to the reference's).
Then, in the same call: a voice switch from the page's selector (F0 follows), a second page told the
server is full and that the CPU engine serves, a server-side disconnect the page recovers from by
itself, and a page whose microphone permission is denied.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from browser_harness import (
    CAPTURE_JS,
    CAPTURE_S,
    captured,
    launch_chromium,
    looping_microphone,
    open_client_page,
    take,
    voiced_fraction,
    wait_for,
)
from conftest import Speech, median_f0, write_wav
from vcstream.media.webrtc import OPUS_RATE
from vcstream.service.keys import ADMISSION_KEY, SESSIONS_KEY
from webrtc_harness import Server, serving

playwright_api = pytest.importorskip("playwright.async_api")


async def _upload_through_ui(page: Any, name: str, path: Path) -> None:
    await page.fill("#voice-name", name)
    await page.set_input_files("#voice-file", str(path))
    await page.click("#upload-button")
    await page.wait_for_function(
        "name => document.getElementById('upload-status').textContent.includes('Added “' + name)",
        arg=name,
        timeout=20000,
    )


def test_browser_converts_switches_recovers_and_reports_states(
    tmp_path: Path, flite_speech: Speech, chromium: str
) -> None:
    microphone, _ = flite_speech("rms", None, OPUS_RATE)
    mic_wav = looping_microphone(tmp_path, microphone)
    high_ref = write_wav(tmp_path / "slt.wav", *flite_speech("slt", None, 16000))
    low_ref = write_wav(tmp_path / "kal16.wav", *flite_speech("kal16", None, 16000))
    f0_mic = median_f0(microphone, OPUS_RATE)
    f0_high = median_f0(flite_speech("slt", None, 16000)[0], 16000)
    f0_low = median_f0(flite_speech("kal16", None, 16000)[0], 16000)

    async def main() -> None:
        async with (
            serving(tmp_path / "data", max_sessions=1) as server,
            playwright_api.async_playwright() as pw,
        ):
            browser = await launch_chromium(pw, chromium, mic_wav)
            try:
                await _run(server, browser)
            finally:
                await browser.close()

    async def _run(server: Server, browser: Any) -> None:
        granted = await browser.new_context(
            permissions=["microphone"], viewport={"width": 1100, "height": 900}
        )
        page = await open_client_page(granted, server.base)
        assert await page.is_visible("#engine-banner") is False  # WORLD chosen explicitly: no fallback note

        # a reference recorded in the page (MediaRecorder, webm/opus, decoded by the server)
        await page.fill("#voice-name", "recorded")
        await page.click("#record-button")
        await asyncio.sleep(3.0)  # three seconds of the microphone recorded
        await page.click("#record-button")
        await page.wait_for_function(
            "document.getElementById('upload-status').textContent.includes('Added “recorded')", timeout=20000
        )
        # the reference the call uses, from a file; uploading selects it
        await _upload_through_ui(page, "slt", high_ref)
        names = await page.eval_on_selector_all("#voice-select option", "options => options.map(o => o.text)")
        assert [n.split(" (")[0] for n in names] == ["recorded", "slt"], names
        selected = await page.eval_on_selector("#voice-select", "s => s.selectedOptions[0].text")
        assert selected.startswith("slt"), selected

        # -- start: first converted audio ---------------------------------------------------------
        await page.click("#start-button")
        await wait_for(page, "!!window.vcstream.remoteStream", 10, "the remote track")
        await page.evaluate(CAPTURE_JS)
        await wait_for(page, "window.__capture.first", 10, "converted audio")
        timeline = await page.evaluate("({...window.vcstream.timeline, first: window.__capture.first})")
        click_ms, offer_ms = timeline["first"] - timeline["click"], timeline["first"] - timeline["offer"]
        print(f"\nclick -> first converted audio: {click_ms:.0f} ms")
        print(f"offer -> first converted audio: {offer_ms:.0f} ms")
        relative = {k: round(v - timeline["click"]) for k, v in timeline.items()}
        print(f"page timeline (ms after click): {relative}")
        await wait_for(page, "window.vcstream.callState === 'live'", 5, "the live state")

        start = await captured(page)
        await asyncio.sleep(CAPTURE_S)  # the stretch of the call the checks below measure
        converted, _ = await take(page, start)
        client = await page.evaluate("window.vcstream.clientStats")
        server_stats = await page.evaluate("window.vcstream.serverStats")
        f0_out = median_f0(converted, OPUS_RATE)
        concealed = client["concealed"] / max(1, client["samples"])
        print(
            f"F0: microphone {f0_mic:.0f} Hz, reference {f0_high:.0f} Hz, converted {f0_out:.0f} Hz; "
            f"voiced {voiced_fraction(converted, OPUS_RATE):.0%}, concealed {concealed:.2%}"
        )
        print(f"server stats: { {k: v for k, v in server_stats.items() if k not in ('v', 'type')} }")
        # a continuous stream: the browser concealed (almost) nothing, the server dropped nothing
        assert converted.shape[0] >= 0.95 * CAPTURE_S * OPUS_RATE
        assert concealed < 0.02
        assert server_stats["dropped_ms"] == 0 and server_stats["drop_events"] == 0
        assert voiced_fraction(converted, OPUS_RATE) > 0.5
        # converted toward the reference: F0 moved from the microphone's to the reference's
        assert abs(f0_mic / f0_high - 1) > 0.3
        assert abs(f0_out / f0_high - 1) < 0.15, (f0_mic, f0_high, f0_out)
        # the live figures are on screen
        for field in ("stat-latency", "stat-rtt", "stat-bitrate", "stat-inference"):
            assert "–" not in (await page.text_content(f"#{field}") or "–"), field
        # Chrome offers useinbandfec=1: the server sends FEC, and the page says so in one plain line
        assert server_stats["fec"] is True, server_stats
        assert server_stats["remote_jitter_ms"] is not None, server_stats  # Chrome's RRs lack it in 1.22
        network = await page.text_content("#network-line") or ""
        assert network.startswith("network: ") and network.endswith(", protected by FEC"), network

        # -- switch the voice from the selector, mid-call -----------------------------------------
        await _upload_through_ui(page, "kal16", low_ref)  # selects the new voice: switches at once
        await wait_for(
            page,
            "document.getElementById('call-status').textContent.includes('like kal16')",
            5,
            "the server confirmed the voice switch",
        )
        start = await captured(page) + OPUS_RATE // 2  # skip audio converted before it, still in flight
        await asyncio.sleep(3.5)  # three seconds in the new voice
        switched, _ = await take(page, start)
        f0_switched = median_f0(switched, OPUS_RATE)
        print(f"after switching to kal16 ({f0_low:.0f} Hz): converted {f0_switched:.0f} Hz")
        assert f0_switched < 0.8 * f0_out
        assert await page.evaluate("window.vcstream.callState") == "live"

        # -- a second page while the only place is taken: told the server is full -----------------
        # (and the server now reports the CPU engine standing in for Seed-VC, as `auto` does
        # without a GPU: the page must say so)
        primary = server.app[ADMISSION_KEY].primary
        primary.cpu_fallback, primary.note = True, "CPU engine (WORLD): no CUDA GPU found"
        second = await granted.new_page()
        await second.goto(server.base + "/")
        await second.wait_for_selector("#server-state[data-state='full']", timeout=10000)
        assert "full" in (await second.text_content("#server-state") or "").lower()
        await second.wait_for_selector("#engine-banner[data-kind='cpu']", state="visible", timeout=5000)
        assert "no CUDA GPU found" in (await second.text_content("#engine-banner") or "")
        await second.close()

        # -- the server drops the connection: the page reconnects and the audio comes back ---------
        dropped_at = time.perf_counter()
        await server.app[SESSIONS_KEY].close_all("test", final=False)
        await wait_for(page, "window.vcstream.callState === 'reconnecting'", 5, "the reconnecting state")
        await wait_for(page, "window.vcstream.callState === 'live'", 15, "live again")
        await wait_for(
            page,
            "!!window.vcstream.remoteStream && window.vcstream.remoteStream !== window.__capture.stream",
            5,
            "a new stream",
        )
        await page.evaluate(CAPTURE_JS)
        await wait_for(page, "window.__capture.first", 10, "converted audio after reconnecting")
        recovered = time.perf_counter() - dropped_at
        print(f"audio back {recovered:.1f} s after the server dropped the call")

        # -- stop: the place is free again --------------------------------------------------------
        await page.click("#start-button")
        await wait_for(page, "window.vcstream.callState === 'idle'", 5, "idle after stop")
        await granted.close()

        # -- microphone denied ---------------------------------------------------------------------
        denied = await browser.new_context(permissions=[])
        page = await open_client_page(denied, server.base)
        await page.click("#start-button")
        await page.wait_for_selector("#call-status[data-state='mic-denied']", timeout=10000)
        assert "denied" in (await page.text_content("#call-status") or "")
        await denied.close()

    started = time.perf_counter()
    asyncio.run(main())
    print(f"browser test: {time.perf_counter() - started:.1f} s")
