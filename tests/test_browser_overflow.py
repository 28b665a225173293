"""Chromium against a server whose engine is passthrough with one place and WORLD as its overflow
engine: the passthrough call gives the microphone back unchanged, and a second page, arriving while
the place is taken, is told in its banner that its call runs on the overflow CPU engine, and that call
converts toward the chosen voice."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from browser_harness import (
    CAPTURE_JS,
    captured,
    launch_chromium,
    looping_microphone,
    open_client_page,
    take,
    wait_for,
)
from conftest import Speech, median_f0, write_wav
from vcstream.engines.passthrough import PassthroughEngine
from vcstream.media.webrtc import OPUS_RATE
from vcstream.service.keys import ADMISSION_KEY
from webrtc_harness import serving

playwright_api = pytest.importorskip("playwright.async_api")
#: seconds of each call's output the checks measure
MEASURED_S = 3.0


async def _start_and_capture(page: Any) -> np.ndarray:
    await page.click("#start-button")
    await wait_for(page, "!!window.vcstream.remoteStream", 10, "the remote track")
    await page.evaluate(CAPTURE_JS)
    await wait_for(page, "window.__capture.first", 15, "converted audio")
    await wait_for(page, "window.vcstream.callState === 'live'", 5, "the live state")
    start = await captured(page)
    await asyncio.sleep(MEASURED_S)
    audio, _ = await take(page, start)
    return audio


def test_passthrough_in_chromium_and_an_overflow_call_on_the_cpu_engine(
    tmp_path: Path, flite_speech: Speech, chromium: str
) -> None:
    microphone, _ = flite_speech("rms", None, OPUS_RATE)
    mic_wav = looping_microphone(tmp_path, microphone)
    reference = write_wav(tmp_path / "slt.wav", *flite_speech("slt", None, 16000))
    f0_mic = median_f0(microphone, OPUS_RATE)
    f0_reference = median_f0(flite_speech("slt", None, 16000)[0], 16000)

    async def main() -> None:
        async with (
            serving(
                tmp_path / "data", running=PassthroughEngine(), max_sessions=1, overflow_engine="world"
            ) as server,
            playwright_api.async_playwright() as pw,
        ):
            await server.upload(reference, "slt")
            browser = await launch_chromium(pw, chromium, mic_wav)
            try:
                context = await browser.new_context(permissions=["microphone"])
                first = await open_client_page(context, server.base)
                passed = await _start_and_capture(first)
                f0_passed = median_f0(passed, OPUS_RATE)
                print(f"\npassthrough: microphone {f0_mic:.0f} Hz, out {f0_passed:.0f} Hz")
                assert passed.shape[0] >= 0.95 * MEASURED_S * OPUS_RATE
                assert abs(f0_passed / f0_mic - 1) < 0.1  # the microphone, unchanged

                # the page also asks /api/info, which names the server's primary engine; when that
                # answer comes after the signalling's "ready" (seen under load), it must not replace
                # the overflow engine "ready" named
                async def answer_late(route: Any) -> None:
                    await asyncio.sleep(1.0)
                    await route.continue_()

                await context.route("**/api/info", answer_late)
                second = await open_client_page(context, server.base)
                await asyncio.sleep(1.5)  # the late answer has come
                banner = "#engine-banner[data-kind='overflow']"
                await second.wait_for_selector(banner, state="visible", timeout=5000)
                assert "places are all taken" in (await second.text_content(banner) or "")
                converted = await _start_and_capture(second)
                f0_converted = median_f0(converted, OPUS_RATE)
                print(f"overflow (world): reference {f0_reference:.0f} Hz, out {f0_converted:.0f} Hz")
                assert converted.shape[0] >= 0.9 * MEASURED_S * OPUS_RATE
                assert abs(f0_converted / f0_reference - 1) < 0.2  # WORLD moved it to the voice
                admission = server.app[ADMISSION_KEY]
                assert [slot.active for slot in admission.slots] == [1, 1]
            finally:
                await browser.close()

    asyncio.run(main())
