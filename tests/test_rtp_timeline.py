"""The receiver's timeline of one RTP stream, frames in and frames out, on a clock the test controls
(no pipeline): what goes into the decoder (packets with their RTP timestamps, lost-packet events),
what opusdec hands back, and the audio that comes out, which must keep output sample n at stream
time n through loss, DTX pauses and restarts.

The decoder's output is written as opusdec gives it: a packet's frame; a loss event's concealment,
as long as the event says but at most 120 ms (libopus's limit); with in-band FEC every item one late,
a loss decoded from the next packet's FEC data."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from vcstream.audio.types import Audio
from vcstream.media.rtp.codec import OPUS_RATE, RTP_HEADER_BYTES
from vcstream.media.rtp.gate import _RtpGate
from vcstream.media.rtp.timeline import (
    IN_PAUSE_WAIT_MS,
    MAX_FILL_SAMPLES,
    PAUSE_GRACE_MS,
    PAUSE_TICK_MS,
    ReceiverState,
    StreamTimeline,
)

FRAME = 960  # 20 ms
FRAME_NS = 20_000_000
CELT_20MS = bytes([31 << 3, 0])  # TOC byte: CELT fullband, 20 ms, one frame
MAX_CONCEAL = 5760  # 120 ms: what opusdec conceals of one loss event at most
LATENCY_S = 0.06  # the receiver's default jitter buffer latency
GRACE_S = LATENCY_S + PAUSE_GRACE_MS / 1000
TICK_S = PAUSE_TICK_MS / 1000
SSRC = 0x1234


class Clock:
    """Monotonic seconds that pass only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Stream:
    """One SSRC's timeline with what it delivered to the user's callback."""

    def __init__(self, *, fec: bool = False) -> None:
        self.clock = Clock()
        self.out: list[Audio] = []
        self.state = ReceiverState(self.out.append, None)
        self.state.active_ssrc = SSRC
        self.timeline = StreamTimeline(SSRC, self.state, decoder_holds_one=fec, clock=self.clock)

    def packet(self, timestamp: int) -> None:
        """A 20 ms packet goes into the decoder."""
        self.timeline.account_packet(timestamp % 2**32, CELT_20MS)

    def decoded(self, samples: int, value: float = 1.0) -> None:
        """The decoder hands over ``samples`` (of ``value``, to tell them from filled silence)."""
        self.timeline.decoded(np.full(samples, value, dtype=np.float32))

    def packet_decoded(self, timestamp: int, value: float = 1.0) -> None:
        """A packet through a decoder without FEC: its frame comes out at once."""
        self.packet(timestamp)
        self.decoded(FRAME, value)

    def lost(self, duration_ns: int) -> int:
        """A loss event goes into the decoder; returns what it is to conceal, in samples."""
        conceal_ns = self.timeline.account_loss(duration_ns)
        assert conceal_ns is not None
        assert conceal_ns * OPUS_RATE % 1_000_000_000 == 0  # whole samples, no drift
        return conceal_ns * OPUS_RATE // 1_000_000_000

    def tick_until(self, until: float) -> None:
        """The live filler's timer, every ``PAUSE_TICK_MS`` up to ``until``."""
        while self.clock.now + TICK_S <= until + 1e-9:
            self.clock.now += TICK_S
            self.timeline.fill_pause(self.clock.now, GRACE_S)

    def output(self) -> Audio:
        return np.concatenate(self.out) if self.out else np.zeros(0, dtype=np.float32)


def test_a_steady_stream_comes_out_as_it_went_in() -> None:
    s = Stream()
    for n in range(50):
        s.packet_decoded(7 + n * FRAME, value=n)
        s.tick_until(s.clock.now + TICK_S)  # packets keep coming: the live filler never fills
    out = s.output()
    assert out.shape[0] == 50 * FRAME
    assert np.array_equal(out, np.repeat(np.arange(50, dtype=np.float32), FRAME))
    assert s.state.filled_samples == s.state.pause_filled_samples == s.state.overfilled_samples == 0


def test_a_lost_first_packet_starts_the_stream_at_the_second_packets_timestamp() -> None:
    s = Stream()
    # the sender's first packet (timestamp 4040) never came: nothing knows it existed
    assert s.timeline.account_loss(FRAME_NS) is None  # no frame length yet: the event passes as is
    for n in range(1, 6):
        s.packet_decoded(4040 + n * FRAME)
    assert s.output().shape[0] == 5 * FRAME  # no gap from timestamp 0 or 4040 to the first packet
    assert s.state.filled_samples == 0


