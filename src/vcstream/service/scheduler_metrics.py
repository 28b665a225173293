"""The block schedulers' figures as Prometheus metrics, read from their snapshots at each scrape
(labelled by scheduler: engine and device, a handful of values at most)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from vcstream.streaming.scheduler import SchedulerStats

_COUNTERS = (
    ("batches", "vcstream_scheduler_batches", "Forward passes run (one batch each)"),
    ("blocks", "vcstream_scheduler_blocks", "Blocks run by the scheduler (converted or failed)"),
    ("skipped", "vcstream_scheduler_skipped_blocks", "Blocks skipped (concealed) for their deadline"),
    ("late", "vcstream_scheduler_late_blocks", "Blocks that finished after their deadline"),
    ("failed", "vcstream_scheduler_failed_blocks", "Blocks the engine failed on"),
    (
        "skipped_audio_s",
        "vcstream_scheduler_skipped_audio_seconds",
        "Audio concealed instead of converted: the delay listeners would have accumulated",
    ),
    ("busy_s", "vcstream_scheduler_busy_seconds", "Time the workers spent running batches"),
    ("audio_s", "vcstream_scheduler_audio_seconds", "Audio the batches covered (busy/audio = load)"),
)
_GAUGES = (
    ("queued", "vcstream_scheduler_queued_blocks", "Blocks waiting for a worker now"),
    ("overloaded", "vcstream_scheduler_overloaded", "1 while blocks were skipped in the last 10 s"),
    ("workers", "vcstream_scheduler_workers", "Inference workers"),
)


class SchedulerCollector(Collector):
    def __init__(self, snapshots: Callable[[], Sequence[SchedulerStats]]) -> None:
        self._snapshots = snapshots

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = list(self._snapshots())
        for field, name, doc in _COUNTERS:
            counter = CounterMetricFamily(name, doc, labels=["scheduler"])
            for s in stats:
                counter.add_metric([s.name], float(getattr(s, field)))
            yield counter
        for field, name, doc in _GAUGES:
            gauge = GaugeMetricFamily(name, doc, labels=["scheduler"])
            for s in stats:
                gauge.add_metric([s.name], float(getattr(s, field)))
            yield gauge
