"""The relay keeps running through what real networks and senders do: a sender stopping and
restarting, an SSRC change, a restart with the same SSRC, garbage datagrams, foreign payload types,
a burst of loss, and an engine too slow to keep up. Each case checks the statistics and that the
audio after the event comes through (a tone per phase tells which audio is which)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from rtp_harness import Chain, dominant_hz, open_chain, tone
from slow_engine import SlowEngine
from vcstream.engines.passthrough import PassthroughEngine
from vcstream.media.rtp import OPUS_RATE, NetworkSimulation, OpusCodecSettings
from waiting import wait_until

BEFORE, AFTER = 440.0, 880.0


@pytest.fixture
def chain() -> Iterator[Chain]:
    reference = tone(200, 2.0)
    opened = open_chain(PassthroughEngine(), reference)
    try:
        yield opened
    finally:
        opened.close()


def phases(y: np.ndarray) -> list[float]:
    """Dominant frequency of every loud 100 ms piece of the received audio."""
    size = OPUS_RATE // 10
    pieces = [y[i : i + size] for i in range(0, y.shape[0] - size + 1, size)]
    return [dominant_hz(p) for p in pieces if np.sqrt(np.mean(p**2)) > 0.05]


def assert_switched(y: np.ndarray, seconds_after: float) -> None:
    """The audio holds BEFORE and then AFTER, about ``seconds_after`` of it, and nothing else."""
    found = phases(y)
    near = lambda f, target: abs(f - target) < 15  # noqa: E731
    assert all(near(f, BEFORE) or near(f, AFTER) for f in found), f"dominant frequencies: {found}"
    first_after = next(i for i, f in enumerate(found) if near(f, AFTER))
    assert all(near(f, BEFORE) for f in found[:first_after])
    assert sum(near(f, AFTER) for f in found) >= 10 * seconds_after - 3


def _wait_for_bye(chain: Chain) -> None:
    """The relay has seen the stopped sender's BYE (the stream ended before the next one starts)."""
    wait_until(
        lambda: chain.relay.snapshot()["input"]["byes"] >= 1,
        5,
        "the relay received the BYE",
        state=lambda: chain.relay.snapshot()["input"],
    )


def test_sender_stops_and_a_new_one_starts(chain: Chain) -> None:
    chain.send(chain.sender(), tone(BEFORE, 1.0))
    chain.senders[0].stop()  # BYE
    _wait_for_bye(chain)
    chain.send(chain.sender(), tone(AFTER, 1.0))
    y, snapshot, _ = chain.finish()
    assert snapshot["input"]["streams_started"] == 2
    assert snapshot["input"]["byes"] >= 1
    assert snapshot["session"]["errors"] == 0
    assert_switched(y, 1.0)


def test_ssrc_changes_without_a_pause(chain: Chain) -> None:
    first, second = chain.sender(), chain.sender()
    chain.send(first, tone(BEFORE, 1.0))
    chain.send(second, tone(AFTER, 1.0))  # the first stays open and silent: no BYE, no gap
    y, snapshot, _ = chain.finish()
    assert snapshot["input"]["ssrc_changes"] == 1
    assert snapshot["input"]["active_ssrc"] is not None
    assert_switched(y, 1.0)


def test_restart_with_the_same_ssrc_after_bye(chain: Chain) -> None:
    chain.send(chain.sender(ssrc=0x1234), tone(BEFORE, 1.0))
    chain.senders[0].stop()
    _wait_for_bye(chain)
    chain.send(chain.sender(ssrc=0x1234), tone(AFTER, 1.0))  # new port, sequence numbers, timestamps
    y, snapshot, _ = chain.finish()
    assert snapshot["input"]["resets"] == 1  # rtpbin would otherwise ignore an SSRC that said BYE
    assert snapshot["input"]["active_ssrc"] == 0x1234
    assert_switched(y, 1.0)


