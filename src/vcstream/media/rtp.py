"""Opus over RTP with RTCP: ``RtpOpusSender`` (float32 audio in, packets out) and ``RtpOpusReceiver``
(packets in, float32 48 kHz mono audio out to a callback on the streaming thread).

Both are live pipelines around ``rtpbin``. Their bus, restarts and teardown run on the shared
``GLibLoop``; the only Python code on streaming threads is cheap (packet checks, counters, handing
decoded audio to the callback).

Robustness of the receiver, by construction rather than by luck:

* a pad probe on the RTP socket drops datagrams that are not RTP version 2 or carry another payload
  type before ``rtpbin`` sees them (and counts them), so garbage and foreign streams cost nothing;
* ``rtpsession``'s probation (two consecutive sequence numbers) keeps a lone datagram that happens to
  look like RTP from creating a stream;
* every SSRC gets its own depayloader/decoder branch, added on ``pad-added`` and torn down on
  ``pad-removed`` (source timeout or BYE); the newest SSRC is the one delivered, so a restarted sender
  (new SSRC, new sequence numbers) takes over at once;
* the jitter buffer reports lost packets (``do-lost``) and ``opusdec`` conceals them (PLC, and the
  next packet's in-band FEC when enabled), so the output stays continuous through loss;
* a pipeline error is logged and counted, and the pipeline is restarted on the GLib thread.

RTCP is symmetric (RFC 4961): each end sends its reports from the socket it receives reports on, and
the receiver answers the address the sender's reports came from, so no return address is configured.
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gi
import numpy as np

from vcstream.engines.base import Audio
from vcstream.errors import ConfigurationError, MediaError
from vcstream.media.appio import AudioSink, AudioSource
from vcstream.media.gst import Gst, ensure_gst, link_many, make_element, require_elements, seconds_to_ns
from vcstream.media.mainloop import GLibLoop

gi.require_version("Gio", "2.0")
gi.require_version("GstNet", "1.0")
from gi.repository import Gio, GLib, GObject, GstNet  # noqa: E402

__all__ = [
    "OPUS_RATE",
    "RTP_HEADER_BYTES",
    "NetworkSimulation",
    "OpusCodecSettings",
    "PacketTrace",
    "RtpOpusReceiver",
    "RtpOpusSender",
    "ip_overhead_bytes",
    "opus_packet_samples",
    "resolve_host",
]

log = logging.getLogger(__name__)

#: Opus's RTP clock rate and the rate audio enters and leaves these pipelines at
OPUS_RATE = 48000
RTP_HEADER_BYTES = 12
#: RTCP packet types 192-223 alias RTP payload types 64-95 once the marker bit is masked
_RTCP_ALIASED_PTS = range(64, 96)
#: how many packet times ``PacketTrace`` keeps (about 3 minutes at 50 packets/s)
TRACE_PACKETS = 10000
#: shortfalls of decoded audio filled with silence (at 48 kHz): from half a 20 ms frame to 2 s
MIN_FILL_SAMPLES = 480
MAX_FILL_SAMPLES = 2 * OPUS_RATE
#: a sender's pause (DTX) is filled with silence once nothing was decoded for the jitter buffer's
#: latency plus this (longer than ``BYE_GRACE_MS``: a stream that ended is not filled), in pieces
#: of 10 ms every ``PAUSE_TICK_MS``
PAUSE_GRACE_MS = 150
PAUSE_PIECE_SAMPLES = OPUS_RATE // 100
PAUSE_TICK_MS = 20
#: within a pause, how long past a comfort-noise update before the filling goes on
IN_PAUSE_WAIT_MS = 60
#: marks a loss event this receiver re-sent with a corrected duration
_ACCOUNTED = "vcstream-accounted"
#: SSRCs whose latest sequence number the RTP gate remembers
_TRACKED_SSRCS = 16
#: after a BYE, how much longer than the jitter buffer's latency the last packets may take
BYE_GRACE_MS = 100
#: a pause in a sender's packets after which a sequence number that does not continue the old
#: sequence means the sender restarted (DTX pauses run up to 400 ms but keep the numbering)
RESTART_PAUSE_S = 0.2
#: how often a receiver keeps its copy of the session's per-sender statistics current
STATS_REFRESH_MS = 500
#: a pipeline that fails this often within a minute is left stopped instead of restarted
_MAX_RESTARTS_PER_MINUTE = 10


def ip_overhead_bytes(address: str) -> int:
    """IP + UDP header bytes per datagram to ``address`` (numeric IPv4 or IPv6)."""
    return 48 if ":" in address else 28


@dataclass(frozen=True)
class OpusCodecSettings:
    """Opus encoder and RTP settings. Receivers use ``payload_type``, and ``fec`` as the default for
    decoding with in-band FEC (which makes opusdec decode every packet one frame late)."""

    bitrate: int = 32000
    frame_ms: int = 20
    #: in-band FEC: the encoder adds a low-rate copy of the previous frame to each packet
    fec: bool = True
    #: loss the encoder plans for (it sizes the FEC data by it)
    expected_loss_pct: int = 10
    #: discontinuous transmission: near-silent frames are not sent
    dtx: bool = False
    payload_type: int = 96

    def __post_init__(self) -> None:
        if not 6000 <= self.bitrate <= 510000:
            raise ConfigurationError(f"Opus bitrate must be 6000..510000 b/s, got {self.bitrate}")
        if self.frame_ms not in (10, 20):
            raise ConfigurationError(f"Opus frame size must be 10 or 20 ms, got {self.frame_ms}")
        if not 0 <= self.expected_loss_pct <= 100:
            raise ConfigurationError(f"expected loss must be 0..100 %, got {self.expected_loss_pct}")
        if not 0 <= self.payload_type <= 127 or self.payload_type in _RTCP_ALIASED_PTS:
            raise ConfigurationError(
                f"RTP payload type must be 0..127 outside 64..95 (RTCP), got {self.payload_type}"
            )

    @property
    def frame_samples(self) -> int:
        return OPUS_RATE * self.frame_ms // 1000

    def rtp_caps(self) -> Any:
        ensure_gst()
        return Gst.Caps.from_string(
            f"application/x-rtp,media=audio,clock-rate={OPUS_RATE},encoding-name=OPUS,"
            f"payload={self.payload_type}"
        )


@dataclass(frozen=True)
class NetworkSimulation:
    """Impairments GStreamer's ``netsim`` applies to outgoing RTP (tests and demos): a delay drawn
    uniformly from [min_delay_ms, max_delay_ms] for every packet, and random drops."""

    min_delay_ms: int = 0
    max_delay_ms: int = 0
    drop_pct: float = 0.0
    allow_reordering: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.min_delay_ms <= self.max_delay_ms:
            raise ConfigurationError(
                "netsim delay range must satisfy 0 <= min <= max, "
                f"got {self.min_delay_ms}..{self.max_delay_ms}"
            )
        if not 0 <= self.drop_pct <= 100:
            raise ConfigurationError(f"netsim drop must be 0..100 %, got {self.drop_pct}")

    def element(self) -> Any:
        delayed = self.max_delay_ms > 0
        return make_element(
            "netsim",
            min_delay=self.min_delay_ms,
            max_delay=self.max_delay_ms,
            delay_probability=1.0 if delayed else 0.0,
            drop_probability=self.drop_pct / 100.0,
            allow_reordering=self.allow_reordering,
        )


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


# -- sockets ---------------------------------------------------------------------------------------


def resolve_host(host: str) -> str:
    """Numeric address for ``host`` (a name, IPv4 or IPv6 literal), IPv4 preferred."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise ConfigurationError(f"cannot resolve {host!r}: {exc.strerror}") from exc
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    return str(infos[0][4][0])


