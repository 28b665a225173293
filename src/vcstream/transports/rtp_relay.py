"""A converting RTP relay: Opus/RTP in -> engine session -> Opus/RTP out.

Threads and queues, from the network to the network:

1. the receiver's jitter-buffer thread decodes a packet and calls ``LiveSession.feed`` (a bounded
   backlog: append and notify, never a wait on inference);
2. the session's worker thread runs the engine block by block; when it falls behind, the oldest
   input beyond ``max_backlog_s`` is dropped and counted (``LiveSession``'s policy), so the delay a
   listener hears stays bounded;
3. converted audio goes to the sender's appsrc (non-blocking, itself bounded), which encodes and
   sends on GStreamer's threads.

Block alignment: the engine needs a whole block (plus its input resampler's few samples of
look-ahead) before it can convert, and audio arrives one Opus frame at a time. Unaligned, every
block would wait for the frame after the one that completes it (up to 20 ms more, on every block).
The session is therefore primed with exactly that look-ahead in silence, so blocks complete on the
packet that ends them; likewise the output starts with the few samples that put block ends on
Opus frame ends (for block times that are multiples of the frame size).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from vcstream.audio.resample import make_resampler
from vcstream.audio.types import Audio
from vcstream.engines.base import Engine, VoiceProfile
from vcstream.engines.settings import SessionSettings
from vcstream.media.rtp import OPUS_RATE, OpusCodecSettings, RtpOpusReceiver, RtpOpusSender
from vcstream.streaming.converter import StreamConverter
from vcstream.streaming.live import LiveSession

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelayTaps:
    """Observers of the audio at the relay's two boundaries (benchmarks and tests), called on the
    receiving streaming thread and on the session's worker thread respectively."""

    on_input: Callable[[Audio], None] | None = None
    on_output: Callable[[Audio], None] | None = None


def input_lead_samples(converter: StreamConverter) -> int:
    """Input samples the converter needs beyond a whole block before it converts that block (its
    input resampler's look-ahead), found by running a fresh resampler of the same kind."""
    session = converter.session
    resampler = make_resampler(converter.io_rate, session.sample_rate)
    block_in = round(session.block_size * converter.io_rate / session.sample_rate)
    produced = resampler.process(np.zeros(block_in, dtype=np.float32)).shape[0]
    extra = 0
    while produced < session.block_size and extra < block_in:  # a handful of samples in practice
        produced += resampler.process(np.zeros(1, dtype=np.float32)).shape[0]
        extra += 1
    return extra