def test_restart_with_the_same_ssrc_without_bye(chain: Chain) -> None:
    crashed = chain.sender(ssrc=0x4321, rtcp_port=0)  # no RTCP, so no BYE: as if killed
    chain.send(crashed, tone(BEFORE, 1.0))
    time.sleep(0.3)  # the crashed sender's silence before it comes back
    chain.send(chain.sender(ssrc=0x4321), tone(AFTER, 1.0))  # new sequence numbers and timestamps
    y, snapshot, _ = chain.finish()
    # told apart from loss: a fresh session, not a jitter buffer concealing across a huge "gap"
    assert snapshot["input"]["restarts_without_bye"] == 1
    assert snapshot["input"]["resets"] == 1
    assert snapshot["input"]["packets_lost"] < 5
    assert_switched(y, 1.0)


def _interleave(chain: Chain, every: Callable[[int], None], seconds: float = 2.0) -> np.ndarray:
    """Send BEFORE for ``seconds`` calling ``every(k)`` after each 10 ms chunk k."""
    sender = chain.sender()
    count = iter(range(10**6))
    chain.send(sender, tone(BEFORE, seconds), on_chunk=lambda _first, _at: every(next(count)))
    return chain.collector.audio()


def test_garbage_datagrams_are_dropped_and_counted(chain: Chain) -> None:
    rng = np.random.default_rng(7)
    port = chain.relay.port
    rtcp_port = chain.relay.receiver.rtcp_port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as junk:

        def garbage(k: int) -> None:
            for _ in range(2):
                junk.sendto(
                    rng.integers(0, 256, int(rng.integers(0, 400)), dtype=np.uint8).tobytes(),
                    ("127.0.0.1", port),
                )
            # RTP-shaped, right payload type, random SSRC and sequence: rtpbin's probation drops it
            junk.sendto(bytes([0x80, 96]) + os.urandom(10) + os.urandom(60), ("127.0.0.1", port))
            if k % 5 == 0:
                junk.sendto(os.urandom(48), ("127.0.0.1", rtcp_port))
            junk.sendto(b"", ("127.0.0.1", port))

        _interleave(chain, garbage)
    y, snapshot, received = chain.finish()
    stats = snapshot["input"]
    assert stats["invalid_datagrams"] > 200
    assert stats["streams_started"] == 1 and stats["errors"] == 0
    assert stats["packets_lost"] == 0
    assert received["packets_lost"] == 0
    assert all(abs(f - BEFORE) < 15 for f in phases(y)) and len(phases(y)) >= 17


def test_wrong_payload_types_are_dropped_and_counted(chain: Chain) -> None:
    other = chain.sender(codec=OpusCodecSettings(payload_type=97))  # a real Opus stream, wrong PT
    port = chain.relay.port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as pcmu:

        def foreign(_k: int) -> None:
            other.push(tone(3000.0, 0.01, level=0.8))
            pcmu.sendto(bytes([0x80, 0]) + os.urandom(10) + bytes(80), ("127.0.0.1", port))  # PCMU

        _interleave(chain, foreign)
    y, snapshot, _ = chain.finish()
    stats = snapshot["input"]
    assert stats["wrong_payload_type"] > 250
    assert stats["streams_started"] == 1 and stats["errors"] == 0
    assert all(abs(f - BEFORE) < 15 for f in phases(y)) and len(phases(y)) >= 17


def test_burst_of_loss_is_concealed_and_the_stream_resumes(chain: Chain) -> None:
    sender = chain.sender(netsim=NetworkSimulation())
    burst = 25  # packets: 500 ms

    def lose(k: int) -> None:
        if k == 100:  # after 1 s
            sender.drop_next_packets(burst)

    count = iter(range(10**6))
    chain.send(sender, tone(BEFORE, 3.0), on_chunk=lambda _f, _t: lose(next(count)))
    sender.stop()  # BYE: the stream ends here (a sender that only went quiet gets its pause filled)
    y, snapshot, _ = chain.finish()
    stats = snapshot["input"]
    assert stats["packets_lost"] == burst
    # beyond what Opus conceals (120 ms), silence holds the time: in real time while nothing came
    # (the relay's engine keeps running), the rest concealed or filled once the loss was known
    assert stats["pause_filled_samples"] > 0
    # the timeline survived: as much audio came out as went in, and the tone is back after the burst
    assert abs(y.shape[0] - 3.0 * OPUS_RATE) < 0.03 * OPUS_RATE
    assert stats["overfilled_samples"] == 0
    tail = y[-OPUS_RATE:]
    assert abs(dominant_hz(tail) - BEFORE) < 15 and np.sqrt(np.mean(tail**2)) > 0.1
    assert snapshot["session"]["errors"] == 0


