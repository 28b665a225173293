"""50 WebRTC sessions opened and closed against a real server (aiohttp on a socket, real webrtcbin on
both ends, the WORLD engine) leave no pipelines, threads or file descriptors behind, counted from the
process itself: GStreamer's finalisation of each pipeline (``live_pipelines``), ``/proc/self/task`` and
``/proc/self/fd``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import Speech
from vcstream.audio.types import Audio
from vcstream.media.webrtc import WebRtcPeer, live_pipelines
from vcstream.service.keys import METRICS_KEY, SESSIONS_KEY
from vcstream.streaming.live import LiveSession
from webrtc_harness import Server, client, open_fds, reference_wav, serving, settled, speech_48k

# -- the test ---------------------------------------------------------------------------------------


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _session_threads() -> list[str]:
    """Threads a session owns (its LiveSession worker is named after it)."""
    return [t.name for t in threading.enumerate() if t.name.startswith("vcstream-session-")]


def _python_objects() -> tuple[int, int]:
    """WebRtcPeer and LiveSession objects still alive."""
    gc.collect()
    objects = gc.get_objects()
    # type() rather than isinstance(): some objects (torch's lazy modules) warn when asked for __class__
    return sum(type(o) is WebRtcPeer for o in objects), sum(type(o) is LiveSession for o in objects)


async def _one_call(server: Server, voice: str, speech: Audio) -> float:
    async with client(server) as call:
        await call.dial(voice)
        first_audio = await call.talk_until_converted(speech)
        assert call.offer_sent is not None
        await call.send("bye")
        await asyncio.wait_for(call.closed.wait(), 5)
        assert call.of_type("bye"), call.messages
        return first_audio - call.offer_sent


def test_fifty_sessions_leak_nothing(
    tmp_path: Path, flite_speech: Speech, caplog: pytest.LogCaptureFixture
) -> None:
    cycles, warm_up = 50, 3
    caplog.set_level(logging.WARNING, logger="vcstream")

    async def main() -> None:
        async with serving(tmp_path / "data") as server:
            voice = await server.upload(reference_wav(tmp_path, flite_speech, "slt"), "slt")
            speech = speech_48k(flite_speech, "rms")
            started = time.perf_counter()
            times = [await _one_call(server, voice, speech) for _ in range(warm_up)]
            await settled(server)
            baseline = (_threads(), open_fds())
            counts = []
            for _ in range(cycles):
                times.append(await _one_call(server, voice, speech))
                await settled(server, baseline[1])
                counts.append((_threads(), open_fds()))
            elapsed = time.perf_counter() - started
            print(
                f"\n{cycles + warm_up} calls in {elapsed:.1f} s; offer -> first converted audio: "
                f"median {1000 * np.median(times):.0f} ms, max {1000 * max(times):.0f} ms"
            )
            print(
                f"threads, fds: baseline {baseline}, after every 10th call {counts[::10]}, last {counts[-1]}"
            )
            assert server.app[METRICS_KEY].active_sessions == 0
            assert server.app[SESSIONS_KEY].connections == 0
            assert live_pipelines() == 0
            assert _session_threads() == []
            assert _python_objects() == (0, 0)
            # a leak of one per call would show as +25 over the second half; thread pools (the
            # server's, asyncio's, GStreamer's) grow to their bounds early and stay there
            first, last = counts[: cycles // 2], counts[cycles // 2 :]
            for index, what in enumerate(("threads", "fds")):
                assert max(c[index] for c in last) <= max(c[index] for c in first) + 2, (what, counts)
            assert counts[-1][1] <= baseline[1] + 2, counts
            # every peer was closed by its owner, none left to the garbage collector's safety net
            assert not [r for r in caplog.records if "was not closed" in r.getMessage()]

    asyncio.run(main())