def _bind_udp(address: str, port: int) -> Any:
    """A Gio UDP socket bound to ``address:port`` (port 0: any free port). No SO_REUSEADDR: two
    receivers on one port must fail loudly instead of splitting the packets between them."""
    family = Gio.SocketFamily.IPV6 if ":" in address else Gio.SocketFamily.IPV4
    inet = Gio.InetSocketAddress.new_from_string(address, port)
    if inet is None:
        raise ConfigurationError(f"bind address must be a numeric IP address, got {address!r}")
    sock = Gio.Socket.new(family, Gio.SocketType.DATAGRAM, Gio.SocketProtocol.UDP)
    try:
        sock.bind(inet, False)
    except GLib.Error as exc:
        sock.close()
        raise MediaError(f"cannot listen on UDP {address}:{port}: {exc.message}") from exc
    return sock


def _local_port(sock: Any) -> int:
    return int(sock.get_local_address().get_port())


def _bind_rtp_pair(address: str, port: int, rtcp_port: int | None) -> tuple[Any, Any | None]:
    """RTP socket on ``port`` and RTCP socket on ``rtcp_port`` (None: port + 1, 0: no RTCP). With
    ``port`` 0 any free port is taken whose successor is free too (a bounded number of tries)."""
    if port != 0:
        rtp = _bind_udp(address, port)
        if rtcp_port == 0:
            return rtp, None
        try:
            return rtp, _bind_udp(address, rtcp_port or port + 1)
        except MediaError:
            rtp.close()
            raise
    for _ in range(50):
        rtp = _bind_udp(address, 0)
        if rtcp_port == 0:
            return rtp, None
        wanted = rtcp_port or _local_port(rtp) + 1
        try:
            return rtp, _bind_udp(address, wanted)
        except MediaError:
            rtp.close()
            if rtcp_port:
                raise
    raise MediaError(f"no free pair of UDP ports on {address}")