def test_the_timestamp_wrapping_around_is_no_gap() -> None:
    s = Stream()
    for n in range(6):
        s.packet_decoded(2**32 - 3 * FRAME + n * FRAME)
    assert s.output().shape[0] == 6 * FRAME
    assert s.state.filled_samples == 0


def test_a_loss_event_lasts_whole_frames_whatever_the_jitter_buffer_estimated() -> None:
    s = Stream()
    s.packet_decoded(0)
    assert s.lost(25_000_000) == FRAME  # one 20 ms packet, estimated from jittery arrivals
    s.decoded(FRAME, value=0.5)
    s.packet_decoded(2 * FRAME)
    assert s.lost(55_000_000) == 3 * FRAME
    s.decoded(3 * FRAME, value=0.5)
    s.packet_decoded(6 * FRAME)
    assert s.output().shape[0] == 7 * FRAME
    assert s.state.filled_samples == 0


def test_a_burst_longer_than_the_concealment_is_filled_to_exactly_its_length() -> None:
    s = Stream()
    s.packet_decoded(0, value=1)
    s.packet_decoded(FRAME, value=2)
    # packets 2..9 lost (160 ms): opusdec conceals 120 ms of it, the rest is silence after that
    conceal = s.lost(8 * FRAME_NS)
    assert conceal == 8 * FRAME
    s.decoded(min(conceal, MAX_CONCEAL), value=0.5)
    s.packet_decoded(10 * FRAME, value=3)
    out = s.output()
    assert out.shape[0] == 11 * FRAME
    assert s.state.filled_samples == 8 * FRAME - MAX_CONCEAL
    expected = np.concatenate(
        [
            np.full(FRAME, 1),
            np.full(FRAME, 2),
            np.full(MAX_CONCEAL, 0.5),  # concealment continues the signal: first
            np.zeros(8 * FRAME - MAX_CONCEAL),
            np.full(FRAME, 3),  # the next packet at its stream time
        ]
    ).astype(np.float32)
    assert np.array_equal(out, expected)


def test_with_fec_the_packet_after_a_hole_recovers_it_and_nothing_is_filled() -> None:
    """opusdec with in-band FEC holds one item back: a packet's frame comes out when the next item
    arrives, and a loss comes out when the packet after it arrives (concealment, then that packet's
    FEC copy of the last lost frame). The timeline owes one item less than went in."""
    s = Stream(fec=True)
    s.packet(0)  # held by the decoder
    s.packet(FRAME)
    s.decoded(FRAME, value=1)  # packet 0
    assert s.lost(3 * FRAME_NS) == 3 * FRAME  # packets 2..4
    s.decoded(FRAME, value=2)  # packet 1
    s.packet(5 * FRAME)
    # the loss in one piece: concealment of packets 2 and 3, packet 4 from packet 5's FEC data
    s.timeline.decoded(np.repeat(np.array([0.5, 0.75], dtype=np.float32), [2 * FRAME, FRAME]))
    s.packet(6 * FRAME)
    s.decoded(FRAME, value=5)  # packet 5
    assert s.state.filled_samples == 0  # a hole counted without the held packet would be filled
    expected = [1] * FRAME + [2] * FRAME + [0.5] * 2 * FRAME + [0.75] * FRAME + [5] * FRAME
    assert np.array_equal(s.output(), np.array(expected, dtype=np.float32))


def test_with_fec_a_burst_longer_than_the_concealment_is_filled_to_exactly_its_length() -> None:
    s = Stream(fec=True)
    s.packet(0)
    s.packet(FRAME)
    s.decoded(FRAME)  # packet 0
    assert s.lost(8 * FRAME_NS) == 8 * FRAME  # packets 2..9
    s.decoded(FRAME)  # packet 1
    s.packet(10 * FRAME)
    s.decoded(MAX_CONCEAL, value=0.5)  # the loss, with packet 9 from packet 10's FEC data
    s.packet(11 * FRAME)
    s.decoded(FRAME, value=3)  # packet 10
    out = s.output()
    assert out.shape[0] == 11 * FRAME  # packet 11 is still in the decoder
    assert s.state.filled_samples == 8 * FRAME - MAX_CONCEAL
    assert np.array_equal(out[-FRAME:], np.full(FRAME, 3, dtype=np.float32))


def test_a_dtx_pause_keeps_its_length() -> None:
    s = Stream()
    for n in range(5):
        s.packet_decoded(n * FRAME)
    # DTX: the next packet comes 400 ms of stream time later, the sequence numbers continue
    pause = round(0.4 * OPUS_RATE)
    s.packet_decoded(5 * FRAME + pause, value=2)
    out = s.output()
    assert out.shape[0] == 6 * FRAME + pause
    assert s.state.filled_samples == pause
    assert np.count_nonzero(out == 0) == pause


