"""Decoding the Opus packets a WebRTC peer receives: each packet at once, and the FEC only where a frame
was lost.

Opus in-band FEC rebuilds a lost frame from the packet after it. GStreamer's ``opusdec`` with
``use-inband-fec`` therefore decodes every packet only when the next one (or a loss event) arrives:
it holds one frame back on every call, lossy or not (measured: two clean calls with both decoders'
FEC off had every marker about 40 ms earlier, 20 ms per decoder). Here a packet is decoded as it
comes. The jitter buffer reports a lost packet (a GAP event out of the depayloader) only once a later
packet has arrived, and hands that packet on right after the event; so the wait for the FEC happens
only after a loss, and costs nothing more than the jitter buffer already waited: the last lost
frame is rebuilt from that packet's FEC, any before it are concealed, then the packet is decoded.

A gap is counted in whole frames of the packet after it (the jitter buffer estimates a gap's length
from arrival times, in 2.5 ms steps: 12.5 or 22.5 ms where one 20 ms frame was lost), so the decoded
timeline keeps the sender's length.
"""

from __future__ import annotations

import threading

import numpy as np

from vcstream.audio.resample import StreamingResampler
from vcstream.audio.types import Audio
from vcstream.media.libopus import OPUS_DECODING_RATES, OpusDecoder
from vcstream.media.opus_packets import carries_fec

__all__ = ["ReceivedOpus", "decoding_rate"]


def decoding_rate(audio_rate: int) -> int:
    """The rate to decode Opus at for audio wanted at ``audio_rate``: the lowest Opus codes at that
    loses nothing of it (decoding at 16 kHz for a 16 kHz engine skips resampling altogether)."""
    return next((rate for rate in OPUS_DECODING_RATES if rate >= audio_rate), OPUS_DECODING_RATES[-1])


class ReceivedOpus:
    """Turns one stream's Opus packets and loss reports into mono float32 audio at ``audio_rate``.

    Fed from one streaming thread (``packet``, ``lost``); the counters may be read from any."""

    def __init__(self, audio_rate: int) -> None:
        self.audio_rate = audio_rate
        self._decoder = OpusDecoder(decoding_rate(audio_rate))
        rate = self._decoder.rate
        self._resampler = None if rate == audio_rate else StreamingResampler(rate, audio_rate)
        self._lost_s = 0.0
        self._lock = threading.Lock()
        #: seconds of audio made up for lost or refused packets (concealment)
        self.concealed_s = 0.0
        #: seconds of audio rebuilt from the FEC of the packet after a loss
        self.recovered_s = 0.0
        #: packets libopus refused (malformed), each concealed as one frame
        self.refused = 0

    def lost(self, seconds: float) -> None:
        """The jitter buffer gave up this much audio; the next packet tells how to fill it."""
        self._lost_s += max(0.0, seconds)

    def packet(self, data: bytes) -> Audio:
        """The audio of ``data``, after whatever a reported loss before it needs."""
        decoder = self._decoder
        frame = decoder.samples_in(data)
        pieces: list[Audio] = []
        concealed = recovered = 0
        if self._lost_s > 0 and frame > 0:
            missing = max(1, round(self._lost_s * decoder.rate / frame)) * frame
            self._lost_s = 0.0
            if missing > frame:
                pieces.append(decoder.conceal(missing - frame))
                concealed += missing - frame
            rebuilt = decoder.decode_fec(data, frame)
            if rebuilt is not None and carries_fec(data):
                pieces.append(rebuilt)
                recovered += frame
            else:  # no FEC in it: libopus conceals instead
                pieces.append(rebuilt if rebuilt is not None else decoder.conceal(frame))
                concealed += frame
        decoded = decoder.decode(data) if frame > 0 else None
        if decoded is None:
            # a packet libopus refuses is a lost frame (20 ms, the length WebRTC senders use)
            decoded = decoder.conceal(frame or decoder.rate // 50)
            concealed += decoded.shape[0]
            with self._lock:
                self.refused += 1
        pieces.append(decoded)
        with self._lock:
            self.concealed_s += concealed / decoder.rate
            self.recovered_s += recovered / decoder.rate
        audio = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        return audio if self._resampler is None else self._resampler.process(audio)

    def close(self) -> None:
        self._decoder.close()
