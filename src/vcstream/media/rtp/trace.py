"""Packet times by sequence number at points of a pipeline: ``PacketTrace`` and the pad probe that
records packets leaving the receiver's jitter buffer."""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

from vcstream.media.gst import Gst
from vcstream.media.rtp.codec import RTP_HEADER_BYTES

#: how many packet times ``PacketTrace`` keeps (about 3 minutes at 50 packets/s)
TRACE_PACKETS = 10000


class PacketTrace:
    """Monotonic times of RTP packets by sequence number at one point of a pipeline (bounded)."""

    def __init__(self, size: int = TRACE_PACKETS) -> None:
        self._times: collections.OrderedDict[int, float] = collections.OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def record(self, seq: int, when: float) -> None:
        with self._lock:
            if seq in self._times:  # a duplicate or a wrapped sequence number: keep the newest
                del self._times[seq]
            self._times[seq] = when
            while len(self._times) > self._size:
                self._times.popitem(last=False)

    def times(self) -> dict[int, float]:
        with self._lock:
            return dict(self._times)


def _rtp_seq(buffer: Any) -> int | None:
    if buffer.get_size() < RTP_HEADER_BYTES:
        return None
    head = buffer.extract_dup(2, 2)
    return int.from_bytes(head, "big")


class _Departures:
    def __init__(self, trace: PacketTrace) -> None:
        self.trace = trace

    def __call__(self, _pad: Any, info: Any) -> Any:
        seq = _rtp_seq(info.get_buffer())
        if seq is not None:
            self.trace.record(seq, time.monotonic())
        return Gst.PadProbeReturn.OK
