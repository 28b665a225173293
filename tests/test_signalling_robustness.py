"""Signalling under abuse, against a real server (aiohttp on a socket, webrtcbin, the WORLD engine):
malformed JSON, unknown types, wrong versions, binary and oversized frames, garbage SDP (refused by
our checks and by webrtcbin), ICE before the offer, message floods, clients vanishing mid-negotiation,
a full server. Each gets an error message or a clean close, and a real call running beside the abuse
keeps receiving converted audio. Also: voice and block size changed mid-call without renegotiation."""

from __future__ import annotations

import asyncio
import gc
import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from conftest import Speech, median_f0
from tenants_harness import TOKEN_SECRET, tenant_keys
from vcstream.media.webrtc import OPUS_RATE, WebRtcPeer, live_pipelines
from vcstream.service.app import drain
from vcstream.service.keys import ADMISSION_KEY, METRICS_KEY, SESSIONS_KEY
from vcstream.service.signalling import MAX_MESSAGE_BYTES
from vcstream.service.signalling import connection as signalling_connection
from vcstream.service.signalling.protocol import STATS_INTERVAL_S
from waiting import wait_until_async
from webrtc_harness import PyClient, Server, client, receive_json, reference_wav, serving, settled, speech_48k


async def _until(ws: aiohttp.ClientWebSocketResponse, kind: str, wait_s: float = 5.0) -> dict[str, Any]:
    """The next message of ``kind``, skipping others (bounded by ``wait_s``)."""
    deadline = time.monotonic() + wait_s
    while (left := deadline - time.monotonic()) > 0:
        data = await receive_json(ws, left)
        if data["type"] == kind:
            return data
    raise AssertionError(f"no {kind} message within {wait_s} s")


async def _closed(ws: aiohttp.ClientWebSocketResponse, wait_s: float = 5.0) -> int | None:
    """Read until the server closes; returns the close code."""
    deadline = time.monotonic() + wait_s
    while (left := deadline - time.monotonic()) > 0:
        message = await ws.receive(timeout=left)
        if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            return ws.close_code
    raise AssertionError("the server did not close the connection")


async def _hello(ws: aiohttp.ClientWebSocketResponse, token: str | None = None) -> dict[str, Any]:
    await ws.send_str(json.dumps({"v": 1, "type": "hello", **({"token": token} if token else {})}))
    return await _until(ws, "ready")


async def _token(server: Server, key: str) -> str:
    """An access token for the tenant of ``key`` (what its backend gets at POST /api/tokens)."""
    headers = {"Authorization": f"Bearer {key}"}
    async with server.http.post(f"{server.base}/api/tokens", json={}, headers=headers) as response:
        assert response.status == 201, await response.text()
        return str((await response.json())["token"])


async def _offer_sdp() -> str:
    """A real offer from a webrtcbin peer (then closed: nobody will answer it)."""
    sdp: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    loop = asyncio.get_running_loop()

    class Listener:
        def on_description(self, kind: str, text: str) -> None:
            loop.call_soon_threadsafe(sdp.set_result, text)

        def on_ice_candidate(self, mline_index: int, candidate: str) -> None:
            pass

        def on_state(self, name: str, value: str) -> None:
            pass

        def on_audio(self, samples: Any) -> None:
            pass

        def on_error(self, kind: str, message: str) -> None:
            pass

    peer = WebRtcPeer(Listener())
    try:
        await asyncio.to_thread(peer.offer)
        return await asyncio.wait_for(sdp, 5)
    finally:
        await asyncio.to_thread(peer.close)


@asynccontextmanager
async def running_call(
    server: Server, voice: str, speech: np.ndarray, token: str | None = None
) -> AsyncIterator[PyClient]:
    """A real call that keeps talking in the background while the test abuses the server."""
    async with client(server) as call:
        await call.dial(voice, token=token)
        talking = asyncio.create_task(call.talk(speech, lambda: False, timeout_s=60))
        try:
            yield call
        finally:
            talking.cancel()


