"""Every Prometheus metric of the server, behind helpers named after what happened.

``ServiceMetrics`` owns its own ``CollectorRegistry`` (never the process-global one), so several
applications in one process (tests) do not collide. The helpers are thread-safe: they may be called
from the event loop, session worker threads or GStreamer streaming threads.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from vcstream.service.capacity_metrics import CapacityCollector, CapacitySources
from vcstream.service.scheduler_metrics import SchedulerCollector
from vcstream.streaming.scheduler import SchedulerStats

#: seconds per block of inference: blocks are 20-300 ms, real time means below the block length
INFERENCE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)
#: mouth-to-ear estimate: ~100 ms is conversational, above ~500 ms hard to talk over
LATENCY_BUCKETS_S = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
#: share of packets lost or of audio concealed over a stats interval (0..1)
LOSS_BUCKETS = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
#: CAM++ speaker similarity of a call's converted speech to its voice (cosine clipped to 0..1): the
#: same speaker typically scores 0.8-0.95, different speakers 0.4-0.55
SIMILARITY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: failure reasons are label values: keep them a short fixed vocabulary (bounded cardinality)
_REASON = re.compile(r"[^a-z0-9_]+")


class ServiceMetrics:
    """Counters, gauges and histograms of the voice conversion service (``render`` for /metrics)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._active = Gauge("vcstream_active_sessions", "Conversion sessions running now", registry=r)
        self._started = Counter("vcstream_sessions_started", "Conversion sessions started", registry=r)
        self._waiting = Gauge(
            "vcstream_waiting_connections",
            "Signalling connections queued for a place on this full server (hello with wait)",
            registry=r,
        )
        self._ended = Counter("vcstream_sessions_ended", "Conversion sessions that ended", registry=r)
        self._failed = Counter(
            "vcstream_sessions_failed",
            "Sessions that failed or were refused, by reason",
            ["reason"],
            registry=r,
        )
        self._inference = Histogram(
            "vcstream_block_inference_seconds",
            "Engine inference time per block",
            buckets=INFERENCE_BUCKETS_S,
            registry=r,
        )
        self._late = Counter(
            "vcstream_blocks_late", "Blocks whose output came after their deadline", registry=r
        )
        self._dropped = Counter(
            "vcstream_blocks_dropped", "Blocks of input dropped because inference fell behind", registry=r
        )
        self._latency = Histogram(
            "vcstream_end_to_end_latency_seconds",
            "Estimated mouth-to-ear latency of a session (buffering, algorithmic delay, inference)",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self._packet_loss = Histogram(
            "vcstream_call_packet_loss_ratio",
            "Share of a call's packets lost per stats interval: direction=received (the caller's, "
            "counted by the server) or sent (the server's, from the caller's receiver reports)",
            ["direction"],
            buckets=LOSS_BUCKETS,
            registry=r,
        )
        self._concealed = Histogram(
            "vcstream_call_concealed_ratio",
            "Share of a call's received audio the server's decoder made up for lost packets per stats "
            "interval (Opus FEC or concealment)",
            buckets=LOSS_BUCKETS,
            registry=r,
        )
        self._similarity = Histogram(
            "vcstream_call_voice_similarity",
            "Live estimates of calls' speaker similarity to their voice (CAM++ cosine, 0..1), by engine",
            ["engine"],
            buckets=SIMILARITY_BUCKETS,
            registry=r,
        )
        self._bytes_in = Counter("vcstream_received_bytes", "Media bytes received from clients", registry=r)
        self._bytes_out = Counter("vcstream_sent_bytes", "Media bytes sent to clients", registry=r)
        self._red_recovered = Counter(
            "vcstream_red_recovered_packets",
            "Lost packets from callers rebuilt from the RED copies later packets carried",
            registry=r,
        )
        self._engine = Gauge(
            "vcstream_engine_info",
            "The loaded engine (value 1); cpu_fallback=1 when the CPU engine stands in for Seed-VC",
            ["engine", "device", "cpu_fallback"],
            registry=r,
        )
        # by plan, never by tenant: a label per tenant would grow without bound
        self._metered = Counter(
            "vcstream_converted_seconds",
            "Converted call audio metered, by the tenant's plan ('open' on a server without tenants)",
            ["plan"],
            registry=r,
        )
        self._plan_refusals = Counter(
            "vcstream_plan_refusals",
            "Calls a plan refused or ended: call_limit (concurrent calls), minutes_used_up",
            ["plan", "reason"],
            registry=r,
        )
        self._lock = threading.Lock()
        self._active_count = 0

    # -- sessions ---------------------------------------------------------------------------------

    def session_started(self) -> None:
        with self._lock:
            self._active_count += 1
            self._active.set(self._active_count)
        self._started.inc()

    def session_ended(self) -> None:
        """A started session is over (normally or after a failure: call this once per started one)."""
        with self._lock:
            # never below zero: an unmatched call must not hide real sessions from the next count
            self._active_count = max(0, self._active_count - 1)
            self._active.set(self._active_count)
        self._ended.inc()

    def session_failed(self, reason: str) -> None:
        """A session failed or was refused; ``reason`` is a short fixed word such as ``ice``,
        ``engine``, ``full``, ``draining``, ``not_ready``, ``voice`` (normalised to [a-z0-9_])."""
        label = _REASON.sub("_", reason.strip().lower())[:40] or "unknown"
        self._failed.labels(reason=label).inc()

    def waiting(self, count: int) -> None:
        """How many connections wait in the queue for a place now."""
        self._waiting.set(count)

    @property
    def active_sessions(self) -> int:
        with self._lock:
            return self._active_count

    # -- blocks -----------------------------------------------------------------------------------

    def observe_inference(self, seconds: float) -> None:
        self._inference.observe(seconds)

    def blocks_late(self, n: int = 1) -> None:
        if n > 0:
            self._late.inc(n)

    def blocks_dropped(self, n: int = 1) -> None:
        if n > 0:
            self._dropped.inc(n)

    def observe_latency(self, seconds: float) -> None:
        """One end-to-end latency estimate of a session, in seconds."""
        self._latency.observe(seconds)

    def observe_voice_similarity(self, engine: str, similarity: float) -> None:
        """One live estimate of a call's similarity to its voice; ``engine`` is a loaded engine's
        name (a handful: bounded label values)."""
        self._similarity.labels(engine=engine).observe(similarity)

    # -- media ------------------------------------------------------------------------------------

    def observe_call_loss(
        self, received_pct: float | None, sent_pct: float | None, concealed_pct: float | None
    ) -> None:
        """One stats interval of a call's loss, in percent (None: not known for this interval)."""
        for direction, pct in (("received", received_pct), ("sent", sent_pct)):
            if pct is not None:
                self._packet_loss.labels(direction=direction).observe(pct / 100)
        if concealed_pct is not None:
            self._concealed.observe(concealed_pct / 100)

    def metered(self, plan: str, seconds: float) -> None:
        if seconds > 0:
            self._metered.labels(plan=plan).inc(seconds)

    def plan_refused(self, plan: str, reason: str) -> None:
        self._plan_refusals.labels(plan=plan, reason=reason).inc()

    def bytes_in(self, n: int) -> None:
        if n > 0:
            self._bytes_in.inc(n)

    def bytes_out(self, n: int) -> None:
        if n > 0:
            self._bytes_out.inc(n)

    def red_recovered(self, n: int) -> None:
        if n > 0:
            self._red_recovered.inc(n)

    # -- process ----------------------------------------------------------------------------------

    def engine_loaded(self, engine: str, device: str, cpu_fallback: bool) -> None:
        self._engine.clear()
        self._engine.labels(engine=engine, device=device, cpu_fallback=str(int(cpu_fallback))).set(1)

    def watch_schedulers(self, snapshots: Callable[[], Sequence[SchedulerStats]]) -> None:
        """Export the block schedulers' figures (read at each scrape)."""
        self.registry.register(SchedulerCollector(snapshots))

    def watch_capacity(self, sources: CapacitySources) -> None:
        """Export capacity, readiness, drain and TURN figures (read at each scrape)."""
        self.registry.register(CapacityCollector(sources))

    def render(self) -> bytes:
        """The exposition text for /metrics (send with ``content_type``)."""
        return generate_latest(self.registry)
