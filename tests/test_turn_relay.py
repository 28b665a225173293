"""A call relayed through a real TURN server (coturn, `use-auth-secret`): the server hands the page
time-limited credentials, the page may use relay candidates only, and the converted audio arrives.
coturn's own log shows that both the browser and the server's webrtcbin were allocated relays with
the credentials the server issued, and that it refuses credentials signed with another secret."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aioice.stun
import aioice.turn
import numpy as np
import pytest

from browser_harness import (
    CAPTURE_JS,
    captured,
    launch_chromium,
    open_client_page,
    take,
    voiced_fraction,
    wait_for,
)
from conftest import Speech, write_wav
from turn_harness import Coturn, running_coturn
from vcstream.media.webrtc import OPUS_RATE
from vcstream.service.ice import turn_credentials
from waiting import wait_until_async
from webrtc_harness import Server, serving

playwright_api = pytest.importorskip("playwright.async_api")

SECRET = "vcstream-test-turn-secret"
REALM = "vcstream.test"

# every RTCPeerConnection the page makes may gather relay candidates only: no host path exists
RELAY_ONLY_JS = """
(() => {
  const Native = window.RTCPeerConnection;
  function RelayOnly(config, ...rest) {
    const pc = new Native({ ...(config || {}), iceTransportPolicy: "relay" }, ...rest);
    (window.__peerConnections ||= []).push(pc);
    return pc;
  }
  RelayOnly.prototype = Native.prototype;
  Object.setPrototypeOf(RelayOnly, Native);
  window.RTCPeerConnection = RelayOnly;
})();
"""

# the local and remote candidate types of the pair the call uses
SELECTED_PAIR_JS = """
async () => {
  const pc = window.__peerConnections[window.__peerConnections.length - 1];
  const stats = await pc.getStats();
  const byId = new Map();
  stats.forEach((s) => byId.set(s.id, s));
  for (const s of byId.values()) {
    if (s.type === "transport" && s.selectedCandidatePairId) {
      const pair = byId.get(s.selectedCandidatePairId);
      return { local: byId.get(pair.localCandidateId).candidateType,
               remote: byId.get(pair.remoteCandidateId).candidateType };
    }
  }
  return null;
}
"""


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[Coturn]:
    with running_coturn(tmp_path, SECRET, REALM) as server:
        yield server


async def _relayed_sessions(server: Server) -> float:
    async with server.http.get(f"{server.base}/metrics") as response:
        text = await response.text()
    match = re.search(r"^vcstream_relayed_sessions (\S+)$", text, re.MULTILINE)
    assert match is not None, "no vcstream_relayed_sessions on /metrics"
    return float(match.group(1))


def test_call_through_turn_with_the_servers_credentials(
    tmp_path: Path, coturn: Coturn, flite_speech: Speech, chromium: str
) -> None:
    microphone, _ = flite_speech("rms", None, OPUS_RATE)
    mic_wav = write_wav(tmp_path / "microphone.wav", np.concatenate([microphone, microphone]), OPUS_RATE)
    reference = write_wav(tmp_path / "slt.wav", *flite_speech("slt", None, 16000))

    async def main() -> None:
        async with (
            serving(tmp_path / "data", turn_urls=(coturn.url,), turn_secret=SECRET) as server,
            playwright_api.async_playwright() as pw,
        ):
            await server.upload(reference, "slt")
            browser = await launch_chromium(pw, chromium, mic_wav)
            try:
                context = await browser.new_context(permissions=["microphone"])
                await context.add_init_script(RELAY_ONLY_JS)
                await _call(await open_client_page(context, server.base))
                # the server sees it too: its side of the selected pair has the browser's relay
                await wait_until_async(
                    lambda: _relayed_sessions(server), 5, "/metrics counted the relayed call"
                )
            finally:
                await browser.close()

    async def _call(page: Any) -> None:
        await page.click("#start-button")
        await wait_for(page, "!!window.vcstream.remoteStream", 20, "the remote track")
        await page.evaluate(CAPTURE_JS)
        await wait_for(page, "window.__capture.first", 20, "converted audio over TURN")
        start = await captured(page)
        await asyncio.sleep(2.0)  # two seconds of the call, captured in the page
        converted, _ = await take(page, start)
        assert converted.shape[0] >= 1.9 * OPUS_RATE
        assert voiced_fraction(converted, OPUS_RATE) > 0.5
        pair = await page.evaluate(SELECTED_PAIR_JS)
        print(f"\nselected candidate pair over TURN: {pair}")
        assert pair is not None and pair["local"] == "relay", pair

    asyncio.run(main())

    # both ends authenticated with what the server issued: the browser, and the server's own
    # webrtcbin (given the same TURN server), each got a relay from coturn
    allocated = coturn.allocations()
    assert len(allocated) >= 2 and all(user.startswith("vcstream-") for user in allocated), allocated


def test_coturn_refuses_credentials_signed_with_another_secret(coturn: Coturn) -> None:
    """The same allocation signed with the wrong secret is refused: the test above does not pass
    because coturn takes anything. (aioice, aiortc's ICE library, is the TURN client.)"""
    good = turn_credentials(SECRET, "probe", ttl_s=60)
    bad = turn_credentials("not-the-secret", "probe", ttl_s=60)
    assert asyncio.run(_allocate(coturn, good.username, good.credential)) == "allocated"
    assert "401" in asyncio.run(_allocate(coturn, bad.username, bad.credential))


async def _allocate(coturn: Coturn, username: str, password: str) -> str:
    try:
        transport, _ = await asyncio.wait_for(
            aioice.turn.create_turn_endpoint(
                asyncio.DatagramProtocol, (coturn.address, coturn.port), username, password
            ),
            10,
        )
    except aioice.stun.TransactionFailed as refused:
        return str(refused)
    transport.close()
    return "allocated"