async def _audio_keeps_flowing(call: PyClient, seconds: float = 1.0) -> None:
    """At least half of real time comes back within ``seconds`` (passes as soon as it has)."""
    before = call.events.audio().shape[0]
    await wait_until_async(
        lambda: call.events.audio().shape[0] - before > 0.5 * seconds * OPUS_RATE,
        seconds,
        f"{0.5 * seconds} s of converted audio",
        state=lambda: f"{call.events.audio().shape[0] - before} samples",
    )


def _latest_stats(call: PyClient) -> dict[str, Any]:
    stats = call.of_type("stats")
    return stats[-1] if stats else {}


async def _received_at_least(call: PyClient, samples: int, what: str) -> None:
    """Wait until the call has received ``samples`` of converted audio in all."""
    await wait_until_async(
        lambda: call.events.audio().shape[0] >= samples,
        10 + samples / OPUS_RATE,
        what,
        state=lambda: f"{call.events.audio().shape[0]} of {samples} samples",
    )


@pytest.mark.parametrize("auth", ["open", "required"])
def test_bad_messages_get_errors_and_the_server_keeps_serving(
    tmp_path: Path, flite_speech: Speech, auth: str
) -> None:
    """Also with auth required (a paid service): the same answers, every hello with a token."""
    key = tenant_keys(tmp_path / "data", "Acme", plan="unlimited")[0] if auth == "required" else None
    paid = {"auth": "required", "token_secret": TOKEN_SECRET} if key else {}

    async def main() -> None:
        async with serving(tmp_path / "data", **paid) as server:
            voice = await server.upload(reference_wav(tmp_path, flite_speech, "slt"), "slt", key)
            token = await _token(server, key) if key else None
            speech = speech_48k(flite_speech, "rms")
            offer = await _offer_sdp()
            async with running_call(server, voice, speech, token) as call:
                await call.converting()

                async with server.http.ws_connect(server.ws_url) as ws:
                    # each of these gets an error and the connection stays usable
                    cases: list[tuple[str | bytes, str]] = [
                        ("{not json", "bad_json"),
                        ("[1, 2, 3]", "bad_message"),
                        ('"hello"', "bad_message"),
                        (json.dumps({"type": "hello"}), "unsupported_version"),
                        (json.dumps({"v": 2, "type": "hello"}), "unsupported_version"),
                        (json.dumps({"v": 1}), "unknown_type"),
                        (json.dumps({"v": 1, "type": "dance"}), "unknown_type"),
                        (json.dumps({"v": 1, "type": {"nested": 1}}), "unknown_type"),
                        (b"\x00\x01binary", "bad_message"),
                        (json.dumps({"v": 1, "type": "offer", "sdp": offer, "voice": voice}), "unexpected"),
                        (
                            json.dumps(
                                {"v": 1, "type": "ice", "candidate": "candidate:1 1 udp 1 1.2.3.4 9 typ host"}
                            ),
                            "no_call",
                        ),
                    ]
                    for frame, code in cases:
                        if isinstance(frame, bytes):
                            await ws.send_bytes(frame)
                        else:
                            await ws.send_str(frame)
                        error = await receive_json(ws)
                        assert (error["type"], error["code"], error["fatal"]) == ("error", code, False), (
                            frame,
                            error,
                        )
                    ready = await _hello(ws, token)
                    assert ready["session"]
                    await ws.send_str(json.dumps({"v": 1, "type": "hello"}))
                    assert (await receive_json(ws))["code"] == "unexpected"
                    # garbage descriptions: refused before anything is built
                    garbage = [
                        None,
                        42,
                        "",
                        "hello world",
                        "v=0\r\nthis is not sdp",
                        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n",  # no media at all
                        offer.replace("OPUS/48000", "PCMU/8000"),  # no Opus
                        re.sub(r"a=fingerprint:[^\r\n]*\r\n", "", offer),  # no DTLS fingerprint
                        re.sub(r"a=ice-ufrag:[^\r\n]*\r\n", "", offer),  # no ICE credentials
                    ]
                    for sdp in garbage:
                        await ws.send_str(json.dumps({"v": 1, "type": "offer", "sdp": sdp, "voice": voice}))
                        error = await receive_json(ws)
                        assert (error["code"], error["fatal"]) == ("bad_sdp", False), (sdp, error)
                    # a bad voice or bad settings are refused, and the connection is still usable
                    for fields, code in [
                        ({"voice": "0" * 32}, "voice_not_found"),
                        ({"voice": "../../etc/passwd"}, "voice_not_found"),
                        ({}, "voice_required"),
                        ({"voice": voice, "settings": {"block_time": 9}}, "bad_settings"),
                        ({"voice": voice, "settings": {"turbo": True}}, "bad_settings"),
                        ({"voice": voice, "settings": "fast"}, "bad_settings"),
                    ]:
                        await ws.send_str(json.dumps({"v": 1, "type": "offer", "sdp": offer, **fields}))
                        error = await receive_json(ws)
                        assert error["code"] == code, (fields, error)
                    await ws.send_str(json.dumps({"v": 1, "type": "ice", "candidate": 5}))
                    assert (await receive_json(ws))["code"] == "no_call"

                    # an offer that passes our checks but that webrtcbin refuses (BUNDLE names an
                    # unknown section): error, then a clean close
                    broken = offer.replace("a=group:BUNDLE", "a=group:BUNDLE nope")
                    await ws.send_str(json.dumps({"v": 1, "type": "offer", "sdp": broken, "voice": voice}))
                    error = await _until(ws, "error")
                    assert (error["code"], error["fatal"]) == ("bad_sdp", True), error
                    assert await _closed(ws) == 1008

                # oversized: above our limit an error and a close; far above it aiohttp closes (1009)
                async with server.http.ws_connect(server.ws_url) as ws:
                    await ws.send_str(json.dumps({"v": 1, "type": "hello", "pad": "x" * MAX_MESSAGE_BYTES}))
                    error = await receive_json(ws)
                    assert (error["code"], error["fatal"]) == ("message_too_large", True)
                    assert await _closed(ws) == 1008
                async with server.http.ws_connect(server.ws_url) as ws:
                    await ws.send_str("x" * (2 << 20))
                    assert await _closed(ws) == 1009

                # a flood is cut off
                async with server.http.ws_connect(server.ws_url) as ws:
                    for _ in range(400):
                        await ws.send_str(json.dumps({"v": 1, "type": "dance"}))
                    codes = []
                    for _ in range(401):
                        message = await ws.receive(timeout=5)
                        if message.type != aiohttp.WSMsgType.TEXT:
                            break
                        codes.append(json.loads(message.data)["code"])
                    assert codes[-1] == "rate_limited", codes[-3:]

                await _audio_keeps_flowing(call)
                assert not call.of_type("error"), call.of_type("error")
                # the call may be younger than the stats interval: its first report can still be due
                stats = await wait_until_async(
                    lambda: call.of_type("stats"), 2 * STATS_INTERVAL_S + 1, "a stats message"
                )
                assert stats and stats[-1]["blocks"] > 0

            await settled(server)
            # and a fresh call works after all that
            async with client(server) as again:
                await again.dial(voice, token=token)
                await again.talk_until_converted(speech)
            await settled(server)

    asyncio.run(main())