# -- pipeline base: bus on the GLib loop, restart on error ------------------------------------------


class _LivePipeline:
    """A pipeline whose bus is watched on the shared GLib loop. Errors are counted and the pipeline
    is restarted (``_on_restart`` first); EOS sets ``eos``."""

    def __init__(self, name: str) -> None:
        ensure_gst()
        self.name = name
        self.loop = GLibLoop.shared()
        self.pipeline: Any = Gst.Pipeline.new(name)
        self.eos = threading.Event()
        self.errors = 0
        self.restarts = 0
        self.last_error: str | None = None
        self._restart_times: collections.deque[float] = collections.deque(maxlen=_MAX_RESTARTS_PER_MINUTE)
        self._running = False
        self._bus_handler: int | None = None

    def _start_pipeline(self) -> None:
        def begin() -> None:
            bus = self.pipeline.get_bus()
            bus.add_signal_watch()
            self._bus_handler = bus.connect("message", self._on_message)
            self._running = True
            if self.pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
                self._stop_pipeline_now()
                raise MediaError(f"{self.name}: pipeline could not start ({self.last_error or 'see log'})")

        self.loop.call(begin)

    def _stop_pipeline(self) -> None:
        self.loop.call(self._stop_pipeline_now)

    def _stop_pipeline_now(self) -> None:
        self._running = False
        self.pipeline.set_state(Gst.State.NULL)
        bus = self.pipeline.get_bus()
        if self._bus_handler is not None:
            bus.disconnect(self._bus_handler)
            bus.remove_signal_watch()
            self._bus_handler = None

    def _on_message(self, _bus: Any, message: Any) -> None:
        if message.type == Gst.MessageType.EOS:
            self.eos.set()
        elif message.type == Gst.MessageType.WARNING:
            warning, debug = message.parse_warning()
            log.warning("%s: %s (%s)", self.name, warning.message, debug)
        elif message.type == Gst.MessageType.ERROR:
            err, debug = message.parse_error()
            source = message.src.get_name() if message.src is not None else "?"
            self.errors += 1
            self.last_error = f"{err.message} [{source}]"
            log.error("%s: %s: %s", self.name, self.last_error, debug)
            if self._running:
                self._restart()

    def _restart(self) -> None:
        now = time.monotonic()
        if len(self._restart_times) == self._restart_times.maxlen and now - self._restart_times[0] < 60:
            log.error("%s: failing repeatedly; left stopped", self.name)
            self._stop_pipeline_now()
            return
        self._restart_times.append(now)
        self.restarts += 1
        self.pipeline.set_state(Gst.State.NULL)
        self._on_restart()
        self.pipeline.set_state(Gst.State.PLAYING)

    def _on_restart(self) -> None:
        """Hook: undo dynamic pipeline changes while the pipeline is stopped."""

    @property
    def running(self) -> bool:
        return self._running


# -- sender -------------------------------------------------------------------------------------------


def _add_rtcp_io(pipeline: Any, rtpbin: Any, sock: Any) -> tuple[Any, Any]:
    """RTCP in and out on one UDP socket (so the far end's reports come back to the port we send
    from), linked to rtpbin's session 0. Returns (udpsrc, multiudpsink); the caller adds clients."""
    rtcp_src = make_element(
        "udpsrc", socket=sock, close_socket=False, caps=Gst.Caps.from_string("application/x-rtcp")
    )
    rtcp_sink = make_element("multiudpsink", socket=sock, close_socket=False, sync=False, async_=False)
    for element in (rtcp_src, rtcp_sink):
        pipeline.add(element)
    _link_pads(rtcp_src.get_static_pad("src"), rtpbin.request_pad_simple("recv_rtcp_sink_0"))
    _link_pads(rtpbin.request_pad_simple("send_rtcp_src_0"), rtcp_sink.get_static_pad("sink"))
    return rtcp_src, rtcp_sink


