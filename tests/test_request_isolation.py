"""Abusive requests do not take audio from a running call: a real server (passthrough engine), a real
WebRTC call from ``PyClient``, and beside it, from another process, multipart uploads of 10,000 tiny
parts, 20 WebSockets flooding signalling messages and /healthz probes (``isolation_load.py``). Also
the limits that make it so: a clear error for each, the server still up, well-behaved requests served.

The call's client runs on the server's event loop here: a loop held for a second by a request shows
up as a gap in what the call receives."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from conftest import Speech
from isolation_load import BOUNDARY, MULTIPART_TYPE, many_parts_body
from vcstream.engines.passthrough import PassthroughEngine
from vcstream.media.webrtc import OPUS_RATE
from vcstream.service.api import MAX_UPLOAD_PARTS
from vcstream.service.keys import SESSIONS_KEY
from vcstream.service.signalling import registry as signalling_registry
from vcstream.service.signalling.connection import ERROR_COST, RATE_BURST, RATE_PER_S
from vcstream.service.signalling.protocol import PROTOCOL_DESCRIPTION
from vcstream.service.signalling.registry import CONNECT_BURST, CONNECTS_PER_S, MAX_OPEN_PER_ADDRESS
from waiting import wait_until_async
from webrtc_harness import _Events, client, receive_json, reference_wav, serving, speech_48k

LOAD_SCRIPT = Path(__file__).with_name("isolation_load.py")
LOAD_S = 6.0
#: the longest silence the call may see while the load runs (blocks are 0.1 s; with the loop held by
#: each 10,000-part upload it was 9.5 s, and 8 % of the audio came back). Quiet, it is ~60 ms; on
#: two cores shared with other test runs (load average 6-10) up to ~0.8 s was seen
MAX_GAP_S = 1.0
#: the path's own delay before audio sent after the load started comes back
PATH_DELAY_S = 0.3


def test_a_call_keeps_its_audio_beside_abusive_requests(tmp_path: Path, flite_speech: Speech) -> None:
    speech = speech_48k(flite_speech, "slt")

    async def main() -> None:
        async with serving(tmp_path / "data", running=PassthroughEngine()) as server:
            voice = await server.upload(reference_wav(tmp_path, flite_speech, "awb"), "awb")
            async with client(server) as call:
                await call.dial(voice, settings={"block_time": 0.1})
                await call.talk_until_converted(speech)
                await call.talk(speech, lambda: bool(call.of_type("stats")), 3)
                before = call.of_type("stats")[-1]
                load = await asyncio.create_subprocess_exec(
                    sys.executable, str(LOAD_SCRIPT), server.base, "--seconds", str(LOAD_S),
                    "--uploads", "2", stdout=asyncio.subprocess.PIPE,
                )  # fmt: skip
                started = time.perf_counter()
                await call.talk(speech, lambda: False, LOAD_S)
                ended = time.perf_counter()
                out, _ = await asyncio.wait_for(load.communicate(), 10)
                # the call's next stats message, covering the time of the load
                reports = len(call.of_type("stats"))
                await call.talk(speech, lambda: len(call.of_type("stats")) > reports, 3)
                after = call.of_type("stats")[-1]
                assert not call.of_type("error"), call.of_type("error")
            received_s, gaps = call.events.continuity(started + PATH_DELAY_S, ended)
        load_report = json.loads(out)
        healthz = load_report["healthz_ms"]
        late = after["late_blocks"] - before["late_blocks"]
        offsets = np.cumsum(gaps) - gaps  # each gap's start, from the start of the window
        worst = sorted(zip(gaps, offsets, strict=True), reverse=True)[:3]
        longest = ", ".join(f"{1000 * g:.0f} ms at {t:.2f} s" for g, t in worst)
        print(
            f"\nbeside the load: {received_s:.2f} of {ended - started - PATH_DELAY_S:.2f} s received, "
            f"longest gaps {longest}, late blocks {late}, "
            f"/healthz p95 {np.percentile(healthz, 95):.0f} ms; uploads {load_report['upload_statuses']}, "
            f"{load_report['flood_sent']} flood messages, closes {load_report['flood_closes']}"
        )
        # the load did run, and was refused as it should be
        assert load_report["upload_statuses"].get("400", 0) >= 2, load_report["upload_statuses"]
        assert load_report["flood_sent"] > 1000, load_report
        assert set(load_report["flood_closes"]) <= {"1008", "1006", "1000", "refused 429"}, load_report
        # the call's audio kept flowing
        assert received_s >= 0.8 * (ended - started - PATH_DELAY_S), [
            (round(sum(gaps[:i]), 2), round(g, 2)) for i, g in enumerate(gaps) if g > 0.1
        ]
        assert max(gaps) < MAX_GAP_S, [
            (round(sum(gaps[:i]), 2), round(g, 2)) for i, g in enumerate(gaps) if g > 0.1
        ]
        # the server's side of the call: a block or two late or dropped happens on these shared cores
        # without any load (the passthrough call test has seen 20 ms dropped); more would be the load's
        assert late <= 3, (before, after)
        assert after["dropped_ms"] - before["dropped_ms"] <= 200, (before, after)
        # and the loop stayed responsive
        assert np.percentile(healthz, 95) < 1000, sorted(healthz)[-5:]

    asyncio.run(main())


def test_upload_limits_answer_clearly_and_good_uploads_still_work(
    tmp_path: Path, flite_speech: Speech
) -> None:
    async def main() -> None:
        async with serving(tmp_path / "data", running=PassthroughEngine()) as server:
            headers = {"Content-Type": MULTIPART_TYPE}
            for parts in (10_000, MAX_UPLOAD_PARTS + 1):
                started = time.perf_counter()
                url = f"{server.base}/api/voices"
                async with server.http.post(url, data=many_parts_body(parts), headers=headers) as response:
                    body = await response.json()
                    assert response.status == 400, body
                    assert body["error"] == "too_many_parts", body
                    assert f"at most {MAX_UPLOAD_PARTS} form fields" in body["message"], body
                # refused after a few parts, not after parsing them all (that took 2-4 s)
                assert time.perf_counter() - started < 1.0
            # one part with 10,000 header lines: aiohttp's own bound, answered as a client error
            padded = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="x"\r\n' + "X-Pad: y\r\n" * 10_000
            body = f"{padded}\r\n1\r\n--{BOUNDARY}--\r\n".encode()
            async with server.http.post(f"{server.base}/api/voices", data=body, headers=headers) as response:
                answer = await response.json()
                assert (response.status, answer["error"]) == (400, "bad_multipart"), answer
            async with server.http.get(f"{server.base}/healthz") as response:
                assert response.status == 200
            voice = await server.upload(reference_wav(tmp_path, flite_speech, "awb"), "awb")
            async with server.http.get(f"{server.base}/api/voices/{voice}") as response:
                assert response.status == 200

    asyncio.run(main())


def test_signalling_budgets_cut_off_floods_and_spare_busy_clients(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path / "data", running=PassthroughEngine()) as server:
            # valid messages are acknowledged up to the burst (a busy client is not an abusive one)
            async with server.http.ws_connect(server.ws_url) as ws:
                await ws.send_str(json.dumps({"v": 1, "type": "hello"}))
                assert (await receive_json(ws))["type"] == "ready"
                valid = int(RATE_BURST * 0.9)
                for _ in range(valid):
                    settings = {"v": 1, "type": "settings", "settings": {"block_time": 0.1}}
                    await ws.send_str(json.dumps(settings))
                for _ in range(valid):
                    assert (await receive_json(ws))["type"] == "settings"

            # malformed ones cost more: the socket is cut off after about burst / ERROR_COST of them
            async with server.http.ws_connect(server.ws_url) as ws:
                for _ in range(int(RATE_BURST)):
                    await ws.send_str("{not json")
                codes = []
                while (message := await ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT:
                    codes.append(json.loads(message.data)["code"])
                assert codes[-1] == "rate_limited", codes[-3:]
                assert set(codes[:-1]) == {"bad_json"}
                assert len(codes) - 1 <= RATE_BURST / ERROR_COST + 10, len(codes)
                assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 1008, message

            # one address opening sockets without end is refused before the upgrade
            refused = None
            sockets = []
            try:
                for _ in range(int(CONNECT_BURST) + 10):
                    try:
                        sockets.append(await server.http.ws_connect(server.ws_url))
                    except aiohttp.WSServerHandshakeError as exc:
                        refused = exc
                        break
            finally:
                for ws in sockets:
                    await ws.close()
            assert refused is not None and refused.status == 429, refused
            assert refused.headers is not None and int(refused.headers["Retry-After"]) >= 1
            async with server.http.get(f"{server.base}/ws") as response:  # the same refusal, as JSON
                body = await response.json()
                assert (response.status, body["error"]) == (429, "too_many_connections"), body
            async with server.http.get(f"{server.base}/healthz") as response:
                assert response.status == 200

    asyncio.run(main())


def test_one_address_holds_a_bounded_number_of_sockets_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the rate (lifted here), the count of open sockets per address is bounded too: the next
    upgrade is refused, and closing one lets the next in."""
    monkeypatch.setattr(signalling_registry, "CONNECTS_PER_S", 1000.0)

    async def main() -> None:
        async with serving(tmp_path / "data", running=PassthroughEngine()) as server:
            sockets = [await server.http.ws_connect(server.ws_url) for _ in range(MAX_OPEN_PER_ADDRESS)]
            try:
                async with server.http.get(f"{server.base}/ws") as response:
                    body = await response.json()
                    assert (response.status, body["error"]) == (429, "too_many_connections"), body
                    assert "stay open" in body["message"]
                await sockets.pop().close()
                registry = server.app[SESSIONS_KEY]
                await wait_until_async(
                    lambda: registry.connections < MAX_OPEN_PER_ADDRESS, 5, "the server saw the close"
                )
                sockets.append(await server.http.ws_connect(server.ws_url))  # a place freed
            finally:
                for ws in sockets:
                    await ws.close()

    asyncio.run(main())


def test_received_audio_measure_counts_gaps() -> None:
    """The harness's continuity measure, on arrivals made up here: a missing 0.5 s shows."""
    loop = asyncio.new_event_loop()
    events = _Events(loop)
    loop.close()  # only handed to the events; never run
    chunk = np.full(OPUS_RATE // 50, 0.1, np.float32)
    for index in range(100):
        if 40 <= index < 65:
            continue  # 25 packets (0.5 s) never came
        events.on_audio(chunk)
        events.arrivals[-1] = (index * 0.02, chunk.shape[0])
    received_s, gaps = events.continuity(0.0, 2.0)
    assert abs(received_s - 1.5) < 1e-6
    assert abs(max(gaps) - 0.52) < 1e-6


def test_the_protocol_description_states_the_budgets_in_force() -> None:
    described = " ".join(PROTOCOL_DESCRIPTION.split())
    assert f"may send {RATE_BURST:g} messages at once and {RATE_PER_S:g} a second" in described
    assert f"counts {ERROR_COST:g}" in described
    assert f"may open {CONNECT_BURST:g} connections at once and {CONNECTS_PER_S:g} a second" in described
    assert f"hold at most {MAX_OPEN_PER_ADDRESS} open" in described
