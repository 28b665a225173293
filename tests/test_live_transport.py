"""LiveTransport, the base of the RTP relay and the WebRTC call: blocks complete on the Opus frame
that ends them, the first output puts block ends on frame ends, a stream end flushes the block in
progress, and new settings open a session framed the same way. Real engine sessions and workers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from vcstream.audio.types import Audio
from vcstream.engines.passthrough import PassthroughEngine
from vcstream.engines.settings import SessionSettings
from vcstream.streaming.live import LiveStats
from vcstream.streaming.scheduler import BlockScheduler
from vcstream.transports.live_transport import LiveTransport

IO_RATE = 48000
FRAME = IO_RATE // 50  # one 20 ms Opus frame


class Collecting(LiveTransport):
    """A transport whose media output is a list (the engine runs at 22.05 kHz: both resamplers hold
    samples back, so there is look-ahead to prime and output to pad)."""

    def __init__(self, settings: SessionSettings, scheduler: BlockScheduler) -> None:
        self.outputs: list[Audio] = []
        self._outputs_lock = threading.Lock()
        engine = scheduler.engine
        voice = engine.prepare_voice(np.zeros(22050, np.float32), 22050)
        # frames arrive faster than real time here: a backlog bound of 10 s keeps every one of them
        super().__init__(
            engine,
            voice,
            settings,
            scheduler=scheduler,
            io_rate=IO_RATE,
            frame_samples=FRAME,
            name="test-transport",
            max_backlog_s=10.0,
        )

    def _deliver(self, samples: Audio) -> None:
        with self._outputs_lock:
            self.outputs.append(samples)

    def delivered(self) -> list[Audio]:
        with self._outputs_lock:
            return list(self.outputs)

    def feed_frames(self, samples: int) -> None:
        for start in range(0, samples, FRAME):
            self.feed(np.full(min(FRAME, samples - start), 0.1, np.float32))


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


def blocks(transport: LiveTransport) -> int:
    stats = transport.stats()
    return -1 if stats is None else stats.blocks


def all_delivered(transport: Collecting, outputs: int = 0) -> bool:
    """Whether every sample the running session produced reached ``_deliver`` (after the first
    ``outputs`` deliveries, those of an earlier session)."""
    stats = transport.stats()
    sent = sum(out.shape[0] for out in transport.delivered()[outputs:])
    return stats is not None and sent == stats.samples_out + transport.output_pad_samples


@pytest.fixture
def transport() -> Iterator[Collecting]:
    engine = PassthroughEngine(22050)
    scheduler = BlockScheduler(engine)
    yield Collecting(engine.settings(block_time=0.1), scheduler)
    scheduler.close()


def test_blocks_complete_on_the_frame_that_ends_them(transport: Collecting) -> None:
    try:
        block = transport.converter.block_size
        assert block % FRAME == 0 and transport.lead_samples > 0
        transport.feed_frames(3 * block)
        # without the primed look-ahead the third block would wait for a fourth block's first frame
        assert wait_for(lambda: blocks(transport) == 3), transport.stats()
        assert wait_for(lambda: all_delivered(transport))
        first, *rest = transport.delivered()
        assert 0 < transport.output_pad_samples < FRAME
        assert first.shape[0] % FRAME == 0  # the padded first output ends on a frame end
        assert not first[: transport.output_pad_samples].any()
        assert all(out.shape[0] % block == 0 for out in rest)
    finally:
        transport.close_session()


def test_a_stream_end_completes_the_block_in_progress(transport: Collecting) -> None:
    try:
        block = transport.converter.block_size
        transport.feed_frames(block + block // 2)
        assert wait_for(lambda: blocks(transport) == 1)
        transport.flush()
        assert wait_for(lambda: blocks(transport) == 2), transport.stats()
        assert transport.flushes == 1
        # the next stream starts on a block boundary: one more block's worth completes one block
        transport.feed_frames(block)
        assert wait_for(lambda: blocks(transport) == 3), transport.stats()
    finally:
        transport.close_session()


def test_new_settings_open_a_session_framed_the_same_way(transport: Collecting) -> None:
    try:
        transport.feed_frames(transport.converter.block_size)
        assert wait_for(lambda: blocks(transport) == 1)
        assert wait_for(lambda: all_delivered(transport))
        first_session, earlier = transport.session, len(transport.delivered())
        transport.reopen(PassthroughEngine(22050).settings(block_time=0.06))
        assert transport.session is not first_session and not first_session.running
        block = transport.converter.block_size
        assert block == round(0.06 * IO_RATE) and transport.output_pad_samples == 0
        stats = transport.stats()
        assert stats is not None and stats.blocks == 0  # a new session counts from 0
        transport.feed_frames(2 * block)
        assert wait_for(lambda: blocks(transport) == 2), transport.stats()
        assert wait_for(lambda: all_delivered(transport, earlier))
        assert 0 < transport.output_pad_samples < FRAME
        assert transport.delivered()[earlier].shape[0] % FRAME == 0  # padded again
    finally:
        transport.close_session()
    assert transport.stats() is None
    session = transport.session
    transport.reopen(PassthroughEngine(22050).settings(block_time=0.1))  # closed: nothing opens
    assert transport.session is session
    transport.close_session()  # idempotent


def test_live_stats_keep_the_json_keys_the_relay_prints(transport: Collecting) -> None:
    try:
        stats = transport.stats()
        assert isinstance(stats, LiveStats)
        assert list(stats.to_json()) == [
            "blocks", "samples_in", "samples_out", "inference_ms_p50", "inference_ms_p95", "chunks_in",
            "dropped_samples", "drop_events", "late_blocks", "skipped_blocks", "max_backlog_samples",
            "errors", "backlog_ms", "dropped_ms", "block_ms", "algorithmic_latency_ms",
        ]  # fmt: skip
        assert stats.samples_in == transport.lead_samples and stats.inference_ms_p50 is None
    finally:
        transport.close_session()
