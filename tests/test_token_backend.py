"""examples/token_backend.py against a real server with --auth required: the backend exchanges its API
key for an access token, and the browser page opened with ``#token=`` connects with it and lists the
tenant's voice; without a token the page says it is not signed in instead of reconnecting forever."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from aiohttp.test_utils import TestServer

from browser_harness import launch_chromium, looping_microphone, wait_for
from conftest import Speech
from test_tenant_calls import SECRET, paid_service, upload
from vcstream.engines.passthrough import PassthroughEngine
from vcstream.media.webrtc import OPUS_RATE
from webrtc_harness import reference_wav, serving

playwright_api = pytest.importorskip("playwright.async_api")
EXAMPLE = Path(__file__).parent.parent / "examples" / "token_backend.py"


def token_backend() -> ModuleType:
    spec = importlib.util.spec_from_file_location("token_backend", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_backend_mints_a_token_the_page_calls_with(
    tmp_path: Path, flite_speech: Speech, chromium: str
) -> None:
    data = tmp_path / "data"
    key = paid_service(data)
    microphone = looping_microphone(tmp_path, flite_speech("rms", None, OPUS_RATE)[0])
    example = token_backend()

    async def main() -> None:
        async with (
            serving(
                data,
                running=PassthroughEngine(),
                auth="required",
                token_secret=SECRET,
                plans_file=data / "plans.json",
            ) as server,
            playwright_api.async_playwright() as pw,
        ):
            await upload(server, key, reference_wav(tmp_path, flite_speech, "awb"))
            async with server.http.get(f"{server.base}/api/info") as response:
                assert (await response.json())["auth"] == "required"

            backend = TestServer(example.create_app(server.base, key, ttl_s=60), host="127.0.0.1")
            wrong = TestServer(example.create_app(server.base, "vcs_not_a_key"), host="127.0.0.1")
            await backend.start_server()
            await wrong.start_server()
            try:
                async with server.http.post(str(backend.make_url("/token"))) as response:
                    assert response.status == 200
                    minted = await response.json()
                async with server.http.post(str(wrong.make_url("/token"))) as response:
                    assert response.status == 502 and await response.json() == {"error": "no_token"}
            finally:
                await backend.close()
                await wrong.close()
            access = minted["token"]
            assert key not in access

            browser = await launch_chromium(pw, chromium, microphone)
            try:
                context = await browser.new_context(permissions=["microphone"])
                page = await context.new_page()
                await page.goto(f"{server.base}/#token={access}")
                await page.wait_for_selector("#server-state[data-state='ready']", timeout=10000)
                names = await page.eval_on_selector_all("#voice-select option", "os => os.map(o => o.text)")
                assert [n.split(" (")[0] for n in names[1:]] == ["awb"], names
                assert await page.is_hidden("#open-notice")  # a service with accounts is not "open"

                anonymous = await context.new_page()
                await anonymous.goto(server.base + "/")
                await wait_for(
                    anonymous, "window.vcstream.refused === 'unauthorized'", 10, "the page not signed in"
                )
                assert "not signed in" in (await anonymous.text_content("#call-status") or "")
                assert await anonymous.evaluate("window.vcstream.reconnectAttempts ?? 0") == 0
            finally:
                await browser.close()

    asyncio.run(main())
