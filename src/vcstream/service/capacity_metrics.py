"""Capacity, readiness and drain as Prometheus gauges, computed at each scrape from what admission
and readiness already know (no second count to keep in step).

What a balancer or an autoscaler needs: places per engine slot and how many are taken, the used
ratio over all slots (the HPA's per-pod metric), whether /readyz would answer 200, whether the
replica is draining, and how many calls go through TURN."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CapacityCollector", "CapacitySources"]


@dataclass(frozen=True)
class CapacitySources:
    """Where the figures come from (each read at scrape time)."""

    #: (role, places, places taken) per engine slot
    usage: Callable[[], Sequence[tuple[str, int, int]]]
    ready: Callable[[], bool]
    draining: Callable[[], bool]
    relayed_sessions: Callable[[], int]


class CapacityCollector(Collector):
    def __init__(self, sources: CapacitySources) -> None:
        self._sources = sources

    def collect(self) -> Iterator[GaugeMetricFamily]:
        sources = self._sources
        usage = list(sources.usage())
        places = GaugeMetricFamily(
            "vcstream_session_places", "Session places of each engine slot (capacity)", labels=["role"]
        )
        in_use = GaugeMetricFamily("vcstream_sessions_in_use", "Session places taken now", labels=["role"])
        for role, total, taken in usage:
            places.add_metric([role], float(total))
            in_use.add_metric([role], float(taken))
        yield places
        yield in_use
        total_places = sum(total for _, total, _ in usage)
        # no place at all (not measured yet, or nothing fits) counts as full: no new call goes there
        ratio = min(1.0, sum(taken for _, _, taken in usage) / total_places) if total_places else 1.0
        yield GaugeMetricFamily(
            "vcstream_capacity_used_ratio", "Session places taken over all places (0..1)", value=ratio
        )
        yield GaugeMetricFamily(
            "vcstream_ready",
            "1 when /readyz answers 200 (warm, not draining, a place free)",
            value=float(sources.ready()),
        )
        yield GaugeMetricFamily(
            "vcstream_draining",
            "1 while the replica drains (SIGTERM received)",
            value=float(sources.draining()),
        )
        yield GaugeMetricFamily(
            "vcstream_relayed_sessions",
            "Calls whose selected ICE candidate pair goes through a TURN relay",
            value=float(sources.relayed_sessions()),
        )
