"""The passthrough engine through a WebRTC call (the Python client, a real webrtcbin peer): the
identity baseline on the path browsers take, so every engine has been through every transport."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import numpy as np

from conftest import median_f0
from vcstream.engines.passthrough import PassthroughEngine
from vcstream.media.webrtc import OPUS_RATE
from webrtc_harness import client, reference_wav, serving, speech_48k

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