class RtpRelay:
    """Receives Opus/RTP on ``listen_port``, converts it with one engine session and sends Opus/RTP to
    ``destination`` (host, port). ``listen_port`` 0 takes a free port: read ``port``."""

    def __init__(
        self,
        engine: Engine,
        voice: VoiceProfile,
        listen_port: int,
        destination: tuple[str, int],
        *,
        codec: OpusCodecSettings | None = None,
        latency_ms: int = 60,
        bind_address: str = "0.0.0.0",
        rtcp_port: int | None = None,
        settings: SessionSettings | None = None,
        max_backlog_s: float | None = None,
        taps: RelayTaps | None = None,
        trace: bool = False,
    ) -> None:
        self.codec = codec or OpusCodecSettings()
        self.engine = engine
        self._taps = taps or RelayTaps()
        self._started_at = time.monotonic()
        self.converter = StreamConverter(engine, voice, OPUS_RATE, settings)
        self.lead_samples = input_lead_samples(self.converter)
        host, port = destination
        try:
            # the listening ports first: the likeliest failure (port in use) leaves nothing behind
            self.receiver = RtpOpusReceiver(
                listen_port,
                self._ingest,
                on_stream_end=self._flush,
                fill_pauses=True,  # the engine keeps running through a pause: the end of a phrase goes out
                codec=self.codec,
                latency_ms=latency_ms,
                bind_address=bind_address,
                rtcp_port=rtcp_port,
                trace=trace,
                name="relay-in",
            )
        except BaseException:
            self.converter.close()
            raise
        try:
            self.sender = RtpOpusSender(host, port, codec=self.codec, trace=trace, name="relay-out")
        except BaseException:
            self.receiver.stop()
            self.converter.close()
            raise
        self.session = LiveSession(self.converter, self._emit, max_backlog_s=max_backlog_s, name="relay")
        self._running = False
        self._emitted = False
        self.output_pad_samples = 0
        self.flushes = 0

    @property
    def port(self) -> int:
        return self.receiver.port

    def start(self) -> RtpRelay:
        self.sender.start()
        if self.lead_samples:
            self.session.feed(np.zeros(self.lead_samples, dtype=np.float32))
        try:
            self.receiver.start()
        except BaseException:
            self.sender.stop(drain_timeout_s=0)
            self.session.stop()
            raise
        self._running = True
        self._started_at = time.monotonic()
        log.info(
            "relay %s:%d -> %s:%d with %s (block %.0f ms, algorithmic latency %.0f ms)",
            self.receiver.bind_address,
            self.port,
            self.sender.host,
            self.sender.port,
            self.engine.name,
            1000 * self.converter.block_size / OPUS_RATE,
            1000 * self.converter.algorithmic_latency_s,
        )
        return self

    def stop(self) -> None:
        """Stop receiving, let the session finish its current block, send what is left, stop."""
        self.receiver.stop()
        self.session.stop()
        self.sender.stop()
        self._running = False

    def set_voice(self, voice: VoiceProfile) -> None:
        self.session.set_voice(voice)

    @property
    def error(self) -> BaseException | None:
        """The engine's latest failure (the relay keeps running; failed blocks are counted)."""
        return self.session.error

    def snapshot(self) -> dict[str, Any]:
        """Statistics of the whole relay: ``input`` (RTP in: packets, loss, jitter, late, stream
        changes), ``session`` (blocks, inference ms, backlog, late and dropped blocks) and
        ``output`` (RTP out: packets, bytes, what the far end reports over RTCP)."""
        return {
            "engine": self.engine.name,
            "running": self._running,
            "uptime_s": time.monotonic() - self._started_at,
            "lead_ms": 1000 * self.lead_samples / OPUS_RATE,
            "output_pad_ms": 1000 * self.output_pad_samples / OPUS_RATE,
            "stream_flushes": self.flushes,
            "input": self.receiver.stats(),
            "session": self.session.snapshot(),
            "output": self.sender.stats(),
        }

    # -- thread crossings ----------------------------------------------------------------------------
    def _ingest(self, samples: Audio) -> None:
        """Receiver streaming thread: hand over and return."""
        if self._taps.on_input is not None:
            self._taps.on_input(samples)
        self.session.feed(samples)

    def _flush(self) -> None:
        """The sender's stream ended (GStreamer thread): complete the block in progress with silence,
        so the end of what was said goes out now instead of with the next stream. The next stream
        then starts on a block boundary again."""
        counters = self.session.counters
        converted = counters.samples_in - counters.dropped_samples - self.lead_samples
        partial = converted % self.converter.block_size
        if partial:
            self.session.feed(np.zeros(self.converter.block_size - partial, dtype=np.float32))
        self.flushes += 1

    def _emit(self, samples: Audio) -> None:
        """Session worker thread: the appsrc push does not block."""
        if not self._emitted:
            # The first output is a block minus the output resampler's look-ahead; a few samples of
            # silence before it put every later block end on an Opus frame end, so the encoder
            # sends a block's last frame with the block instead of with the next one.
            self._emitted = True
            pad = -samples.shape[0] % self.codec.frame_samples
            samples = np.concatenate([np.zeros(pad, dtype=np.float32), samples])
            self.output_pad_samples = pad
        if self._taps.on_output is not None:
            self._taps.on_output(samples)
        self.sender.push(samples)
