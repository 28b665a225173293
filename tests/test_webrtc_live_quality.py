"""Live quality during a real call (the Python client, a real webrtcbin peer, the WORLD engine): the
server's worker estimates the converted voice's similarity to the chosen voice while the call runs,
the ``stats`` message and /metrics show it, and no block was late for it."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vcstream.engines.world import WorldEngine
from vcstream.service.keys import LIVE_QUALITY_KEY
from waiting import wait_until_async
from webrtc_harness import client, reference_wav, serving, speech_48k

Speech = Callable[..., tuple[np.ndarray, int]]

#: talk this long at most for the first estimate: CAM++ (and torch) load with the first call, a few
#: seconds on two shared cores, then 4 s of converted speech make a window
ESTIMATE_WITHIN_S = 30.0


def _metric(text: str, name: str, labels: str = "") -> float | None:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def test_call_shows_its_voice_similarity_without_late_blocks(tmp_path: Path, flite_speech: Speech) -> None:
    speech = speech_48k(flite_speech, "slt")

    async def main() -> None:
        async with serving(tmp_path / "data", running=WorldEngine()) as server:
            voice = await server.upload(reference_wav(tmp_path, flite_speech, "awb"), "awb")
            async with client(server) as call:
                await call.dial(voice)

                def estimated() -> dict[str, Any] | None:
                    found = [s for s in call.of_type("stats") if s["voice_similarity"] is not None]
                    return found[-1] if found else None

                await call.talk(speech, lambda: estimated() is not None, timeout_s=ESTIMATE_WITHIN_S)
                stats = await wait_until_async(
                    estimated,
                    2.0,
                    "a stats message with voice_similarity",
                    state=lambda: (call.of_type("stats")[-1:], server.app[LIVE_QUALITY_KEY].stats()),
                )
                async with server.http.get(f"{server.base}/metrics") as response:
                    metrics = await response.text()
                worker = server.app[LIVE_QUALITY_KEY].stats()
                assert server.app[LIVE_QUALITY_KEY].knows_voice(voice)  # its reference was read
        first = next(i for i, s in enumerate(call.of_type("stats")) if s["voice_similarity"] is not None)
        late = [s["late_blocks"] for s in call.of_type("stats")]
        print(
            f"\nlive quality: voice {stats['voice_similarity']}, own voice {stats['own_voice_similarity']} "
            f"in stats message {first + 1} (one a second); late blocks by message {late}; worker {worker}, "
            f"{worker.cpu_s_per_call_minute()} CPU s per call-minute"
        )
        assert 0.0 <= stats["voice_similarity"] <= 1.0
        assert stats["own_voice_similarity"] is not None and 0.0 <= stats["own_voice_similarity"] <= 1.0
        count = _metric(metrics, "vcstream_call_voice_similarity_count", '{engine="world"}')
        assert count is not None and count >= 1, metrics
        assert _metric(metrics, "vcstream_blocks_late_total") == 0
        assert all(s["late_blocks"] == 0 for s in call.of_type("stats")), call.of_type("stats")[-1]
        assert not call.of_type("error"), call.of_type("error")

    asyncio.run(main())


def test_live_quality_can_be_turned_off(tmp_path: Path, flite_speech: Speech) -> None:
    speech = speech_48k(flite_speech, "slt")

    async def main() -> None:
        async with serving(tmp_path / "data", running=WorldEngine(), live_quality=False) as server:
            assert LIVE_QUALITY_KEY not in server.app
            voice = await server.upload(reference_wav(tmp_path, flite_speech, "awb"), "awb")
            async with client(server) as call:
                await call.dial(voice)
                await call.talk(speech, lambda: len(call.of_type("stats")) >= 2, timeout_s=10.0)
                stats = call.of_type("stats")
        assert len(stats) >= 2, stats
        print(f"\nlive quality off: late blocks by message {[s['late_blocks'] for s in stats]}")
        assert all(s["voice_similarity"] is None and s["own_voice_similarity"] is None for s in stats)

    asyncio.run(main())