def test_dtx_pauses_keep_their_length_and_the_phrase_end_goes_out_during_them() -> None:
    # With DTX a sender sends nothing in silence. The relay must neither shorten the pause nor keep
    # the end of the phrase back until the next one: 1.05 s leaves half a block open at the pause.
    dtx = OpusCodecSettings(dtx=True)
    chain = open_chain(PassthroughEngine(), tone(200, 2.0), codec=dtx)
    try:
        sender = chain.sender(codec=dtx)
        chain.send(sender, np.concatenate([tone(BEFORE, 1.05), np.zeros(round(1.5 * OPUS_RATE), np.float32)]))
        resumed_at = time.monotonic()
        chain.send(sender, tone(AFTER, 1.0))
        sender.stop()
        arrivals = chain.collector.arrivals()
        y, snapshot, _ = chain.finish()
    finally:
        chain.close()
    size = OPUS_RATE // 100
    loud = [
        i * size
        for i in range(y.shape[0] // size)
        if np.sqrt(np.mean(y[i * size : (i + 1) * size] ** 2)) > 0.1
    ]
    first = loud[0]
    second = next(
        i for i in loud if i > first + OPUS_RATE and abs(dominant_hz(y[i : i + 4 * size]) - AFTER) < 30
    )
    last_of_first = max(i for i in loud if i < second - OPUS_RATE // 2) + size
    # the pause kept its length (Opus frames are 20 ms)
    assert abs((second - first) / OPUS_RATE - 2.55) < 0.03, (first, second)
    assert snapshot["input"]["pause_filled_samples"] > OPUS_RATE // 2
    # the end of the phrase arrived well before the next phrase was even sent
    ends = np.cumsum([n for _, n in arrivals])
    arrived_at = arrivals[int(np.searchsorted(ends, last_of_first))][0]
    assert arrived_at < resumed_at - 0.5, arrived_at - resumed_at


def test_overloaded_engine_drops_and_counts_instead_of_lagging() -> None:
    chain = open_chain(SlowEngine(slowdown=1.5), tone(200, 2.0))
    try:
        sender = chain.sender()
        chain.send(sender, tone(BEFORE, 4.0))
        sent_at = time.monotonic()
        time.sleep(1.0)  # the window in which a backlog would show as late audio
        arrivals = chain.collector.arrivals()  # before stopping, which flushes the last block
        received = chain.collector.audio()[: sum(n for _, n in arrivals)]
        _, snapshot, _ = chain.finish(tail_s=0.0)
    finally:
        chain.close()
    session = snapshot["session"]
    # a third of the input cannot be converted in time: the scheduler skips (conceals) blocks it
    # cannot finish by their deadline rather than let them queue
    assert session["skipped_blocks"] > 10
    assert session["skipped_blocks"] * session["block_ms"] + session["dropped_ms"] > 800
    # the backlog, and so the delay, stayed bounded: 2 blocks + 60 ms by default, plus one chunk
    bound_ms = 2 * session["block_ms"] + 60 + 20
    assert session["max_backlog_samples"] <= bound_ms * OPUS_RATE / 1000
    # media threads never waited on the engine: the jitter buffer saw every packet in time
    assert snapshot["input"]["packets_lost"] == 0 and snapshot["input"]["packets_late"] == 0
    # the tone came out soon after the input ended (the bounded backlog, converted at 1.5x real
    # time), not the 2 s an unbounded queue would have built up; only the encoder's last partial
    # frame waits for the end of the stream. (What comes later is the sender's pause, which the
    # relay fills with silence while the sender stays open.)
    in_time = sum(n for at, n in arrivals if at <= sent_at + 0.9)
    late = received[in_time:]
    frame = OPUS_RATE // 100
    loud = sum(
        np.sqrt(np.mean(late[i : i + frame] ** 2)) > 0.05 for i in range(0, late.shape[0] - frame + 1, frame)
    )
    assert arrivals and loud * frame <= 2 * 960, f"{loud * 10} ms of the tone arrived late"
