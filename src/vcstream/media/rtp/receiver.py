"""``RtpOpusReceiver``: Opus over RTP in, float32 48 kHz mono audio out to a callback on the
streaming thread, one depayloader/decoder branch per SSRC, the newest delivered.

The GStreamer side of each stream's timeline is here (``_TimelineProbe``); its decisions are in
``timeline``."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gi.repository import GObject

from vcstream.audio.types import Audio
from vcstream.errors import ConfigurationError
from vcstream.media.appio import AudioSink
from vcstream.media.gst import Gst, link_many, make_element, require_elements, seconds_to_ns
from vcstream.media.mainloop import GLibTimer
from vcstream.media.rtp.codec import OPUS_RATE, RTP_HEADER_BYTES, OpusCodecSettings, rtp_payload
from vcstream.media.rtp.gate import _RtpGate
from vcstream.media.rtp.pipeline import _link_pads, _LivePipeline
from vcstream.media.rtp.rtcp import _add_rtcp_io, _RtcpPeer, _session, _source_stats
from vcstream.media.rtp.sockets import _bind_rtp_pair, _local_port
from vcstream.media.rtp.timeline import PAUSE_GRACE_MS, PAUSE_TICK_MS, ReceiverState, StreamTimeline
from vcstream.media.rtp.trace import PacketTrace, _Departures

log = logging.getLogger(__name__)

#: marks a loss event this receiver re-sent with a corrected duration
_ACCOUNTED = "vcstream-accounted"
#: after a BYE, how much longer than the jitter buffer's latency the last packets may take
BYE_GRACE_MS = 100
#: how often a receiver keeps its copy of the session's per-sender statistics current
STATS_REFRESH_MS = 500


@dataclass
class _Branch:
    ssrc: int
    pad: Any
    elements: list[Any]
    jitterbuffer: Any | None
    created_at: float
    timeline: StreamTimeline


class _TimelineProbe:
    """Pad probe on the depayloader's sink pad (the same streaming thread as the decoding): each
    packet and lost-packet event goes to the stream's timeline, and a loss event is passed on, dropped
    or re-sent with the concealment the timeline settled on."""

    def __init__(self, timeline: StreamTimeline) -> None:
        self.timeline = timeline

    def __call__(self, pad: Any, info: Any) -> Any:
        if info.type & Gst.PadProbeType.BUFFER:
            buffer = info.get_buffer()
            size = buffer.get_size()
            if size > RTP_HEADER_BYTES:
                packet = buffer.extract_dup(0, size)
                self.timeline.account_packet(int.from_bytes(packet[4:8], "big"), rtp_payload(packet))
            return Gst.PadProbeReturn.OK
        event = info.get_event()
        structure = event.get_structure() if event is not None else None
        if structure is None or structure.get_name() != "GstRTPPacketLost":
            return Gst.PadProbeReturn.OK
        if structure.has_field(_ACCOUNTED):  # our own corrected copy, on its way through
            return Gst.PadProbeReturn.OK
        found, duration = structure.get_uint64("duration")
        if not found:
            return Gst.PadProbeReturn.OK
        conceal_ns = self.timeline.account_loss(int(duration))
        if conceal_ns is None:
            return Gst.PadProbeReturn.OK
        if conceal_ns == 0:
            return Gst.PadProbeReturn.DROP
        if conceal_ns == duration:
            return Gst.PadProbeReturn.OK
        fixed = structure.copy()
        fixed.set_value("duration", GObject.Value(GObject.TYPE_UINT64, conceal_ns))
        fixed.set_value(_ACCOUNTED, True)
        pad.send_event(Gst.Event.new_custom(event.type, fixed))  # comes back through here
        return Gst.PadProbeReturn.DROP


_JITTERBUFFER_COUNTERS = ("num-pushed", "num-lost", "num-late", "num-duplicates")


class RtpOpusReceiver(_LivePipeline):
    """udpsrc (RTP, RTCP) -> rtpbin (jitter buffer of ``latency_ms``) -> per SSRC: rtpopusdepay -> opusdec
    (PLC, in-band FEC) -> audioconvert -> audioresample -> appsink; decoded float32 mono at 48 kHz goes
    to ``on_audio`` on the jitter buffer's streaming thread (keep it quick: hand work to a queue).

    ``port`` 0 takes any free port (with RTCP on the next one); read ``port`` after construction.
    ``fec_decode`` (default: ``codec.fec``) recovers a lost packet from the next one's in-band FEC;
    opusdec then decodes every packet one frame late. ``on_stream_end`` is called (on the GLib or a
    GStreamer thread) when the delivered stream ends: the jitter buffer's latency after its BYE, or
    when it timed out. Pauses of the sender (DTX) are filled with silence when it resumes; with
    ``fill_pauses`` also in real time while it pauses, for live consumers (up to 2 s per pause).
    """

    def __init__(
        self,
        port: int,
        on_audio: Callable[[Audio], None],
        *,
        codec: OpusCodecSettings | None = None,
        latency_ms: int = 60,
        fec_decode: bool | None = None,
        on_stream_end: Callable[[], None] | None = None,
        fill_pauses: bool = False,
        bind_address: str = "0.0.0.0",
        rtcp_port: int | None = None,
        rtcp_interval_s: float = 1.0,
        trace: bool = False,
        name: str = "rtp-in",
    ) -> None:
        super().__init__(name)
        require_elements("udpsrc", "rtpbin", "rtpopusdepay", "opusdec", "appsink", "multiudpsink")
        if latency_ms < 0:
            raise ConfigurationError(f"jitter buffer latency must be >= 0 ms, got {latency_ms}")
        self.codec = codec or OpusCodecSettings()
        self.latency_ms = latency_ms
        self.fec_decode = self.codec.fec if fec_decode is None else fec_decode
        self.fill_pauses = fill_pauses
        self._rtp_socket, self._rtcp_socket = _bind_rtp_pair(bind_address, port, rtcp_port)
        self.bind_address = bind_address
        self.port = _local_port(self._rtp_socket)
        self.rtcp_port = None if self._rtcp_socket is None else _local_port(self._rtcp_socket)
        self.arrivals: PacketTrace | None = PacketTrace() if trace else None
        #: when packets left the jitter buffer, by sequence number (with ``trace``)
        self.departures: PacketTrace | None = PacketTrace() if trace else None
        self._state = ReceiverState(on_audio, on_stream_end)
        self._gate = _RtpGate(self.codec.payload_type, self.arrivals, _weak_call(self._request_reset))
        self._branches: dict[str, _Branch] = {}
        #: elements of branches whose pad rtpbin removed, to be stopped on the GLib thread
        self._removed: list[Any] = []
        self._jitterbuffers: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._retired = dict.fromkeys(_JITTERBUFFER_COUNTERS, 0)
        self.streams_started = 0
        self.ssrc_changes = 0
        self.byes = 0
        self.resets = 0
        self._last_source: dict[str, Any] = {}
        self._timers: list[GLibTimer] = []

        self.rtpbin = make_element(
            "rtpbin", name=f"{name}-rtpbin", latency=latency_ms, do_lost=True, autoremove=True
        )
        rtp_src = make_element(
            "udpsrc", socket=self._rtp_socket, close_socket=False, caps=self.codec.rtp_caps()
        )
        for element in (self.rtpbin, rtp_src):
            self.pipeline.add(element)
        _link_pads(rtp_src.get_static_pad("src"), self.rtpbin.request_pad_simple("recv_rtp_sink_0"))
        rtp_src.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, self._gate)

        self._rtcp_peer: _RtcpPeer | None = None
        if self._rtcp_socket is not None:
            # no clients on the sink until a sender's report tells us where to answer
            rtcp_src, rtcp_sink = _add_rtcp_io(self.pipeline, self.rtpbin, self._rtcp_socket)
            self._rtcp_peer = _RtcpPeer(rtcp_sink)
            rtcp_src.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, self._rtcp_peer)
        _session(self.rtpbin).set_property("rtcp-min-interval", seconds_to_ns(rtcp_interval_s))
        # a known SSRC from a new address is a restarted sender (same fixed SSRC, new port), not a
        # loop to be dropped
        self.rtpbin.emit("get-internal-session", 0).set_property("favor-new", True)

        self._handlers = [
            self.rtpbin.connect("request-pt-map", self._on_request_pt_map),
            self.rtpbin.connect("new-jitterbuffer", self._on_new_jitterbuffer),
            self.rtpbin.connect("pad-added", self._on_pad_added),
            self.rtpbin.connect("pad-removed", self._on_pad_removed),
            self.rtpbin.connect("on-bye-ssrc", self._on_bye),
        ]

    def start(self) -> RtpOpusReceiver:
        self._start_pipeline()
        self._timers.append(self.loop.timer(STATS_REFRESH_MS, _weak_timer(self._refresh)))
        if self.fill_pauses:
            self._timers.append(self.loop.timer(PAUSE_TICK_MS, _weak_timer(self._fill_pauses)))
        return self

    def stop(self) -> None:
        """Stop receiving and release the ports (idempotent)."""
        for timer in self._timers:
            timer.cancel()
        self._timers = []
        self._stop_pipeline()
        self.loop.call(self._remove_all_branches)
        # the callbacks may reference the owner of this receiver: break the cycle through GObject
        self._state.on_audio = _discard
        self._state.on_stream_end = None
        for handler in self._handlers:
            self.rtpbin.disconnect(handler)
        self._handlers = []
        for sock in (self._rtp_socket, self._rtcp_socket):
            if sock is not None and not sock.is_closed():
                sock.close()

    @property
    def active_ssrc(self) -> int | None:
        return self._state.active_ssrc

    @property
    def last_packet_at(self) -> float | None:
        """Monotonic time of the latest valid RTP packet, None before the first."""
        return self._gate.last_packet_at

    @property
    def last_audio_at(self) -> float | None:
        """Monotonic time audio was last delivered, None before the first."""
        return self._state.last_audio_at

    # -- rtpbin signals (streaming threads, except where noted) ---------------------------------------
    def _on_request_pt_map(self, _bin: Any, _session_id: int, pt: int) -> Any:
        # only the configured payload type has caps; the gate already dropped the others
        return self.codec.rtp_caps() if pt == self.codec.payload_type else None

    def _on_new_jitterbuffer(self, _bin: Any, jitterbuffer: Any, _session_id: int, ssrc: int) -> None:
        with self._lock:
            self._jitterbuffers[ssrc] = jitterbuffer

    def _on_bye(self, _bin: Any, _session_id: int, ssrc: int) -> None:
        self.byes += 1
        self._gate.said_bye[ssrc] = time.monotonic()
        # packets sent before the BYE may still wait in the jitter buffer: end the stream once
        # they are through (rtpbin itself only lets the source go when it times out, seconds later)
        delay_ms = self.latency_ms + BYE_GRACE_MS
        self.loop.timer(delay_ms, _weak_call_once(self._end_stream, ssrc))

    def _end_stream(self, ssrc: int) -> None:
        with self._lock:
            timelines = [b.timeline for b in self._branches.values() if b.ssrc == ssrc]
        for timeline in timelines:
            timeline.end()

    def _request_reset(self) -> None:
        self.loop.call_soon(self._reset)

    def _reset(self) -> None:
        """Forget every source: a fresh session (GLib thread)."""
        if self.running:
            self.resets += 1
            log.info("%s: a sender came back with a known SSRC: resetting", self.name)
            with self._lock:
                timelines = [branch.timeline for branch in self._branches.values()]
            for timeline in timelines:
                timeline.end()  # after a BYE already done; a killed sender's stream ends here
            self.pipeline.set_state(Gst.State.NULL)
            self._remove_all_branches()
            self.pipeline.set_state(Gst.State.PLAYING)
        self._gate.forget()

    def _on_pad_added(self, _bin: Any, pad: Any) -> None:
        name = pad.get_name()
        if pad.get_direction() != Gst.PadDirection.SRC or not name.startswith("recv_rtp_src_"):
            return
        ssrc = int(name.split("_")[4])
        timeline = StreamTimeline(ssrc, self._state, decoder_holds_one=self.fec_decode)
        sink = AudioSink(OPUS_RATE, 1, on_audio=timeline.decoded)
        elements = [
            make_element("rtpopusdepay"),
            # max-errors -1: a corrupt packet costs its frame, never the stream
            make_element("opusdec", plc=True, use_inband_fec=self.fec_decode, max_errors=-1),
            make_element("audioconvert"),
            make_element("audioresample"),
            sink.element,
        ]
        with self._lock:
            for element in elements:
                self.pipeline.add(element)
            link_many(*elements)
            for element in elements:
                element.sync_state_with_parent()
            elements[0].get_static_pad("sink").add_probe(
                Gst.PadProbeType.BUFFER | Gst.PadProbeType.EVENT_DOWNSTREAM, _TimelineProbe(timeline)
            )
            _link_pads(pad, elements[0].get_static_pad("sink"))
            if self.departures is not None:
                pad.add_probe(Gst.PadProbeType.BUFFER, _Departures(self.departures))
            self._branches[name] = _Branch(
                ssrc, pad, elements, self._jitterbuffers.get(ssrc), time.monotonic(), timeline
            )
            self.streams_started += 1
            previous = self._state.active_ssrc
            if previous is not None and previous != ssrc:
                self.ssrc_changes += 1
            self._state.active_ssrc = ssrc  # the newest stream wins: a restarted sender takes over
        log.info("%s: receiving SSRC %08x", self.name, ssrc)

    def _on_pad_removed(self, _bin: Any, pad: Any) -> None:
        name = pad.get_name()
        with self._lock:
            branch = self._branches.pop(name, None)
            if branch is None:
                return
            self._retire(branch)
            branch.timeline.end()  # a sender that vanished without BYE ends here
            if self._state.active_ssrc == branch.ssrc:
                newest = max(self._branches.values(), key=lambda b: b.created_at, default=None)
                self._state.active_ssrc = newest.ssrc if newest else None
            self._removed.extend(branch.elements)
        log.info("%s: SSRC %08x ended", self.name, branch.ssrc)
        # elements are stopped from the GLib thread: this may be a streaming thread of rtpbin, or
        # the pipeline's own stop (then ``_remove_all_branches`` gets there first)
        self.loop.call_soon(self._dispose_removed)

    def _retire(self, branch: _Branch) -> None:
        """Keep the counters of a branch that goes away (caller holds the lock)."""
        self._jitterbuffers.pop(branch.ssrc, None)
        if branch.jitterbuffer is not None:
            stats = branch.jitterbuffer.get_property("stats")
            for key in _JITTERBUFFER_COUNTERS:
                self._retired[key] += int(stats.get_value(key))

    def _dispose(self, elements: list[Any]) -> None:
        for element in elements:
            element.set_state(Gst.State.NULL)
            if element.get_parent() is not None:
                self.pipeline.remove(element)

    def _remove_all_branches(self) -> None:
        with self._lock:
            branches = list(self._branches.values())
            self._branches.clear()
            for branch in branches:
                self._retire(branch)
            self._state.active_ssrc = None
        for branch in branches:
            self._dispose(branch.elements)
        self._dispose_removed()

    def _dispose_removed(self) -> None:
        with self._lock:
            removed, self._removed = self._removed, []
        self._dispose(removed)

    def _on_restart(self) -> None:
        self._remove_all_branches()

    # -- statistics -----------------------------------------------------------------------------------
    def _source_report(self) -> dict[str, Any]:
        """The RTP session's view of the latest sender (interarrival jitter as RTCP reports it, its
        addresses). rtpbin forgets a source soon after its BYE, so the last view is kept."""
        with self._lock:
            wanted = self._state.active_ssrc
        for entry in _source_stats(self.rtpbin):
            if not entry.get("internal") and entry.get("is-sender") and entry.get("ssrc") == wanted:
                self._last_source = {
                    "ssrc": entry.get("ssrc"),
                    "jitter_ms": 1000.0 * entry.get("jitter", 0) / OPUS_RATE,
                    "rtp_from": entry.get("rtp-from"),
                    "rtcp_from": entry.get("rtcp-from"),
                    "sender_reports": bool(entry.get("have-sr")),
                    "bitrate": int(entry.get("bitrate", 0)),
                }
        return dict(self._last_source)

    def _fill_pauses(self) -> bool:
        """GLib timer: silence for the active stream while its sender pauses (see ``StreamTimeline``)."""
        if not self.running:
            return False
        with self._lock:
            active = [b.timeline for b in self._branches.values() if b.ssrc == self._state.active_ssrc]
        now = time.monotonic()
        for timeline in active:
            timeline.fill_pause(now, (self.latency_ms + PAUSE_GRACE_MS) / 1000)
        return True

    def _refresh(self) -> bool:
        """GLib timer: keep the session's view of the sender while it exists."""
        if self.running:
            self._source_report()
        return self.running

    def stats(self) -> dict[str, Any]:
        """Packets, loss, lateness and jitter (summed over every SSRC seen; ``jitter_ms`` and
        ``rtcp_*`` are the active SSRC's interarrival jitter and reports, as RTCP computes them)."""
        with self._lock:
            totals = dict(self._retired)
            jitterbuffers = [(b.ssrc, b.jitterbuffer) for b in self._branches.values() if b.jitterbuffer]
        active = self._state.active_ssrc
        avg_jitter_ns = 0
        for ssrc, jitterbuffer in jitterbuffers:
            stats = jitterbuffer.get_property("stats")
            for key in _JITTERBUFFER_COUNTERS:
                totals[key] += int(stats.get_value(key))
            if ssrc == active:
                avg_jitter_ns = int(stats.get_value("avg-jitter"))
        source = self._source_report()
        received = totals["num-pushed"]
        lost = totals["num-lost"]
        state = self._state
        return {
            "listen": f"{self.bind_address}:{self.port}",
            "datagrams": self._gate.datagrams,
            "bytes_received": self._gate.bytes,
            "invalid_datagrams": self._gate.invalid,
            "wrong_payload_type": self._gate.wrong_payload_type,
            "packets_received": received,
            "packets_lost": lost,
            "loss_fraction": lost / (received + lost) if received + lost else 0.0,
            "packets_late": totals["num-late"],
            "packets_duplicate": totals["num-duplicates"],
            "jitterbuffer_avg_jitter_ms": avg_jitter_ns / Gst.MSECOND,
            "jitterbuffer_latency_ms": self.latency_ms,
            "fec_decode": self.fec_decode,
            "rtcp_packets_received": self._rtcp_peer.packets if self._rtcp_peer else 0,
            "rtcp_invalid_datagrams": self._rtcp_peer.invalid if self._rtcp_peer else 0,
            "active_ssrc": active,
            "streams_started": self.streams_started,
            "ssrc_changes": self.ssrc_changes,
            "byes": self.byes,
            "resets": self.resets,
            "held_back": self._gate.held_back,
            "restarts_without_bye": self._gate.restarts_without_bye,
            "samples_decoded": state.samples_decoded,
            "ignored_samples": state.ignored_samples,
            "filled_samples": state.filled_samples,
            "pause_filled_samples": state.pause_filled_samples,
            "overfilled_samples": state.overfilled_samples,
            "errors": self.errors,
            "restarts": self.restarts,
            "last_error": self.last_error,
            **source,
        }


def _weak_call(method: Callable[[], None]) -> Callable[[], None]:
    """A callable that calls a bound method without keeping its object alive (probes and signal
    closures live in C, where Python's GC cannot break cycles)."""
    ref = weakref.WeakMethod(method)

    def call() -> None:
        target = ref()
        if target is not None:
            target()

    return call


def _weak_call_once(method: Callable[[int], None], argument: int) -> Callable[[], bool]:
    """A one-shot GLib timer callback calling ``method(argument)`` if its object still exists."""
    ref = weakref.WeakMethod(method)

    def once() -> bool:
        target = ref()
        if target is not None:
            target(argument)
        return False

    return once


def _weak_timer(method: Callable[[], bool]) -> Callable[[], bool]:
    """A GLib timer callback that ends with its object instead of keeping it alive."""
    ref = weakref.WeakMethod(method)

    def tick() -> bool:
        target = ref()
        return bool(target is not None and target())

    return tick


def _discard(_samples: Audio) -> None:
    pass
