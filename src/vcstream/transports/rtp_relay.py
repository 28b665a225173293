"""A converting RTP relay: Opus/RTP in -> engine session -> Opus/RTP out.

Threads and queues, from the network to the network:

1. the receiver's jitter-buffer thread decodes a packet and calls ``LiveSession.feed`` (a bounded
   backlog: append and notify, never a wait on inference);
2. the engine's ``BlockScheduler`` runs the session's blocks (with any other session's); when it
   falls behind, blocks past their deadline are concealed and input beyond ``max_backlog_s`` is
   dropped, both counted (``LiveSession``'s policy), so the delay a listener hears stays bounded;
3. converted audio goes to the sender's appsrc (non-blocking, itself bounded), which encodes and
   sends on GStreamer's threads.

Blocks are aligned on Opus frames as ``LiveTransport`` describes; the end of an RTP stream (a BYE, a
sender going quiet) flushes the block in progress.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vcstream.audio.types import Audio
from vcstream.engines.base import Engine, VoiceProfile
from vcstream.engines.settings import SessionSettings
from vcstream.media.rtp import OPUS_RATE, OpusCodecSettings, RtpOpusReceiver, RtpOpusSender
from vcstream.streaming.scheduler import BlockScheduler
from vcstream.transports.live_transport import LiveTransport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelayTaps:
    """Observers of the audio at the relay's two boundaries (benchmarks and tests), called on the
    receiving streaming thread and on a scheduler worker respectively."""

    on_input: Callable[[Audio], None] | None = None
    on_output: Callable[[Audio], None] | None = None


class RtpRelay(LiveTransport):
    """Receives Opus/RTP on ``listen_port``, converts it with one engine session and sends Opus/RTP to
    ``destination`` (host, port). ``listen_port`` 0 takes a free port: read ``port``. Its blocks run
    on ``scheduler`` (the engine's, shared with other sessions; the caller closes it)."""

    def __init__(
        self,
        engine: Engine,
        voice: VoiceProfile,
        listen_port: int,
        destination: tuple[str, int],
        *,
        scheduler: BlockScheduler,
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
        self._taps = taps or RelayTaps()
        self._started_at = time.monotonic()
        super().__init__(
            engine,
            voice,
            settings,
            scheduler=scheduler,
            io_rate=OPUS_RATE,
            frame_samples=self.codec.frame_samples,
            name="relay",
            max_backlog_s=max_backlog_s,
        )
        host, port = destination
        try:
            # the listening ports first: the likeliest failure (port in use) leaves nothing behind
            self.receiver = RtpOpusReceiver(
                listen_port,
                self._ingest,
                on_stream_end=self.flush,
                fill_pauses=True,  # the engine keeps running through a pause: the end of a phrase goes out
                codec=self.codec,
                latency_ms=latency_ms,
                bind_address=bind_address,
                rtcp_port=rtcp_port,
                trace=trace,
                name="relay-in",
            )
        except BaseException:
            self.close_session()
            raise
        try:
            self.sender = RtpOpusSender(host, port, codec=self.codec, trace=trace, name="relay-out")
        except BaseException:
            self.receiver.stop()
            self.close_session()
            raise
        self._running = False

    @property
    def port(self) -> int:
        return self.receiver.port

    def start(self) -> RtpRelay:
        self.sender.start()
        try:
            self.receiver.start()
        except BaseException:
            self.sender.stop(drain_timeout_s=0)
            self.close_session()
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
        self.close_session()
        self.sender.stop()
        self._running = False

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
            "session": self.session.snapshot().to_json(),
            "output": self.sender.stats(),
        }

    # -- thread crossings ----------------------------------------------------------------------------
    def _ingest(self, samples: Audio) -> None:
        """Receiver streaming thread: hand over and return."""
        if self._taps.on_input is not None:
            self._taps.on_input(samples)
        self.feed(samples)

    def _deliver(self, samples: Audio) -> None:
        """Scheduler worker: the appsrc push does not block."""
        if self._taps.on_output is not None:
            self._taps.on_output(samples)
        self.sender.push(samples)
