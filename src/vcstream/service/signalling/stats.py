"""The ``stats`` message of one call, and the service metrics it feeds as it goes.

The live session's and the peer's counters are cumulative; the metrics take increments, so what
has been passed on already is remembered per connection (and starts over when new settings re-open
the live session, whose counters start at 0).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from vcstream.media.webrtc import PeerStats, Retransmissions
from vcstream.quality.live import Estimate
from vcstream.service.metrics import ServiceMetrics
from vcstream.streaming.live import LiveSession, LiveStats
from vcstream.transports.webrtc_call import Call

#: the Opus frame the server sends (ms): part of the latency estimate
OPUS_FRAME_MS = 20


@dataclass
class _Reported:
    """What has been passed to the metrics already (counters are cumulative)."""

    live: LiveSession | None = None
    late: int = 0
    dropped_blocks: int = 0
    bytes_in: float = 0.0
    bytes_out: float = 0.0
    packets_lost: float = 0.0
    packets_received: float = 0.0
    concealed_ms: float = 0.0
    decoded_ms: float = 0.0
    red_recovered: float = 0.0
    at: float = field(default_factory=time.monotonic)


def _grown(now: float | None, before: float) -> tuple[float, float]:
    """(growth since ``before``, the value to remember): a counter that went back started over."""
    if now is None:
        return 0.0, before
    return (now - before if now >= before else now), now


def _retransmissions(counts: Retransmissions | None) -> dict[str, int] | None:
    return None if counts is None else dataclasses.asdict(counts)


def _percent(part: float, whole: float) -> float | None:
    return None if whole <= 0 else round(100 * min(1.0, max(0.0, part / whole)), 2)


@dataclass(frozen=True)
class LossFigures:
    """Loss both ways over the last interval, and how the server protects against it."""

    #: the caller's packets lost on the way to the server (RTP sequence gaps)
    received_loss_pct: float | None
    #: the server's packets lost on the way to the caller (the caller's receiver report)
    sent_loss_pct: float | None
    #: the server's encoder sends Opus in-band FEC
    fec: bool
    #: the loss the encoder protects against now (packet-loss-percentage)
    fec_expected_loss_pct: int | None
    #: received audio the server's decoder made up for lost packets (FEC or concealment)
    concealed_pct: float | None


def _received_totals(peer: PeerStats) -> dict[str, Any]:
    """The audio the server received since the call began: the loss figures above cover only the
    last interval, which says nothing of a whole call (e.g. whether the caller sends RED at all, and
    how many lost packets its copies rebuilt)."""
    return {
        "packets": peer.packets_received,
        "packets_lost": None if peer.packets_lost is None else max(0.0, peer.packets_lost),
        "red_packets": peer.red_packets,
        "red_recovered": peer.red_recovered,
        "concealed_ms": _rounded(peer.concealed_ms),
        "decoded_ms": _rounded(peer.decoded_ms),
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 2)


def _similarity(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


class CallStatistics:
    """Turns samples of one connection's call into ``stats`` messages and metrics increments."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics
        self._reported = _Reported()
        #: engine failures seen so far (each new one is reported to the client once)
        self.engine_errors = 0

    def _loss(self, peer: PeerStats) -> LossFigures:
        reported = self._reported
        lost, reported.packets_lost = _grown(peer.packets_lost, reported.packets_lost)
        received, reported.packets_received = _grown(peer.packets_received, reported.packets_received)
        concealed, reported.concealed_ms = _grown(peer.concealed_ms, reported.concealed_ms)
        decoded, reported.decoded_ms = _grown(peer.decoded_ms, reported.decoded_ms)
        rebuilt, reported.red_recovered = _grown(peer.red_recovered, reported.red_recovered)
        self.metrics.red_recovered(int(rebuilt))
        lost = max(0.0, lost)  # a duplicate (a retransmission) counts as -1 lost
        protection = peer.protection
        sent = peer.remote_fraction_lost
        figures = LossFigures(
            received_loss_pct=_percent(lost, lost + received),
            sent_loss_pct=None if sent is None else round(100 * min(1.0, max(0.0, sent)), 2),
            fec=bool(protection and protection.inband_fec),
            fec_expected_loss_pct=protection.packet_loss_pct if protection else None,
            concealed_pct=_percent(concealed, decoded),
        )
        self.metrics.observe_call_loss(
            figures.received_loss_pct, figures.sent_loss_pct, figures.concealed_pct
        )
        return figures

    def message(
        self,
        call: Call,
        live: LiveSession,
        stats: LiveStats,
        peer: PeerStats,
        webrtc_latency_ms: int,
        quality: Estimate | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """The ``stats`` message's fields, and whether the engine failed since the last one.
        ``webrtc_latency_ms``: the server's jitter buffer (``PeerConfig.latency_ms``); ``quality``:
        the call's latest live quality estimate (None: estimation is off)."""
        reported, metrics, now = self._reported, self.metrics, time.monotonic()
        if reported.live is not live:  # settings re-opened the session: its counters start at 0
            reported.live, reported.late, reported.dropped_blocks = live, 0, 0
        block = max(1, round(stats.block_ms * call.io_rate / 1000))
        dropped_blocks = stats.dropped_samples // block
        metrics.blocks_late(stats.late_blocks - reported.late)
        metrics.blocks_dropped(dropped_blocks - reported.dropped_blocks)
        reported.late, reported.dropped_blocks = stats.late_blocks, dropped_blocks
        elapsed = max(1e-3, now - reported.at)
        bytes_in = reported.bytes_in if peer.bytes_received is None else peer.bytes_received
        bytes_out = reported.bytes_out if peer.bytes_sent is None else peer.bytes_sent
        rate_in = 8 * max(0.0, bytes_in - reported.bytes_in) / elapsed / 1000
        rate_out = 8 * max(0.0, bytes_out - reported.bytes_out) / elapsed / 1000
        metrics.bytes_in(int(bytes_in - reported.bytes_in))
        metrics.bytes_out(int(bytes_out - reported.bytes_out))
        reported.bytes_in, reported.bytes_out, reported.at = bytes_in, bytes_out, now
        inference = stats.inference_ms_p50 or 0.0
        rtt = peer.rtt_ms
        latency = (
            stats.algorithmic_latency_ms
            + inference
            + stats.backlog_ms
            + webrtc_latency_ms
            + OPUS_FRAME_MS
            + (rtt or 0.0)
        )
        if stats.blocks:
            metrics.observe_latency(latency / 1000)
        loss = self._loss(peer)
        engine_failed = stats.errors > self.engine_errors
        if engine_failed:
            self.engine_errors = stats.errors
        r = _rounded
        estimate = quality or Estimate()
        return {
            "latency_ms": r(latency),
            "algorithmic_ms": r(stats.algorithmic_latency_ms),
            "inference_ms": r(stats.inference_ms_p50),
            "inference_ms_p95": r(stats.inference_ms_p95),
            "block_ms": r(stats.block_ms),
            "backlog_ms": r(stats.backlog_ms),
            "blocks": stats.blocks,
            "output_ms": r(1000 * stats.samples_out / call.io_rate),
            "late_blocks": stats.late_blocks,
            "skipped_blocks": stats.skipped_blocks,
            "dropped_ms": r(stats.dropped_ms),
            "drop_events": stats.drop_events,
            "engine_errors": stats.errors,
            "rtt_ms": r(rtt),
            "jitter_ms": r(peer.jitter_ms),
            "remote_jitter_ms": r(peer.remote_jitter_ms),
            "remote_packets_lost": peer.remote_packets_lost,
            # NACK/RTX counters since the call began (null when the caller offered no NACK)
            "retransmissions": None
            if peer.retransmissions is None
            else dataclasses.asdict(peer.retransmissions),
            **dataclasses.asdict(loss),
            "received_totals": _received_totals(peer),
            "bitrate_in_kbps": r(rate_in),
            "bitrate_out_kbps": r(rate_out),
            "webrtc_latency_ms": webrtc_latency_ms,
            # CAM++ cosine (0..1) of the converted speech to the voice and to the caller; null before
            # the first estimate (a few seconds of speech) or with estimation off
            "voice_similarity": _similarity(estimate.voice_similarity),
            "own_voice_similarity": _similarity(estimate.own_voice_similarity),
            # dict() copies atomically; streaming threads may add to it meanwhile
            "timeline": {k: round(v, 1) for k, v in dict(call.timeline).items()},
        }, engine_failed
