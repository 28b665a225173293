"""The receiver's gate on the RTP socket: only RTP v2 of the expected payload type goes on, and a
sender that comes back with a known SSRC gets a fresh session."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from vcstream.media.gst import Gst
from vcstream.media.rtp.codec import RTP_HEADER_BYTES
from vcstream.media.rtp.trace import PacketTrace

#: SSRCs whose latest sequence number the RTP gate remembers
_TRACKED_SSRCS = 16
#: a pause in a sender's packets after which a sequence number that does not continue the old
#: sequence means the sender restarted (DTX pauses run up to 400 ms but keep the numbering)
RESTART_PAUSE_S = 0.2


class _RtpGate:
    """Pad probe on the RTP socket's output: counts datagrams and drops those that are not RTP v2
    with the expected payload type. Holds no GStreamer objects (no reference cycles through probes).

    A sender that comes back with the same SSRC (a restart with a fixed SSRC) gets a fresh session:
    its packets are held back and ``on_returning`` is asked to reset. After a BYE rtpbin would
    ignore the SSRC; without one (the sender was killed) the jitter buffer would take the new
    sequence numbers for a huge loss and conceal across it, a stray tone between the two streams.
    The second case is told by a pause in arrivals followed by a sequence number that does not
    continue the old sequence."""

    def __init__(
        self, payload_type: int, trace: PacketTrace | None, on_returning: Callable[[], None]
    ) -> None:
        self.payload_type = payload_type
        self.trace = trace
        self.on_returning = on_returning
        self.datagrams = 0
        self.bytes = 0
        self.invalid = 0
        self.wrong_payload_type = 0
        self.held_back = 0
        self.last_packet_at: float | None = None
        #: SSRCs that sent an RTCP BYE since the last reset
        #: SSRC -> when it said BYE (monotonic), since the last reset
        self.said_bye: dict[int, float] = {}
        #: latest sequence number and its arrival per SSRC (bounded by ``_TRACKED_SSRCS``)
        self.last_seq: dict[int, tuple[int, float]] = {}
        self.reset_pending = False
        self.restarts_without_bye = 0

    def __call__(self, _pad: Any, info: Any) -> Any:
        buffer = info.get_buffer()
        size = buffer.get_size()
        head = buffer.extract_dup(0, RTP_HEADER_BYTES) if size >= RTP_HEADER_BYTES else b""
        return Gst.PadProbeReturn.OK if self.admit(size, head, time.monotonic()) else Gst.PadProbeReturn.DROP

    def admit(self, size: int, head: bytes, now: float) -> bool:
        """Whether a datagram of ``size`` bytes arriving at ``now`` (monotonic seconds) goes on to
        rtpbin; ``head`` is its first ``RTP_HEADER_BYTES`` (empty when it is shorter)."""
        self.datagrams += 1
        self.bytes += size
        if size < RTP_HEADER_BYTES:
            self.invalid += 1
            return False
        if head[0] >> 6 != 2:
            self.invalid += 1
            return False
        if head[1] & 0x7F != self.payload_type:
            self.wrong_payload_type += 1
            return False
        ssrc, seq = int.from_bytes(head[8:12], "big"), int.from_bytes(head[2:4], "big")
        said_bye = self.said_bye.get(ssrc)
        returning = said_bye is not None and not self._straggler(ssrc, seq, now - said_bye)
        if returning or self.reset_pending or self._restarted(ssrc, seq, now):
            self.held_back += 1
            if not self.reset_pending:
                self.reset_pending = True
                self.restarts_without_bye += not returning
                self.on_returning()
            return False
        if ssrc not in self.last_seq and len(self.last_seq) >= _TRACKED_SSRCS:
            self.last_seq.pop(next(iter(self.last_seq)))
        self.last_seq[ssrc] = (seq, now)
        self.last_packet_at = now
        if self.trace is not None:
            self.trace.record(seq, now)
        return True

    def forget(self) -> None:
        """The session was reset: every SSRC is new again."""
        self.said_bye.clear()
        self.last_seq.clear()
        self.reset_pending = False

    def _straggler(self, ssrc: int, seq: int, since_bye_s: float) -> bool:
        """A packet sent before the BYE that arrived after it (RTCP took another path), not a
        restarted sender: it continues the sequence, shortly after the BYE."""
        last = self.last_seq.get(ssrc)
        return last is not None and 0 < (seq - last[0]) % 65536 < 64 and since_bye_s < 1.0

    def _restarted(self, ssrc: int, seq: int, now: float) -> bool:
        """After a pause, a sequence number that no run of lost packets (at most 100 a second,
        10 ms frames) or DTX (which keeps numbering) could explain: a new sender with the old SSRC."""
        last = self.last_seq.get(ssrc)
        if last is None or now - last[1] < RESTART_PAUSE_S:
            return False
        step = (seq - last[0]) % 65536
        return not 0 < step <= 64 + 100 * (now - last[1])
