"""RTCP on one UDP socket per end (RFC 4961, symmetric): the socket's input and output linked to
rtpbin's session, the receiver's answering of whichever address the sender's reports come from, and
the session's per-source statistics."""

from __future__ import annotations

from typing import Any

import gi

from vcstream.errors import MediaError
from vcstream.media.gst import Gst, make_element
from vcstream.media.rtp.pipeline import _link_pads

gi.require_version("GstNet", "1.0")
from gi.repository import GstNet  # noqa: E402


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