def test_clients_vanishing_mid_negotiation_leave_nothing_behind(
    tmp_path: Path, flite_speech: Speech, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the server's patience for ICE, shortened so the test does not wait 20 s
    monkeypatch.setattr(signalling_connection, "CONNECT_TIMEOUT_S", 1.5)

    async def main() -> None:
        async with serving(tmp_path / "data") as server:
            voice = await server.upload(reference_wav(tmp_path, flite_speech, "slt"), "slt")
            offer = await _offer_sdp()
            metrics = server.app[METRICS_KEY]
            # gone right after the offer (before the answer), right after the answer (ICE never
            # completes), and with the socket still open but never answering ICE
            for stage in ("offer", "answer", "silent"):
                ws = await server.http.ws_connect(server.ws_url)
                await _hello(ws)
                await ws.send_str(json.dumps({"v": 1, "type": "offer", "sdp": offer, "voice": voice}))
                if stage == "offer":
                    await ws.close()
                    continue
                await _until(ws, "answer")
                if stage == "answer":
                    await ws.close()
                    continue
                # the offering peer was closed: ICE cannot complete, the server gives up by itself
                assert metrics.active_sessions == 1
                error = await _until(ws, "error", wait_s=5)
                assert (error["code"], error["fatal"]) == ("ice_failed", True), error
                assert await _closed(ws) == 1008
                await ws.close()
            await settled(server)
            assert server.app[SESSIONS_KEY].connections == 0

    asyncio.run(main())


def test_a_full_server_says_so_and_admits_again_when_a_place_frees(
    tmp_path: Path, flite_speech: Speech
) -> None:
    async def main() -> None:
        async with serving(tmp_path / "data", max_sessions=1) as server:
            voice = await server.upload(reference_wav(tmp_path, flite_speech, "slt"), "slt")
            speech = speech_48k(flite_speech, "rms")
            async with running_call(server, voice, speech) as call:
                await call.converting()  # the only place is taken
                async with server.http.ws_connect(server.ws_url) as ws:
                    await ws.send_str(json.dumps({"v": 1, "type": "hello"}))
                    error = await receive_json(ws)
                    assert (error["code"], error["fatal"], error["retry_after_s"]) == (
                        "server_full",
                        True,
                        15.0,
                    )
                    assert await _closed(ws) == 1008
                await _audio_keeps_flowing(call, 0.5)
            await settled(server)
            async with server.http.ws_connect(server.ws_url) as ws:
                assert (await _hello(ws))["type"] == "ready"
            assert "server_full" not in str(server.app[METRICS_KEY].render())

    asyncio.run(main())


def test_a_reserving_hello_holds_the_last_place_until_its_offer_or_its_expiry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two callers racing for the last place are told at hello, not after ``ready``: a hello with
    ``reserve`` takes the place at once; an unused reservation is given back when it expires or when
    its connection closes."""
    monkeypatch.setattr(signalling_connection, "RESERVE_S", 1.0)

    async def hello(ws: aiohttp.ClientWebSocketResponse, **fields: object) -> dict[str, Any]:
        await ws.send_str(json.dumps({"v": 1, "type": "hello", **fields}))
        return await receive_json(ws)

    async def main() -> None:
        async with serving(tmp_path / "data", max_sessions=1) as server:
            admission = server.app[ADMISSION_KEY]
            async with server.http.ws_connect(server.ws_url) as first:
                assert (await hello(first, reserve=True))["type"] == "ready"
                assert admission.active == 1
                async with server.http.ws_connect(server.ws_url) as second:
                    refused = await hello(second, reserve=True)
                    assert (refused["code"], refused["retry_after_s"]) == ("server_full", 15.0)
                # the reservation expires unused: the place is free again, the connection stays
                await wait_until_async(lambda: admission.active == 0, 5, "the reservation expired")
                async with server.http.ws_connect(server.ws_url) as third:
                    assert (await hello(third, reserve=True))["type"] == "ready"
                    assert admission.active == 1
                # closing the reserving connection gives its place back
                await wait_until_async(lambda: admission.active == 0, 5, "the closed connection's place")
            await settled(server)

    asyncio.run(main())


def test_voice_and_block_size_change_mid_call_without_renegotiation(
    tmp_path: Path, flite_speech: Speech
) -> None:
    async def main() -> None:
        async with serving(tmp_path / "data") as server:
            high = await server.upload(reference_wav(tmp_path, flite_speech, "slt"), "slt")
            low = await server.upload(reference_wav(tmp_path, flite_speech, "rms"), "rms")
            speech = speech_48k(flite_speech, "kal16")
            async with running_call(server, high, speech) as call:
                await _received_at_least(call, int(2.5 * OPUS_RATE), "2.5 s in the first voice")
                first = call.events.audio()
                await call.send("voice", voice=low)
                switched_at = first.shape[0]
                # half a second for the switch (skipped), then 2.5 s in the second voice
                await _received_at_least(call, switched_at + 3 * OPUS_RATE, "3 s after the switch")
                second = call.events.audio()[switched_at + OPUS_RATE // 2 :]  # skip the switch
                ack = [m for m in call.messages if m["type"] == "voice"]
                assert ack and ack[-1]["voice"] == low and ack[-1]["name"] == "rms"

                await call.send("settings", settings={"block_time": 0.2})
                # stats come periodically: wait for one sent after the change took effect
                await wait_until_async(
                    lambda: call.of_type("settings") and _latest_stats(call).get("block_ms", 0) > 150,
                    5,
                    "stats with the new block size",
                    state=lambda: _latest_stats(call),
                )
                settings = [m for m in call.messages if m["type"] == "settings"]
                assert settings and settings[-1]["settings"]["block_time"] == 0.2
                assert call.of_type("stats")[-1]["block_ms"] == pytest.approx(200, abs=1)
                await _audio_keeps_flowing(call)
                assert len(call.of_type("answer")) == 1  # never renegotiated
                assert not call.of_type("error"), call.of_type("error")

            f0_high = median_f0(first[OPUS_RATE:], OPUS_RATE)
            f0_low = median_f0(second, OPUS_RATE)
            print(f"\nconverted F0: voice slt {f0_high:.0f} Hz, after switching to rms {f0_low:.0f} Hz")
            assert f0_low < 0.8 * f0_high
            await settled(server)

    asyncio.run(main())


def test_draining_refuses_new_sessions_and_shutdown_says_bye(tmp_path: Path, flite_speech: Speech) -> None:
    async def main() -> None:
        async with serving(tmp_path / "data") as server:
            voice = await server.upload(reference_wav(tmp_path, flite_speech, "slt"), "slt")
            speech = speech_48k(flite_speech, "rms")
            async with running_call(server, voice, speech) as call:
                await call.converting()
                # SIGTERM's first step: running calls go on, new ones are refused
                assert not await drain(server.app, grace_s=0.2)
                # the running call was told to move elsewhere within the grace period
                await wait_until_async(lambda: call.of_type("draining"), 5, "the draining message")
                assert call.of_type("draining") == [{"v": 1, "type": "draining", "grace_s": 0.2}]
                async with server.http.ws_connect(server.ws_url) as ws:
                    await ws.send_str(json.dumps({"v": 1, "type": "hello"}))
                    error = await receive_json(ws)
                    assert (error["code"], error["fatal"]) == ("server_draining", True)
                await _audio_keeps_flowing(call, 0.5)
                # then the application shuts down with the call still running
                await server.server.close()
                await asyncio.wait_for(call.closed.wait(), 10)
                assert call.of_type("bye")[-1]["reason"] == "shutdown"
                assert call.ws.close_code == 1001
            assert server.app[METRICS_KEY].active_sessions == 0
            gc.collect()
            assert live_pipelines() == 0

    asyncio.run(main())


def test_silent_and_idle_connections_are_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signalling_connection, "HELLO_TIMEOUT_S", 0.5)
    monkeypatch.setattr(signalling_connection, "IDLE_TIMEOUT_S", 1.0)

    async def main() -> None:
        async with serving(tmp_path / "data") as server:
            async with server.http.ws_connect(server.ws_url) as ws:  # says nothing at all
                error = await receive_json(ws)
                assert (error["code"], error["fatal"]) == ("timeout", True)
                assert await _closed(ws) == 1008
            async with server.http.ws_connect(server.ws_url) as ws:  # ready, then never calls
                await _hello(ws)
                await asyncio.sleep(0.6)  # silent past the hello timeout: that one no longer applies
                await ws.send_str(json.dumps({"v": 1, "type": "settings", "settings": {}}))  # activity
                assert (await receive_json(ws))["type"] == "settings"
                started = time.monotonic()
                error = await receive_json(ws)
                assert error["code"] == "timeout" and time.monotonic() - started > 0.8
                assert await _closed(ws) == 1008
            # the handler finishes just after the close frame
            await wait_until_async(
                lambda: server.app[SESSIONS_KEY].connections == 0, 2, "the connection handlers ended"
            )

    asyncio.run(main())
