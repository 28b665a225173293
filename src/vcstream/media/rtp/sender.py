"""``RtpOpusSender``: float32 audio in, Opus over RTP out, with RTCP sender reports out and the far
end's receiver reports in."""

from __future__ import annotations

import time
from typing import Any

from vcstream.audio.types import Audio
from vcstream.errors import ConfigurationError
from vcstream.media.appio import AudioSource
from vcstream.media.gst import Gst, link_many, make_element, require_elements, seconds_to_ns
from vcstream.media.rtp.codec import OPUS_RATE, NetworkSimulation, OpusCodecSettings, ip_overhead_bytes
from vcstream.media.rtp.pipeline import _link_pads, _LivePipeline
from vcstream.media.rtp.rtcp import _add_rtcp_io, _session, _source_stats
from vcstream.media.rtp.sockets import _bind_udp, _local_port, resolve_host
from vcstream.media.rtp.trace import PacketTrace, _rtp_seq


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