class RtpOpusSender(_LivePipeline):
    """appsrc -> audioconvert -> audioresample -> opusenc -> rtpopuspay -> rtpbin -> [netsim] -> udpsink,
    with RTCP sender reports out and receiver reports in on one socket.

    ``push`` is thread-safe and never blocks; the appsrc queue holds at most ``max_queue_s`` (older
    audio is dropped beyond it). ``stop`` sends what is queued and an RTCP BYE.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        codec: OpusCodecSettings | None = None,
        sample_rate: int = OPUS_RATE,
        rtcp_port: int | None = None,
        rtcp_interval_s: float = 1.0,
        ssrc: int | None = None,
        netsim: NetworkSimulation | None = None,
        max_queue_s: float = 1.0,
        trace: bool = False,
        name: str = "rtp-out",
    ) -> None:
        super().__init__(name)
        require_elements("appsrc", "opusenc", "rtpopuspay", "rtpbin", "udpsink", "multiudpsink", "udpsrc")
        if netsim is not None:
            require_elements("netsim")
        self.codec = codec or OpusCodecSettings()
        self.host = resolve_host(host)
        self.port = port
        self.rtcp_port = (port + 1) if rtcp_port is None else rtcp_port
        self._overhead = ip_overhead_bytes(self.host)
        self.trace: PacketTrace | None = PacketTrace() if trace else None
        self._rtp_count = _SendCounter(self.trace)
        self._last_remote: dict[str, Any] = {}
        self._rtcp_count = _SendCounter(None)
        self.source = AudioSource(sample_rate, 1, name=f"{name}-src", max_queue_s=max_queue_s)
        codec_ = self.codec
        encoder = make_element(
            "opusenc",
            bitrate=codec_.bitrate,
            frame_size=codec_.frame_ms,
            inband_fec=codec_.fec,
            packet_loss_percentage=codec_.expected_loss_pct,
            dtx=codec_.dtx,
        )
        payloader = make_element("rtpopuspay", pt=codec_.payload_type, dtx=codec_.dtx)
        if ssrc is not None:
            payloader.set_property("ssrc", ssrc)
        self.rtpbin = make_element("rtpbin", name=f"{name}-rtpbin")
        rtp_sink = make_element("udpsink", host=self.host, port=port, sync=False, async_=False)
        chain = [
            self.source.element,
            make_element("audioconvert"),
            make_element("audioresample"),
            make_element("capsfilter", caps=Gst.Caps.from_string(f"audio/x-raw,rate={OPUS_RATE},channels=1")),
            encoder,
            payloader,
        ]
        for element in (*chain, self.rtpbin, rtp_sink):
            self.pipeline.add(element)
        link_many(*chain)
        _link_pads(payloader.get_static_pad("src"), self.rtpbin.request_pad_simple("send_rtp_sink_0"))
        after_bin = [rtp_sink]
        self._netsim: Any | None = None
        self._netsim_delay_s = 0.0 if netsim is None else (netsim.max_delay_ms + 5) / 1000
        if netsim is not None:
            self._netsim = netsim.element()
            after_bin.insert(0, self._netsim)
            self.pipeline.add(self._netsim)
            link_many(*after_bin)
            # EOS would overtake the packets netsim still delays: the sink then refuses them, and
            # the BYE (which rtpbin sends on EOS) beats them to the receiver. Hold EOS back that long.
            payloader.get_static_pad("src").add_probe(Gst.PadProbeType.EVENT_DOWNSTREAM, self._hold_eos)
        _link_pads(self.rtpbin.get_static_pad("send_rtp_src_0"), after_bin[0].get_static_pad("sink"))
        rtp_sink.get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, self._rtp_count)

        self._rtcp_socket: Any | None = None
        if self.rtcp_port:
            bind = "::" if ":" in self.host else "0.0.0.0"
            self._rtcp_socket = _bind_udp(bind, 0)
            _, rtcp_sink = _add_rtcp_io(self.pipeline, self.rtpbin, self._rtcp_socket)
            rtcp_sink.emit("add", self.host, self.rtcp_port)
            rtcp_sink.get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, self._rtcp_count)
            _session(self.rtpbin).set_property("rtcp-min-interval", seconds_to_ns(rtcp_interval_s))

    @property
    def rtcp_local_port(self) -> int | None:
        return None if self._rtcp_socket is None else _local_port(self._rtcp_socket)

    def start(self) -> RtpOpusSender:
        self._start_pipeline()
        return self

    def push(self, samples: Audio) -> bool:
        """Queue mono float32 audio at ``sample_rate``; False once stopped."""
        return self.running and self.source.push(samples)

    def drain(self, timeout_s: float = 2.0) -> bool:
        """End the stream: send what is queued and an RTCP BYE (waits up to ``timeout_s``). The
        pipeline keeps running (for ``stats``) until ``stop``. True once everything was sent."""
        if self.running:
            self._remote_report()  # the BYE ends the session's record of the far end's reports
            self.source.end_of_stream()
            return self.eos.wait(timeout_s + self._netsim_delay_s)
        return self.eos.is_set()

    def stop(self, drain_timeout_s: float = 2.0) -> None:
        """Drain (bounded by ``drain_timeout_s``), then stop."""
        self.drain(drain_timeout_s)
        self._stop_pipeline()
        if self._rtcp_socket is not None:
            self._rtcp_socket.close()
            self._rtcp_socket = None

    def _hold_eos(self, _pad: Any, info: Any) -> Any:
        event = info.get_event()
        if event is not None and event.type == Gst.EventType.EOS:
            time.sleep(self._netsim_delay_s)  # the payloader's thread: nothing else comes after EOS
        return Gst.PadProbeReturn.OK

    def drop_next_packets(self, count: int) -> None:
        """Lose the next ``count`` packets in a burst (needs ``netsim``)."""
        if self._netsim is None:
            raise ConfigurationError("drop_next_packets needs a sender created with netsim")
        self._netsim.set_property("drop-packets", count)

    @property
    def packets_sent(self) -> int:
        return self._rtp_count.packets

    @property
    def rtp_bytes_sent(self) -> int:
        """RTP packets' bytes (12-byte header + Opus payload), without IP/UDP headers."""
        return self._rtp_count.bytes

    def _remote_report(self) -> dict[str, Any]:
        """What the far end last reported in RTCP receiver reports (kept after the session ends)."""
        sources = _source_stats(self.rtpbin)
        own = {source.get("ssrc") for source in sources if source.get("internal")}
        for source in sources:
            # a receiver's report block sits on that receiver's source, naming our SSRC
            if not source.get("internal") and source.get("have-rb") and source.get("rb-ssrc") in own:
                self._last_remote = {
                    "remote_fraction_lost": source["rb-fractionlost"] / 256.0,
                    # cumulative lost = expected - received, -1 when a duplicate arrived
                    "remote_packets_lost": max(0, source["rb-packetslost"]),
                    "remote_jitter_ms": 1000.0 * source["rb-jitter"] / OPUS_RATE,
                    # round trip in 1/65536 s units (NTP short format)
                    "round_trip_ms": 1000.0 * source["rb-round-trip"] / 65536.0,
                }
        return self._last_remote

    def stats(self) -> dict[str, Any]:
        """Counters plus what the remote receiver last reported in RTCP (loss, jitter, round trip)."""
        remote = self._remote_report()
        level = self.source.element.get_property("current-level-time")
        return {
            "destination": f"{self.host}:{self.port}",
            "packets_sent": self.packets_sent,
            "rtp_bytes_sent": self.rtp_bytes_sent,
            "wire_bytes_sent": self.rtp_bytes_sent + self._overhead * self.packets_sent,
            "rtcp_packets_sent": self._rtcp_count.packets,
            "rtcp_bytes_sent": self._rtcp_count.bytes,
            "samples_pushed": self.source.samples_pushed,
            "queue_ms": level / Gst.MSECOND,
            "errors": self.errors,
            "restarts": self.restarts,
            "last_error": self.last_error,
            **remote,
        }


