"""The received stream of a ``WebRtcPeer`` (two peers in one process): decoded packet by packet as it
arrives (``ReceivedOpus``: 20 ms at a time, nothing held back for FEC), and a listener that raises
fails that call with a ``media`` error instead of taking the process down."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from peer_pair import PeerSide
from vcstream.media.webrtc import OPUS_RATE, PeerConfig, WebRtcPeer

FRAME = OPUS_RATE // 50


class _Recording(PeerSide):
    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.fail = fail
        self.blocks: list[int] = []
        self.heard = threading.Event()

    def on_audio(self, samples: Any) -> None:
        self.blocks.append(samples.shape[0])
        self.heard.set()
        if self.fail:
            raise RuntimeError("the listener broke")


def _call(server_side: _Recording, seconds: float) -> None:
    client_side = PeerSide()
    client = WebRtcPeer(client_side, PeerConfig())
    server = WebRtcPeer(server_side, PeerConfig())
    client_side.other, server_side.other = server, client
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(FRAME) / OPUS_RATE)).astype(np.float32)
    try:
        client.offer()
        assert server_side.connected.wait(10), (server_side.states, server_side.errors)
        started = time.perf_counter()
        for index in range(round(seconds * 50)):
            client.push(tone)
            time.sleep(max(0.0, started + (index + 1) / 50 - time.perf_counter()))
        assert server_side.heard.wait(2), "no audio reached the answering peer"
    finally:
        client.close()
        server.close()


def test_received_audio_comes_one_frame_at_a_time() -> None:
    server_side = _Recording()
    _call(server_side, 1.0)
    assert not server_side.errors, server_side.errors
    assert len(server_side.blocks) > 30
    assert set(server_side.blocks) == {FRAME}  # each packet decoded alone, as it came


def test_a_listener_that_raises_fails_the_call_not_the_process() -> None:
    server_side = _Recording(fail=True)
    _call(server_side, 0.5)
    assert server_side.errors and server_side.errors[0].startswith("media: "), server_side.errors
    assert "the listener broke" in server_side.errors[0]
    assert len(server_side.blocks) == 1  # nothing more was handed on after the failure
