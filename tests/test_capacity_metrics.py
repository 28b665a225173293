"""Capacity routing from the server's side, with real WebRTC calls (webrtcbin peers, the WORLD engine):
the capacity gauges on /metrics follow calls as they start and end, /readyz answers 503 while the
server is full, a full server answers ``hello`` with ``server_full`` and never ``ready``, and on
drain every running call is told to move (``draining``) while it keeps converting."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from conftest import Speech
from vcstream.audio.types import Audio
from vcstream.media.webrtc import OPUS_RATE
from vcstream.service.app import drain
from waiting import wait_until_async
from webrtc_harness import PyClient, Server, client, receive_json, reference_wav, serving, speech_48k

CAPACITY_GAUGES = (
    "vcstream_session_places",
    "vcstream_sessions_in_use",
    "vcstream_capacity_used_ratio",
    "vcstream_ready",
    "vcstream_draining",
    "vcstream_relayed_sessions",
)


async def gauges(server: Server) -> dict[str, float]:
    """The capacity gauges as scraped now (labelled ones as ``name{role}``)."""
    async with server.http.get(f"{server.base}/metrics") as response:
        text = await response.text()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in CAPACITY_GAUGES:
                role = sample.labels.get("role")
                found[f"{sample.name}{{{role}}}" if role else sample.name] = sample.value
    return found


def expected(in_use: int, *, ready: bool, draining: bool = False) -> dict[str, float]:
    return {
        "vcstream_session_places{primary}": 2,
        "vcstream_sessions_in_use{primary}": in_use,
        "vcstream_capacity_used_ratio": in_use / 2,
        "vcstream_ready": float(ready),
        "vcstream_draining": float(draining),
        "vcstream_relayed_sessions": 0,  # host candidates on this machine: nothing goes through TURN
    }


async def until_gauges(server: Server, wanted: dict[str, float], what: str) -> None:
    async def matches() -> bool:
        return await gauges(server) == wanted

    await wait_until_async(matches, 10, what, state=lambda: "see /metrics")


async def readyz(server: Server) -> tuple[int, dict[str, str]]:
    async with server.http.get(f"{server.base}/readyz") as response:
        return response.status, await response.json()


async def talking(call: PyClient, speech: Audio) -> asyncio.Task[None]:
    """Talk in the background once the call converts."""
    task = asyncio.create_task(call.talk(speech, lambda: False, timeout_s=60))
    await call.converting()
    return task


def test_capacity_gauges_readiness_and_drain_follow_real_calls(tmp_path: Path, flite_speech: Speech) -> None:
    async def main() -> None:
        async with serving(tmp_path / "data", max_sessions=2) as server:
            voice = await server.upload(reference_wav(tmp_path, flite_speech, "slt"), "slt")
            speech = speech_48k(flite_speech, "rms")
            await until_gauges(server, expected(0, ready=True), "an idle server's gauges")
            async with client(server) as first, client(server) as second:
                await first.dial(voice)
                first_talking = await talking(first, speech)
                await until_gauges(server, expected(1, ready=True), "one call counted")

                await second.dial(voice)
                second_talking = await talking(second, speech)
                await until_gauges(server, expected(2, ready=False), "a full server")
                status, body = await readyz(server)
                assert status == 503 and body["error"] == "not_ready" and "full" in body["message"], body
                # a newcomer is refused at hello, never told ready
                async with server.http.ws_connect(server.ws_url) as ws:
                    await ws.send_str(json.dumps({"v": 1, "type": "hello"}))
                    refusal = await receive_json(ws)
                    assert (refusal["type"], refusal["code"], refusal["fatal"]) == (
                        "error",
                        "server_full",
                        True,
                    )
                    assert refusal["retry_after_s"] > 0

                second_talking.cancel()
                await second.close()
                await until_gauges(server, expected(1, ready=True), "the place given back")
                assert (await readyz(server))[0] == 200

                draining = asyncio.create_task(drain(server.app, grace_s=20))
                await wait_until_async(lambda: first.of_type("draining"), 5, "the call told to move")
                assert first.of_type("draining") == [{"v": 1, "type": "draining", "grace_s": 20}]
                await until_gauges(server, expected(1, ready=False, draining=True), "a draining server")
                # the call keeps converting while its client moves it elsewhere
                before = first.events.audio().shape[0]
                await wait_until_async(
                    lambda: first.events.audio().shape[0] - before > OPUS_RATE // 2, 5, "audio during drain"
                )
                assert not draining.done()
                first_talking.cancel()
                await first.close()  # the client left for another server
                assert await asyncio.wait_for(draining, 10) is True
                await until_gauges(server, expected(0, ready=False, draining=True), "a drained server")

    asyncio.run(main())