def test_a_pause_beyond_what_is_filled_is_skipped_not_filled() -> None:
    s = Stream()
    s.packet_decoded(0)
    s.packet_decoded(FRAME + MAX_FILL_SAMPLES + FRAME)  # a jump in the stream, not a pause to fill
    s.packet_decoded(2 * FRAME + MAX_FILL_SAMPLES + FRAME)
    assert s.output().shape[0] == 3 * FRAME
    assert s.state.filled_samples == 0


def test_a_live_filled_dtx_pause_keeps_its_length() -> None:
    s = Stream()
    for n in range(5):
        s.packet_decoded(n * FRAME)
    last_decoded = s.clock.now
    pause = round(0.4 * OPUS_RATE)
    s.tick_until(last_decoded + 0.4 + LATENCY_S)  # the sender pauses; the next packet is on its way
    live = s.state.pause_filled_samples
    assert 0 < live <= (0.4 + LATENCY_S - GRACE_S) * OPUS_RATE
    s.packet_decoded(5 * FRAME + pause, value=2)  # the timestamp jump settles the account
    assert s.output().shape[0] == 6 * FRAME + pause
    assert s.state.filled_samples == pause - live
    assert s.state.overfilled_samples == 0


def test_silence_for_a_gap_in_packets_is_delivered_in_real_time_only() -> None:
    """Once live filling starts it must not run ahead of real time (the CI failure commit 349c411
    fixed: the in-pause wait applied as soon as the filling started)."""
    s = Stream()
    s.packet_decoded(0)
    decoded_at = s.timeline.decoded_at
    assert decoded_at is not None
    s.timeline.fill_pause(decoded_at + GRACE_S - 0.01, GRACE_S)
    assert s.state.pause_filled_samples == 0  # within the grace: packets may only be late
    for elapsed in np.arange(GRACE_S + 0.02, GRACE_S + 0.5, 0.02):
        s.timeline.fill_pause(decoded_at + elapsed, GRACE_S)
        due = (elapsed - GRACE_S) * OPUS_RATE
        # whole 10 ms pieces, never ahead of the time that passed since the grace ran out
        assert due - 480 <= s.state.pause_filled_samples <= due + 1, elapsed
    assert sum(chunk.shape[0] for chunk in s.out) == FRAME + s.state.pause_filled_samples


def test_silence_filled_during_a_loss_burst_is_taken_off_its_concealment() -> None:
    """A burst of 300 ms: the live filler runs until the jitter buffer reports the loss (its latency
    after the next packet arrived); the concealment is only the rest, and the timeline does not
    grow."""
    s = Stream()
    for n in range(5):
        s.packet_decoded(n * FRAME)
    lost = 15
    s.tick_until(s.clock.now + (lost + 1) * TICK_S + LATENCY_S)
    credit = s.state.pause_filled_samples
    assert 0 < credit < lost * FRAME
    conceal = s.lost(lost * FRAME_NS)
    assert conceal == (lost * FRAME - credit) // FRAME * FRAME
    if conceal:  # else the loss event is dropped: the decoder sees none
        s.decoded(min(conceal, MAX_CONCEAL), value=0.5)
    s.packet_decoded((5 + lost) * FRAME, value=2)
    assert s.output().shape[0] == (6 + lost) * FRAME
    assert s.state.overfilled_samples == 0


def test_a_loss_event_wholly_filled_already_is_not_concealed() -> None:
    s = Stream()
    s.packet_decoded(0)
    s.tick_until(s.clock.now + GRACE_S + 0.1)
    filled = s.state.pause_filled_samples
    assert filled > FRAME
    assert s.lost(FRAME_NS) == 0  # one packet lost: silence stood in for all of it
    s.packet_decoded(2 * FRAME)
    assert s.state.overfilled_samples == filled - FRAME  # the rest was for packets only late
    assert s.output().shape[0] == 3 * FRAME + s.state.overfilled_samples


def test_after_a_comfort_noise_update_the_fill_resumes_sooner() -> None:
    s = Stream()
    s.packet_decoded(0)
    # DTX: the next packet comes 400 ms of stream time later, the sequence numbers continue
    s.packet_decoded(FRAME + round(0.4 * OPUS_RATE))
    decoded_at = s.timeline.decoded_at
    assert decoded_at is not None
    s.timeline.fill_pause(decoded_at + IN_PAUSE_WAIT_MS / 1000 + 0.05, GRACE_S)
    assert abs(s.state.pause_filled_samples - 0.05 * OPUS_RATE) <= 480
    # the stream goes on without a break: back to the full grace
    s.packet_decoded(FRAME + round(0.4 * OPUS_RATE) + FRAME)
    decoded_at = s.timeline.decoded_at
    assert decoded_at is not None
    filled = s.state.pause_filled_samples
    s.timeline.fill_pause(decoded_at + GRACE_S - 0.01, GRACE_S)
    assert s.state.pause_filled_samples == filled