class _SendCounter:
    """Pad probe before a UDP sink: packets and bytes sent (and send times with a trace)."""

    def __init__(self, trace: PacketTrace | None) -> None:
        self.trace = trace
        self.packets = 0
        self.bytes = 0

    def __call__(self, _pad: Any, info: Any) -> Any:
        buffer = info.get_buffer()
        self.packets += 1
        self.bytes += buffer.get_size()
        if self.trace is not None:
            seq = _rtp_seq(buffer)
            if seq is not None:
                self.trace.record(seq, time.monotonic())
        return Gst.PadProbeReturn.OK


# -- receiver -----------------------------------------------------------------------------------------


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
        self.datagrams += 1
        self.bytes += size
        if size < RTP_HEADER_BYTES:
            self.invalid += 1
            return Gst.PadProbeReturn.DROP
        head = buffer.extract_dup(0, RTP_HEADER_BYTES)
        if head[0] >> 6 != 2:
            self.invalid += 1
            return Gst.PadProbeReturn.DROP
        if head[1] & 0x7F != self.payload_type:
            self.wrong_payload_type += 1
            return Gst.PadProbeReturn.DROP
        now = time.monotonic()
        ssrc, seq = int.from_bytes(head[8:12], "big"), int.from_bytes(head[2:4], "big")
        said_bye = self.said_bye.get(ssrc)
        returning = said_bye is not None and not self._straggler(ssrc, seq, now - said_bye)
        if returning or self.reset_pending or self._restarted(ssrc, seq, now):
            self.held_back += 1
            if not self.reset_pending:
                self.reset_pending = True
                self.restarts_without_bye += not returning
                self.on_returning()
            return Gst.PadProbeReturn.DROP
        if ssrc not in self.last_seq and len(self.last_seq) >= _TRACKED_SSRCS:
            self.last_seq.pop(next(iter(self.last_seq)))
        self.last_seq[ssrc] = (seq, now)
        self.last_packet_at = now
        if self.trace is not None:
            self.trace.record(seq, now)
        return Gst.PadProbeReturn.OK

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


class _RtcpPeer:
    """Pad probe on the RTCP socket's output: drops what is not RTCP and sends our answers (receiver
    reports) to the address the latest sender reports came from."""

    def __init__(self, sink: Any) -> None:
        self._sink = sink
        self.address: tuple[str, int] | None = None
        self.packets = 0
        self.invalid = 0

    def __call__(self, _pad: Any, info: Any) -> Any:
        buffer = info.get_buffer()
        head = buffer.extract_dup(0, 2) if buffer.get_size() >= 8 else b""
        if len(head) < 2 or head[0] >> 6 != 2 or not 192 <= head[1] <= 223:
            self.invalid += 1
            return Gst.PadProbeReturn.DROP
        self.packets += 1
        meta = GstNet.buffer_get_net_address_meta(buffer)
        # answer only senders: a compound packet from a sender starts with a sender report (200)
        if meta is not None and head[1] == 200:
            inet = meta.addr
            address = (inet.get_address().to_string(), int(inet.get_port()))
            if address != self.address:
                self.address = address
                self._sink.emit("clear")
                self._sink.emit("add", *address)
        return Gst.PadProbeReturn.OK


@dataclass
class _Branch:
    ssrc: int
    pad: Any
    elements: list[Any]
    jitterbuffer: Any | None
    created_at: float
    delivery: _Delivery


def opus_packet_samples(payload: bytes) -> int:
    """Duration of an Opus packet at 48 kHz from its TOC byte (RFC 6716 section 3.1); 0 if empty."""
    if not payload:
        return 0
    config, code = payload[0] >> 3, payload[0] & 0x3
    if config < 12:  # SILK: 10, 20, 40, 60 ms
        frame = (480, 960, 1920, 2880)[config % 4]
    elif config < 16:  # hybrid: 10, 20 ms
        frame = (480, 960)[config % 2]
    else:  # CELT: 2.5, 5, 10, 20 ms
        frame = (120, 240, 480, 960)[config % 4]
    if code == 0:
        frames = 1
    elif code in (1, 2):
        frames = 2
    else:
        frames = payload[1] & 0x3F if len(payload) > 1 else 0
    return frame * frames


def _rtp_payload(data: bytes) -> bytes:
    """The payload of an RTP packet (after CSRCs and header extension, before padding)."""
    offset = RTP_HEADER_BYTES + 4 * (data[0] & 0x0F)
    if data[0] & 0x10 and len(data) >= offset + 4:
        offset += 4 + 4 * int.from_bytes(data[offset + 2 : offset + 4], "big")
    end = len(data) - (data[-1] if data[0] & 0x20 and data else 0)
    return data[offset:end]


