"""The passthrough engine through a WebRTC call (the Python client, a real webrtcbin peer): the
identity baseline on the path browsers take, so every engine has been through every transport."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from conftest import median_f0
from vcstream.engines.passthrough import PassthroughEngine
from vcstream.media.webrtc import OPUS_RATE, PeerConfig
from webrtc_harness import PyClient, client, reference_wav, serving, speech_48k

Speech = Callable[..., tuple[np.ndarray, int]]


def test_passthrough_call_returns_what_was_said(tmp_path: Path, flite_speech: Speech) -> None:
    speech = speech_48k(flite_speech, "slt")

    async def main() -> None:
        async with serving(tmp_path / "data", running=PassthroughEngine()) as server:
            voice = await server.upload(reference_wav(tmp_path, flite_speech, "awb"), "awb")
            async with client(server) as call:
                ready = await call.hello()
                assert ready["engine"]["name"] == "passthrough"
                assert set(ready["settings_schema"]) == {"block_time"}
                await call.start(voice, settings={"block_time": 0.1})
                # one pass of the sentence, then silence while the tail comes back
                padded = np.concatenate([speech, np.zeros(OPUS_RATE, np.float32)])
                await call.talk(padded, lambda: False, timeout_s=padded.shape[0] / OPUS_RATE - 0.05)
                stats = call.of_type("stats")
                assert stats and stats[-1]["block_ms"] == 100 and stats[-1]["dropped_ms"] == 0, stats[-1:]
                assert not call.of_type("error"), call.of_type("error")
                received = call.events.audio()
        f0_in, f0_out = median_f0(speech, OPUS_RATE), median_f0(received, OPUS_RATE)
        back_s = received.shape[0] / OPUS_RATE
        print(f"\npassthrough over WebRTC: {back_s:.2f} s back, F0 {f0_in:.0f} -> {f0_out:.0f} Hz")
        assert received.shape[0] >= 0.95 * speech.shape[0]  # all of it came back
        assert abs(f0_out / f0_in - 1) < 0.03  # the same voice: nothing converted

    asyncio.run(main())


@pytest.mark.parametrize("max_send_ahead_s", [PeerConfig.max_send_ahead_s, None])
def test_audio_pushed_ahead_of_the_clock_does_not_delay_the_call_for_good(
    tmp_path: Path, flite_speech: Speech, max_send_ahead_s: float | None
) -> None:
    """webrtcbin sends each packet at its timestamp: 0.4 s pushed at once puts the caller's stream
    0.4 s ahead of the clock. Without a limit every later packet waits those 0.4 s, for the rest of
    the call (the case without one shows that this is still how webrtcbin behaves); with it, the
    audio pushed while the stream is ahead is dropped and the call's latency comes back."""
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(OPUS_RATE // 5) / OPUS_RATE)).astype(np.float32)
    silence = np.zeros(OPUS_RATE, np.float32)

    async def echo_latency(call: PyClient) -> float:
        """Silence, then the tone in real time: seconds from the tone's first push to its return."""
        await call.talk(silence, lambda: False, timeout_s=0.5)
        pushed = time.perf_counter()
        await call.talk(np.concatenate([tone, silence]), lambda: False, timeout_s=0.8)
        with call.events.lock:
            blocks = list(zip(call.events.arrivals, call.events.received, strict=True))
        loud = [at for (at, _), block in blocks if at > pushed and np.max(np.abs(block)) > 0.1]
        assert loud, "the tone did not come back"
        return loud[0] - pushed

    async def main() -> tuple[float, float]:
        async with serving(tmp_path / "data", running=PassthroughEngine()) as server:
            voice = await server.upload(reference_wav(tmp_path, flite_speech, "awb"), "awb")
            async with client(server) as call:
                await call.hello()
                config = PeerConfig(max_send_ahead_s=max_send_ahead_s)
                await call.start(voice, settings={"block_time": 0.02}, peer_config=config)
                await call.talk_until_converted(speech_48k(flite_speech, "slt"))
                before = await echo_latency(call)
                assert call.peer is not None
                call.peer.push(np.zeros(2 * OPUS_RATE // 5, np.float32))  # 0.4 s at once
                after = await echo_latency(call)
        return before, after

    before, after = asyncio.run(main())
    print(
        f"\nmax_send_ahead_s={max_send_ahead_s}: echo {1000 * before:.0f} ms, "
        f"after the jump {1000 * after:.0f} ms"
    )
    if max_send_ahead_s is None:
        assert after > before + 0.3
    else:
        assert after < before + 0.06