def test_comfort_noise_updates_through_a_long_pause_keep_its_length() -> None:
    """A DTX sender in a long silence sends a comfort-noise update every 400 ms; live filling
    follows each one after the shorter wait, and every update's jump takes the filled silence off."""
    s = Stream()
    s.packet_decoded(0)
    update = round(0.4 * OPUS_RATE)
    timestamp = 0
    for _ in range(3):
        s.tick_until(s.clock.now + 0.4)
        timestamp += FRAME + update
        s.packet_decoded(timestamp, value=0.1)
    # the first wait is the full grace, the later ones only the in-pause wait
    waits = GRACE_S + 2 * IN_PAUSE_WAIT_MS / 1000
    assert s.state.pause_filled_samples >= (3 * 0.4 - waits) * OPUS_RATE - 3 * 480
    assert s.output().shape[0] == timestamp + FRAME
    assert s.state.overfilled_samples == 0


def test_a_timestamp_going_back_is_no_gap() -> None:
    s = Stream()
    for n in range(3):
        s.packet_decoded(90_000 + n * FRAME)
    s.packet_decoded(1_000)  # a new timestamp origin on the same SSRC
    assert s.output().shape[0] == 4 * FRAME
    assert s.state.filled_samples == 0
    # nor a pause: the live filler waits the full grace, not the in-pause wait
    s.timeline.fill_pause(s.clock.now + GRACE_S - 0.01, GRACE_S)
    assert s.state.pause_filled_samples == 0


def rtp_head(ssrc: int, seq: int, payload_type: int = 96) -> bytes:
    return (
        bytes([0x80, payload_type])
        + seq.to_bytes(2, "big")
        + (0).to_bytes(4, "big")
        + ssrc.to_bytes(4, "big")
    )


def test_a_same_ssrc_restart_resets_the_session_and_the_new_stream_starts_afresh() -> None:
    """A sender killed and restarted with its fixed SSRC: new sequence numbers after a pause. The gate
    holds its packets back and asks for a reset (the receiver then drops every branch: a new timeline
    for the stream); the new stream's timestamps, behind the old ones, are no huge gap."""
    resets: list[bool] = []
    gate = _RtpGate(96, None, lambda: resets.append(True))
    arrival = 10.0
    for seq in range(100, 110):
        assert gate.admit(RTP_HEADER_BYTES + 2, rtp_head(SSRC, seq), arrival)
        arrival += 0.02
    arrival += 0.5  # killed; restarted
    assert not gate.admit(RTP_HEADER_BYTES + 2, rtp_head(SSRC, 40_000), arrival)
    assert not gate.admit(RTP_HEADER_BYTES + 2, rtp_head(SSRC, 40_001), arrival + 0.02)
    assert resets == [True] and gate.held_back == 2 and gate.restarts_without_bye == 1
    gate.forget()  # the receiver's reset
    assert gate.admit(RTP_HEADER_BYTES + 2, rtp_head(SSRC, 40_002), arrival + 0.04)

    s = Stream()  # the new branch's timeline
    for n in range(5):
        s.packet_decoded(500 + n * FRAME)
    assert s.output().shape[0] == 5 * FRAME
    assert s.state.filled_samples == 0


def test_a_dtx_pause_is_no_restart() -> None:
    resets: list[bool] = []
    gate = _RtpGate(96, None, lambda: resets.append(True))
    assert gate.admit(RTP_HEADER_BYTES + 2, rtp_head(SSRC, 7), 10.0)
    # 400 ms without packets, and the numbering goes on
    assert gate.admit(RTP_HEADER_BYTES + 2, rtp_head(SSRC, 8), 10.4)
    assert resets == []


def test_audio_of_a_stream_that_is_not_the_active_one_is_counted_not_delivered() -> None:
    s = Stream()
    s.state.active_ssrc = SSRC + 1
    s.packet_decoded(0)
    assert s.out == [] and s.state.ignored_samples == FRAME


def test_the_timeline_and_what_it_builds_on_import_no_gstreamer() -> None:
    """In a fresh interpreter: the timeline (and the codec arithmetic it uses) load without gi."""
    probe = (
        "import sys, vcstream.media.rtp.timeline, vcstream.media.rtp.codec; "
        "print(sorted(m for m in sys.modules if m == 'gi' or m.startswith('gi.')))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout
