"""The timeline of one received RTP stream, kept so that output sample n stays at stream time n.

Plain values in, audio out: each packet's RTP timestamp and payload, each lost-packet event's
duration, the decoder's output and the time now. No ``gi`` here; ``receiver._TimelineProbe`` feeds it
from the depayloader's sink pad and applies its answers to GStreamer's loss events.

- Loss: opusdec conceals at most 120 ms per loss event (libopus's limit), so after a longer burst
  fewer samples come out than went missing. The depayloader's input is accounted for (each packet's
  duration from its TOC byte, each lost-packet event's duration) and a shortfall beyond what the
  decoder may still hold is filled with silence after the concealment.
- Pauses: a sender with DTX sends nothing in silence, and its next packet's RTP timestamp jumps (the
  sequence numbers do not): the jump is filled with silence like a loss. For a live consumer,
  ``fill_pause`` (a timer) also delivers the silence in real time while nothing comes, so the consumer
  keeps running and flushes the end of what was said; the timestamp jump then settles the account.
  Silence filled during what turns out to be a loss burst is taken off the loss event, so the two
  never both fill the same time; silence filled for packets that were only late is taken off the
  next pause.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from vcstream.audio.types import Audio
from vcstream.media.rtp.codec import OPUS_RATE, opus_packet_samples

#: shortfalls of decoded audio filled with silence (at 48 kHz): from half a 20 ms frame to 2 s
MIN_FILL_SAMPLES = 480
MAX_FILL_SAMPLES = 2 * OPUS_RATE
#: a sender's pause (DTX) is filled with silence once nothing was decoded for the jitter buffer's
#: latency plus this (longer than the receiver's ``BYE_GRACE_MS``: a stream that ended is not
#: filled), in pieces of 10 ms every ``PAUSE_TICK_MS``
PAUSE_GRACE_MS = 150
PAUSE_PIECE_SAMPLES = OPUS_RATE // 100
PAUSE_TICK_MS = 20
#: within a pause, how long past a comfort-noise update before the filling goes on
IN_PAUSE_WAIT_MS = 60
_NS_PER_SECOND = 1_000_000_000


class ReceiverState:
    """What every stream of one receiver shares: the user's callbacks, which SSRC is delivered, and
    the counters of its timelines."""

    def __init__(self, on_audio: Callable[[Audio], None], on_stream_end: Callable[[], None] | None) -> None:
        self.on_audio = on_audio
        self.on_stream_end = on_stream_end
        self.active_ssrc: int | None = None
        self.samples_decoded = 0
        self.ignored_samples = 0
        self.filled_samples = 0
        self.pause_filled_samples = 0
        self.overfilled_samples = 0
        self.last_audio_at: float | None = None


class StreamTimeline:
    """One SSRC's timeline (see the module's description). Its audio goes to the user's callback only
    while it is the active SSRC.

    ``account_packet`` and ``account_loss`` describe what goes into the decoder, ``decoded`` what
    comes out of it (both on the streaming thread), ``fill_pause`` is the live filler's timer (another
    thread). ``clock`` tells when audio was decoded (monotonic seconds, the time base of ``now``)."""

    def __init__(
        self,
        ssrc: int,
        state: ReceiverState,
        decoder_holds_one: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ssrc = ssrc
        self.state = state
        self._holds_one = decoder_holds_one  # opusdec with in-band FEC decodes one packet late
        self._clock = clock
        self._lock = threading.Lock()  # streaming thread (decoding) and GLib thread (pause fill)
        self._expected = 0  # stream time that went into the decoder (packets, losses, pauses)
        self._last_item = 0  # duration of the latest packet or loss
        self._delivered = 0
        self._frame = 0  # duration of the latest packet, what a lost one is taken to have lasted
        self._ts_base: int | None = None  # RTP timestamp of stream time 0
        self._decoded_at: float | None = None  # when the decoder last delivered
        self._pause_filled = 0  # silence delivered since then
        self._credit = 0  # of that, not yet matched by a timestamp jump or a loss
        self._pausing = False  # the sender is in a pause (DTX), between its comfort-noise updates
        self._ended = False

    @property
    def decoded_at(self) -> float | None:
        """When the decoder last delivered (``clock`` time), None before it did."""
        return self._decoded_at

    def account_packet(self, timestamp: int, payload: bytes) -> None:
        """A packet with RTP ``timestamp`` and Opus ``payload`` goes into the decoder."""
        with self._lock:
            if self._ts_base is None:
                self._ts_base = (timestamp - self._expected) % 2**32
            jump = (timestamp - self._ts_base) % 2**32 - self._expected
            # stream time passed without packets: a pause (DTX), in which this was a comfort-noise
            # update
            self._pausing = 0 < jump < 2**31
            if self._pausing:
                self._expected += jump
                self._credit -= min(self._credit, jump)
            # silence filled beyond the pause (the packets were only late) stays ahead of the account
            # until the next pause takes it off
            self.state.overfilled_samples += self._credit
            self._credit = 0
            self._last_item = opus_packet_samples(payload)
            self._expected += self._last_item
            self._frame = self._last_item or self._frame

    def account_loss(self, duration_ns: int) -> int | None:
        """A lost-packet event goes into the decoder, lasting ``duration_ns`` by the jitter buffer's
        estimate. Returns how long (ns) the decoder is to conceal, 0 for not at all, or None before
        any packet told the frame length (the event is then left as it is)."""
        if not self._frame:
            return None
        # The jitter buffer estimates a lost packet's duration from arrival times, which jitter
        # (25 ms for a 20 ms packet), and opusdec conceals exactly that long: the timeline would
        # drift. Lost packets last whole frames: round to them.
        frames = max(1, round(duration_ns * OPUS_RATE / _NS_PER_SECOND / self._frame))
        with self._lock:
            if not self._credit:
                conceal = frames
            else:  # silence already stood in for the start of this loss: conceal only the rest
                covered = min(self._credit, frames * self._frame)
                self._credit -= covered
                conceal = (frames * self._frame - covered) // self._frame
            self._last_item = frames * self._frame
            self._expected += self._last_item
        return conceal * self._frame * _NS_PER_SECOND // OPUS_RATE

    def decoded(self, samples: Audio) -> None:
        """The decoder's output (a packet, a concealment): delivered, then any hole left by a loss
        longer than the concealment or by a pause is filled with silence."""
        state = self.state
        with self._lock:
            # a pause longer than the live filling goes: the rest of it is skipped, not filled late
            skip_rest = self._pause_filled >= MAX_FILL_SAMPLES
            self._deliver(samples)
            state.samples_decoded += samples.shape[0]
            state.last_audio_at = self._decoded_at = self._clock()
            self._pause_filled = 0
            # after the concealment of a loss, not before it: concealment continues the signal
            hole = self._owed() - self._delivered
            if MIN_FILL_SAMPLES <= hole <= MAX_FILL_SAMPLES and not skip_rest:
                self._deliver(np.zeros(hole, dtype=np.float32))
                state.filled_samples += hole
            elif hole > 0 and (skip_rest or hole > MAX_FILL_SAMPLES):
                self._delivered += hole  # a jump in the stream, not loss: start counting afresh

    def fill_pause(self, now: float, grace_s: float) -> None:
        """Timer: nothing decoded for longer than ``grace_s`` before ``now``: deliver the silence due
        since, in whole 10 ms pieces, up to ``MAX_FILL_SAMPLES`` per pause."""
        with self._lock:
            if self._ended or self._decoded_at is None:
                return
            # after a comfort-noise update the next one is not awaited as long; the wait counts from
            # the last decoded audio, so it must not shorten while one silence is being filled (the
            # fill would run ahead of real time, past the end of a loss burst)
            wait_s = IN_PAUSE_WAIT_MS / 1000 if self._pausing else grace_s
            due = min(round((now - self._decoded_at - wait_s) * OPUS_RATE), MAX_FILL_SAMPLES)
            ahead = max(0, self._delivered - self._credit - self._owed())
            due = (due - self._pause_filled - ahead) // PAUSE_PIECE_SAMPLES * PAUSE_PIECE_SAMPLES
            if due <= 0:
                return
            self._deliver(np.zeros(due, dtype=np.float32))
            self._pause_filled += due
            self._credit += due
            self.state.pause_filled_samples += due

    def _owed(self) -> int:
        """Stream time the decoder should have delivered by now: all that went in, less the latest
        packet or loss where it decodes one late (in-band FEC)."""
        return self._expected - (self._last_item if self._holds_one else 0)

    def end(self) -> None:
        """The stream is over (after its BYE, or timed out): tell the user once, if it was the one
        being delivered."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
        on_end = self.state.on_stream_end
        if on_end is not None and self.state.active_ssrc == self.ssrc:
            on_end()

    def _deliver(self, samples: Audio) -> None:
        self._delivered += samples.shape[0]
        if self.state.active_ssrc != self.ssrc:
            self.state.ignored_samples += samples.shape[0]
        else:
            self.state.on_audio(samples)