class _Delivery:
    """Decoded audio of one SSRC branch goes to the user's callback only while it is the active one.

    It also keeps the timeline, so that output sample n stays at stream time n:

    - Loss: opusdec conceals at most 120 ms per loss event (libopus's limit), so after a longer
      burst fewer samples come out than went missing. The depayloader's input is accounted for (each
      packet's duration from its TOC byte, each lost-packet event's duration) and a shortfall beyond
      what the decoder may still hold is filled with silence after the concealment.
    - Pauses: a sender with DTX sends nothing in silence, and its next packet's RTP timestamp jumps
      (the sequence numbers do not): the jump is filled with silence like a loss. For a live
      consumer, ``fill_pause`` (a timer) also delivers the silence in real time while nothing comes,
      so the consumer keeps running and flushes the end of what was said; the timestamp jump then
      settles the account. Silence filled during what turns out to be a loss burst is taken off the
      loss event, so the two never both fill the same time; silence filled for packets that were
      only late is taken off the next pause.
    """

    def __init__(self, ssrc: int, state: _ReceiverState, decoder_holds_one: bool) -> None:
        self.ssrc = ssrc
        self.state = state
        self._holds_one = decoder_holds_one  # opusdec with in-band FEC decodes one packet late
        self._lock = threading.Lock()  # streaming thread (decoding) and GLib thread (pause fill)
        self._expected = 0  # stream time that went into the decoder (packets, losses, pauses)
        self._last_item = 0  # duration of the latest packet or loss
        self._delivered = 0
        self._frame = 0  # duration of the latest packet, what a lost one is taken to have lasted
        self._ts_base: int | None = None  # RTP timestamp of stream time 0
        self._decoded_at: float | None = None  # when the decoder last delivered
        self._pause_filled = 0  # silence delivered since then
        self._credit = 0  # of that, not yet matched by a timestamp jump or a loss
        self._pausing = False  # the sender is in a pause (DTX), between its comfort-noise updates
        self._ended = False

    def account(self, pad: Any, info: Any) -> Any:
        """Pad probe on the depayloader's sink pad (the same streaming thread as the delivery)."""
        if info.type & Gst.PadProbeType.BUFFER:
            buffer = info.get_buffer()
            size = buffer.get_size()
            if size > RTP_HEADER_BYTES:
                packet = buffer.extract_dup(0, size)
                with self._lock:
                    self._account_packet(int.from_bytes(packet[4:8], "big"), _rtp_payload(packet))
            return Gst.PadProbeReturn.OK
        event = info.get_event()
        structure = event.get_structure() if event is not None else None
        if structure is None or structure.get_name() != "GstRTPPacketLost":
            return Gst.PadProbeReturn.OK
        if structure.has_field(_ACCOUNTED):  # our own corrected copy, on its way through
            return Gst.PadProbeReturn.OK
        found, duration = structure.get_uint64("duration")
        if not found or not self._frame:
            return Gst.PadProbeReturn.OK
        # The jitter buffer estimates a lost packet's duration from arrival times, which jitter
        # (25 ms for a 20 ms packet), and opusdec conceals exactly that long: the timeline would
        # drift. Lost packets last whole frames: round to them.
        frames = max(1, round(int(duration) * OPUS_RATE / Gst.SECOND / self._frame))
        with self._lock:
            if not self._credit:
                conceal = frames
            else:  # silence already stood in for the start of this loss: conceal only the rest
                covered = min(self._credit, frames * self._frame)
                self._credit -= covered
                conceal = (frames * self._frame - covered) // self._frame
            self._last_item = frames * self._frame
            self._expected += self._last_item
        if conceal == 0:
            return Gst.PadProbeReturn.DROP
        exact_ns = conceal * self._frame * Gst.SECOND // OPUS_RATE
        if exact_ns == duration:
            return Gst.PadProbeReturn.OK
        fixed = structure.copy()
        fixed.set_value("duration", GObject.Value(GObject.TYPE_UINT64, exact_ns))
        fixed.set_value(_ACCOUNTED, True)
        pad.send_event(Gst.Event.new_custom(event.type, fixed))  # comes back through here
        return Gst.PadProbeReturn.DROP

    def _account_packet(self, timestamp: int, payload: bytes) -> None:
        if self._ts_base is None:
            self._ts_base = (timestamp - self._expected) % 2**32
        jump = (timestamp - self._ts_base) % 2**32 - self._expected
        # stream time passed without packets: a pause (DTX), in which this was a comfort-noise update
        self._pausing = 0 < jump < 2**31
        if self._pausing:
            self._expected += jump
            self._credit -= min(self._credit, jump)
        # silence filled beyond the pause (the packets were only late) stays ahead of the account
        # until the next pause takes it off
        self.state.overfilled_samples += self._credit
        self._credit = 0
        self._last_item = opus_packet_samples(payload)
        self._expected += self._last_item
        self._frame = self._last_item or self._frame

    def __call__(self, samples: Audio) -> None:
        state = self.state
        with self._lock:
            # a pause longer than the live filling goes: the rest of it is skipped, not filled late
            skip_rest = self._pause_filled >= MAX_FILL_SAMPLES
            self._deliver(samples)
            state.samples_decoded += samples.shape[0]
            state.last_audio_at = self._decoded_at = time.monotonic()
            self._pause_filled = 0
            # after the concealment of a loss, not before it: concealment continues the signal
            hole = self._owed() - self._delivered
            if MIN_FILL_SAMPLES <= hole <= MAX_FILL_SAMPLES and not skip_rest:
                self._deliver(np.zeros(hole, dtype=np.float32))
                state.filled_samples += hole
            elif hole > 0 and (skip_rest or hole > MAX_FILL_SAMPLES):
                self._delivered += hole  # a jump in the stream, not loss: start counting afresh

    def fill_pause(self, now: float, grace_s: float) -> None:
        """Timer (GLib thread): nothing decoded for longer than ``grace_s``: deliver the silence due
        since, in whole 10 ms pieces, up to ``MAX_FILL_SAMPLES`` per pause."""
        with self._lock:
            if self._ended or self._decoded_at is None:
                return
            # after a comfort-noise update the next one is not awaited as long; the wait counts from
            # the last decoded audio, so it must not shorten while one silence is being filled (the
            # fill would run ahead of real time, past the end of a loss burst)
            wait_s = IN_PAUSE_WAIT_MS / 1000 if self._pausing else grace_s
            due = min(round((now - self._decoded_at - wait_s) * OPUS_RATE), MAX_FILL_SAMPLES)
            ahead = max(0, self._delivered - self._credit - self._owed())
            due = (due - self._pause_filled - ahead) // PAUSE_PIECE_SAMPLES * PAUSE_PIECE_SAMPLES
            if due <= 0:
                return
            self._deliver(np.zeros(due, dtype=np.float32))
            self._pause_filled += due
            self._credit += due
            self.state.pause_filled_samples += due

    def _owed(self) -> int:
        """Stream time the decoder should have delivered by now: all that went in, less the latest
        packet or loss where it decodes one late (in-band FEC)."""
        return self._expected - (self._last_item if self._holds_one else 0)

    def end(self) -> None:
        """The stream is over (after its BYE, or timed out): tell the user once, if it was the one
        being delivered."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
        on_end = self.state.on_stream_end
        if on_end is not None and self.state.active_ssrc == self.ssrc:
            on_end()

    def _deliver(self, samples: Audio) -> None:
        self._delivered += samples.shape[0]
        if self.state.active_ssrc != self.ssrc:
            self.state.ignored_samples += samples.shape[0]
        else:
            self.state.on_audio(samples)


class _ReceiverState:
    def __init__(self, on_audio: Callable[[Audio], None], on_stream_end: Callable[[], None] | None) -> None:
        self.on_audio = on_audio
        self.on_stream_end = on_stream_end
        self.active_ssrc: int | None = None
        self.samples_decoded = 0
        self.ignored_samples = 0
        self.filled_samples = 0
        self.pause_filled_samples = 0
        self.overfilled_samples = 0
        self.last_audio_at: float | None = None


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
        self._state = _ReceiverState(on_audio, on_stream_end)
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

        def timers() -> None:
            GLib.timeout_add(STATS_REFRESH_MS, _weak_timer(self._refresh))
            if self.fill_pauses:
                GLib.timeout_add(PAUSE_TICK_MS, _weak_timer(self._fill_pauses))

        self.loop.call(timers)
        return self

    def stop(self) -> None:
        """Stop receiving and release the ports (idempotent)."""
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
        self.loop.call_soon(GLib.timeout_add, delay_ms, _weak_call_once(self._end_stream, ssrc))

    def _end_stream(self, ssrc: int) -> None:
        with self._lock:
            deliveries = [b.delivery for b in self._branches.values() if b.ssrc == ssrc]
        for delivery in deliveries:
            delivery.end()

    def _request_reset(self) -> None:
        self.loop.call_soon(self._reset)

    def _reset(self) -> None:
        """Forget every source: a fresh session (GLib thread)."""
        if self.running:
            self.resets += 1
            log.info("%s: a sender came back with a known SSRC: resetting", self.name)
            with self._lock:
                deliveries = [branch.delivery for branch in self._branches.values()]
            for delivery in deliveries:
                delivery.end()  # after a BYE already done; a killed sender's stream ends here
            self.pipeline.set_state(Gst.State.NULL)
            self._remove_all_branches()
            self.pipeline.set_state(Gst.State.PLAYING)
        self._gate.forget()

    def _on_pad_added(self, _bin: Any, pad: Any) -> None:
        name = pad.get_name()
        if pad.get_direction() != Gst.PadDirection.SRC or not name.startswith("recv_rtp_src_"):
            return
        ssrc = int(name.split("_")[4])
        delivery = _Delivery(ssrc, self._state, decoder_holds_one=self.fec_decode)
        sink = AudioSink(OPUS_RATE, 1, on_audio=delivery)
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
                Gst.PadProbeType.BUFFER | Gst.PadProbeType.EVENT_DOWNSTREAM, delivery.account
            )
            _link_pads(pad, elements[0].get_static_pad("sink"))
            if self.departures is not None:
                pad.add_probe(Gst.PadProbeType.BUFFER, _Departures(self.departures))
            self._branches[name] = _Branch(
                ssrc, pad, elements, self._jitterbuffers.get(ssrc), time.monotonic(), delivery
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
            branch.delivery.end()  # a sender that vanished without BYE ends here
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
        """GLib timer: silence for the active stream while its sender pauses (see ``_Delivery``)."""
        if not self.running:
            return False
        with self._lock:
            active = [b.delivery for b in self._branches.values() if b.ssrc == self._state.active_ssrc]
        now = time.monotonic()
        for delivery in active:
            delivery.fill_pause(now, (self.latency_ms + PAUSE_GRACE_MS) / 1000)
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
    """A one-shot GLib timeout callback calling ``method(argument)`` if its object still exists."""
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


class _Departures:
    def __init__(self, trace: PacketTrace) -> None:
        self.trace = trace

    def __call__(self, _pad: Any, info: Any) -> Any:
        seq = _rtp_seq(info.get_buffer())
        if seq is not None:
            self.trace.record(seq, time.monotonic())
        return Gst.PadProbeReturn.OK


# -- helpers ------------------------------------------------------------------------------------------


def _link_pads(src: Any, sink: Any) -> None:
    result = src.link(sink)
    if result != Gst.PadLinkReturn.OK:
        raise MediaError(f"could not link {src.get_name()} to {sink.get_name()}: {result.value_nick}")


def _session(rtpbin: Any) -> Any:
    """The rtpsession element of session 0 (exists once a session pad was requested)."""
    session = rtpbin.emit("get-session", 0)
    if session is None:
        raise MediaError("rtpbin has no session 0")
    return session


def _source_stats(rtpbin: Any) -> list[dict[str, Any]]:
    """Per-source statistics of session 0 as plain dicts."""
    session = rtpbin.emit("get-session", 0)
    if session is None:
        return []
    # the source structures live inside this one: keep it referenced while they are read
    stats = session.get_property("stats")
    sources = stats.get_value("source-stats") or []
    return [
        {entry.nth_field_name(i): entry.get_value(entry.nth_field_name(i)) for i in range(entry.n_fields())}
        for entry in sources
    ]
