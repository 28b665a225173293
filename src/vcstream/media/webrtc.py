"""A WebRTC audio peer on ``webrtcbin``: Opus both ways, one sendrecv audio transceiver, trickle ICE.

``WebRtcPeer`` is GStreamer only; it knows nothing of WebSockets or asyncio. The server uses it as the
answering side (the browser offers), tests and tools can use it as the offering side:

* ``answer(offer_sdp)``: checks the offer, builds the send branch with the offer's Opus payload type,
  starts the pipeline, sets the remote description and creates the answer;
* ``offer()`` then ``accept_answer(answer_sdp)``: the same from the other end;
* ``add_ice_candidate`` for the remote end's trickled candidates;
* ``push(samples)``: mono float32 audio at ``PeerConfig.audio_rate`` to send (any thread);
* ``stats()``: ``PeerStats`` from webrtcbin's ``get-stats`` (round-trip time, jitter, loss, bytes);
* ``close()``: pipeline to NULL and every reference dropped (blocks until streaming threads stop:
  call it from a worker thread, not from an event loop). Its owner must call it: a peer collected
  unclosed is only reported (a warning), since the collector may run on any thread, loops included.

Pipeline::

    appsrc (F32 mono, audio_rate) ! audioconvert ! audioresample ! opusenc ! rtpopuspay pt=N ! caps
        ! webrtcbin (sink)
    webrtcbin (src, added once RTP flows) ! rtpopusdepay ! fakesink
        (a probe on rtpopusdepay's output: ReceivedOpus, libopus -> listener.on_audio)

A caller whose audio is at another rate than Opus's 48 kHz (an engine at 22.05 or 16 kHz) sets
``audio_rate`` to its own rate. On the way out the conversion happens in C and off the GIL
(``audioresample``), and the encoder takes the nearest rate Opus codes (22.05 kHz -> 24 kHz, 16 kHz
as is). On the way in, libopus decodes at the lowest Opus rate at or above it, and only a rate Opus
does not code is resampled, in Python (``vcstream.audio.resample``: 82 us per 20 ms at 24 -> 22.05
kHz here, 0.4 % of a core; decoding a speech packet took 44 us). Received packets are decoded in
Python, not by ``opusdec``, because ``opusdec`` with in-band FEC holds every frame back 20 ms
(``vcstream.media.opus_receiver``).

Events reach a ``PeerListener`` on GStreamer's threads (webrtcbin's own thread, libnice's, the bus
watch on the shared ``GLibLoop``); the listener hands them on (the server: to asyncio through the
application's ``Runtime``). Every GObject signal handler holds the peer only through a weak
reference, so no reference cycle runs through C code where Python's collector cannot see it;
``live_pipelines()`` counts pipelines GStreamer has not finalised yet, which is how the leak tests
look for leaks.

DTLS: webrtcbin's DTLS elements generate one certificate per process on first use (about 150 ms) and
share it; ``prepare()`` does that ahead of the first call instead of during it.

Loss: the peer offers ``useinbandfec=1``, NACK/RTX and RED; answering, it sends Opus in-band FEC when
the offer asks for it (``vcstream.media.opus_sdp``) and follows the offer's NACK and RED (listed first
in the answer, so that browsers send RED too). How strongly FEC is coded, and whether RED packets carry
an older frame, follow the loss the remote end reports, read at each ``stats()``
(``vcstream.media.loss_protection``).
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import gi

from vcstream.audio.types import Audio
from vcstream.errors import MediaError, VcstreamError
from vcstream.media.appio import AudioSource
from vcstream.media.candidates import announce_candidate, announce_in_sdp
from vcstream.media.gst import Gst, ensure_gst, link_many, make_element, require_elements
from vcstream.media.handshake_protection import answer_as_dtls_server, protect_flights, tune_ice_agent
from vcstream.media.loss_protection import LossProtection, Protection
from vcstream.media.mainloop import GLibLoop
from vcstream.media.opus_packets import carries_fec
from vcstream.media.opus_receiver import ReceivedOpus
from vcstream.media.opus_sdp import OpusFeatures, opus_features, red_first

gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GstSdp, GstWebRTC  # noqa: E402

__all__ = [
    "OPUS_RATE",
    "InvalidSdpError",
    "PeerConfig",
    "PeerListener",
    "PeerStats",
    "Retransmissions",
    "WebRtcPeer",
    "live_pipelines",
    "opus_payload_type",
    "peers_in_port_range",
    "prepare",
]

log = logging.getLogger(__name__)

#: Opus's clock rate, the rate audio enters and leaves the peer at
OPUS_RATE = 48000
#: payload type an offering peer uses for Opus (dynamic range; the answerer follows the offer's)
DEFAULT_PAYLOAD_TYPE = 96
#: a session description larger than this is not a one-track audio call
MAX_SDP_CHARS = 64 * 1024
#: elements a peer needs, checked once so a missing package is named up front
_ELEMENTS = (
    "webrtcbin", "nicesrc", "nicesink", "dtlssrtpenc", "dtlssrtpdec", "srtpenc", "srtpdec", "rtpbin",
    "opusenc", "rtpopuspay", "rtpopusdepay", "audioconvert", "audioresample", "appsrc", "capsfilter",
    "fakesink",
)  # fmt: skip
#: how long packets are kept for resending at least (the 40 ms jitter buffer this server had)
_RESEND_WINDOW_MS = 40
_RTPMAP = re.compile(r"^\s*(\d{1,3})\s+opus/48000(?:/\d+)?\s*$", re.IGNORECASE)
_peer_ids = itertools.count(1)


class InvalidSdpError(VcstreamError, ValueError):
    """A remote session description that cannot set up an Opus audio call."""


class PeerListener(Protocol):
    """What a ``WebRtcPeer`` reports. Every method is called on a GStreamer thread: return quickly."""

    def on_description(self, kind: str, sdp: str) -> None:
        """The local description (``"offer"`` or ``"answer"``) is ready to be sent to the other end."""

    def on_ice_candidate(self, mline_index: int, candidate: str) -> None:
        """A local ICE candidate to trickle to the other end."""

    def on_state(self, name: str, value: str) -> None:
        """``name`` is ``connection``, ``ice`` or ``gathering``; ``value`` its state's nick
        (``connecting``, ``connected``, ``failed``, ``complete``...)."""

    def on_audio(self, samples: Audio) -> None:
        """Decoded received audio, mono float32 at ``PeerConfig.audio_rate``, on the streaming thread."""

    def on_error(self, kind: str, message: str) -> None:
        """A failure that leaves the peer unusable (close it): ``kind`` is ``negotiation`` (webrtcbin
        refused a description) or ``media`` (a pipeline error)."""


@dataclass(frozen=True)
class PeerConfig:
    #: webrtcbin's jitter buffer latency: how long a gap may hold the packets behind it (in-order
    #: packets pass at once). 20, one frame: the next packet brings the lost frame's FEC, so waiting
    #: longer only delays the audio (RED's copy needs no wait: it is recovered before the buffer sees
    #: the gap). Python client at 10 % loss each way, 20 ms engine blocks, no NACKs asked: latency p95
    #: over a clean call's +42 to +56 ms at 40 (4 calls), -12 to +58 at 20 (15 calls, 8 within
    #: +30). Chromium callers at 20: within +30 in 7 of 8 calls (4 of 5 at 40)
    latency_ms: int = 20
    #: ``stun://host:port``, GStreamer's form
    stun_server: str | None = None
    #: ``turn://user:password@host:port`` (``turns://`` for TLS), user and password percent-encoded
    turn_servers: tuple[str, ...] = ()
    #: Opus bitrate of the audio sent, bits/s
    bitrate: int = 48000
    #: Opus encoder complexity 0-10: 5 (libwebrtc's mobile default) costs about half of 10 per call
    #: (measured: 0.9% vs 1.8% of a core) for little loss at this bitrate
    complexity: int = 5
    #: the rate of the audio ``push`` takes and ``on_audio`` delivers; the pipeline converts to Opus's
    audio_rate: int = OPUS_RATE
    #: the send queue keeps at most this much audio; older audio is dropped rather than delayed
    max_send_queue_s: float = 0.5
    #: the audio sent never runs more than this ahead of the clock (``AudioSource``'s ``max_ahead_s``):
    #: webrtcbin sends each packet at its timestamp, and a stream that got ahead held every later
    #: packet back. Seen in a call at 10 % loss each way: the server's received stream ran 108 ms
    #: ahead of the clock early on (more audio than time had passed), its sent stream 90-103 ms, and
    #: most markers came 62-65 ms later than in the clean call. Otherwise the sent stream stays 10-13 ms
    #: behind the clock. None: never trimmed
    max_send_ahead_s: float | None = 0.02
    #: also gather ICE-TCP candidates (a listening socket per call; UDP and TURN cover real clients)
    ice_tcp: bool = False
    #: use relay (TURN) candidates only, like a browser's ``iceTransportPolicy: "relay"``
    relay_only: bool = False
    #: UDP ports (first, last) the host candidates bind to (a firewall or NAT forwards that range);
    #: None: any port. One port per open peer (max-bundle, one component): a peer that would find
    #: them all taken is refused at creation instead of gathering nothing and hanging
    ice_port_range: tuple[int, int] | None = None
    #: the public address that forwards to this host: host candidates carry it instead (see
    #: ``vcstream.media.candidates``); None: the addresses gathered on
    announced_address: str | None = None
    #: Opus in-band FEC: offer ``useinbandfec=1`` (our decoder uses it) and send FEC, offering, or
    #: answering an offer that asks for it; how strongly follows the reported loss (LossProtection)
    inband_fec: bool = True
    #: NACK and RTX: offer them; answering, follow the offer. We resend what the other end asks for
    #: but never ask ourselves (``_never_request_retransmissions``)
    nack: bool = True
    #: read each received Opus packet's header (a Python call per packet: for tests and benchmarks)
    #: and count the packets that carry FEC (``WebRtcPeer.received_fec``)
    count_received_fec: bool = False
    #: RED (RFC 2198), offered and answered: while ``LossProtection`` asks for redundancy, each packet
    #: also carries the frame sent this many packets before it (0: RED packets with no older frame).
    #: 1: a receiver recovers from RED before its jitter buffer, which gives a missing frame up
    #: after one frame's wait (``latency_ms``), so only the previous frame's copy comes in time (a
    #: copy two packets back came 20 ms too late, every time). With in-band FEC decoded as well, a
    #: frame is lost only when three packets in a row are: the copy of the frame after it carries
    #: its FEC
    red_distance: int = 1


@dataclass(frozen=True)
class PeerStats:
    """Figures from webrtcbin's ``get-stats``, None where it reported none (yet): of the audio
    received (``jitter_ms``, ``packets_lost``, ``packets_received``, ``bytes_received``), of the
    audio sent (``packets_sent``, ``bytes_sent``), and what the remote end reports of it in its
    receiver reports (``rtt_ms``, ``remote_jitter_ms``, ``remote_packets_lost``), and whether the
    selected ICE candidate pair goes through a TURN relay (``relayed``)."""

    rtt_ms: float | None = None
    jitter_ms: float | None = None
    packets_lost: float | None = None
    packets_received: float | None = None
    bytes_received: float | None = None
    packets_sent: float | None = None
    bytes_sent: float | None = None
    remote_jitter_ms: float | None = None
    remote_packets_lost: float | None = None
    #: fraction (0..1) of our packets lost in the remote end's last receiver report interval
    remote_fraction_lost: float | None = None
    relayed: bool | None = None
    #: the encoder's settings now (``LossProtection``): None before the sender exists
    protection: Protection | None = None
    #: ms of received audio the decoder had to make up for lost packets (FEC or concealment), and
    #: ms of audio it decoded in all
    concealed_ms: float = 0.0
    decoded_ms: float = 0.0
    #: NACK/RTX so far (``Retransmissions``): None where neither end negotiated it
    retransmissions: Retransmissions | None = None
    #: RED packets received (webrtcbin's RED decoder counts them; 0: the remote end sends no RED),
    #: and lost packets rebuilt from the copies they carried (the decoder rebuilds a packet only
    #: when it is missing, and hands it on to the jitter buffer just before the packet it came in)
    red_packets: int = 0
    red_recovered: int = 0


@dataclass(frozen=True)
class Retransmissions:
    """NACK/RTX counters since the call began. Of the audio received: packets our jitter buffer
    asked again for (``requested``), how many came back in time (``recovered``) and those that came
    after their time was up (``late``); these stay 0, as our buffers no longer ask (see
    ``WebRtcPeer._never_request_retransmissions``). Of the audio sent: packets the remote end asked
    again for (``asked``) and those resent (``resent``; fewer when a packet was no longer kept, see
    ``_bound_retransmission``)."""

    requested: int = 0
    recovered: int = 0
    late: int = 0
    asked: int = 0
    resent: int = 0


# -- process-wide: the DTLS certificate and the pipeline count ---------------------------------------

_count_lock = threading.Lock()
_alive = 0


def _pipeline_finalised() -> None:
    global _alive  # noqa: PLW0603 - process-wide diagnostic counter
    with _count_lock:
        _alive -= 1


def _track(pipeline: Any) -> None:
    global _alive  # noqa: PLW0603 - process-wide diagnostic counter
    with _count_lock:
        _alive += 1
    # called from GObject's finalize, whichever thread drops the last reference
    pipeline.weak_ref(_pipeline_finalised)


def live_pipelines() -> int:
    """Peer pipelines created in this process that GStreamer has not finalised yet."""
    with _count_lock:
        return _alive


class _PortRanges:
    """Open peers per ICE port range, process-wide like the sockets they hold: a range of N ports
    carries N peers, and libnice, out of ports, silently gathers nothing (the call would hang)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[tuple[int, int], int] = {}

    def take(self, port_range: tuple[int, int], name: str) -> None:
        size = port_range[1] - port_range[0] + 1
        with self._lock:
            taken = self._open.get(port_range, 0)
            if taken >= size:
                raise MediaError(
                    f"{name}: every port of the ICE port range {port_range[0]}-{port_range[1]} is held "
                    f"by an open call ({size} ports, one per call): widen the range or lower max sessions"
                )
            self._open[port_range] = taken + 1

    def release(self, port_range: tuple[int, int]) -> None:
        with self._lock:
            self._open[port_range] -= 1

    def open_peers(self, port_range: tuple[int, int]) -> int:
        with self._lock:
            return self._open.get(port_range, 0)


_port_ranges = _PortRanges()


def peers_in_port_range(port_range: tuple[int, int]) -> int:
    """Open peers holding a port of ``port_range`` in this process."""
    return _port_ranges.open_peers(port_range)


@functools.cache
def _load_nice_typelib() -> bool:
    """Load libnice's GObject introspection data (whether it is installed). It must come before the
    first agent is handed to Python: PyGObject keeps the class it made for a type, and an agent wrapped
    without the typelib never gains ``NiceAgent.set_port_range``, also after it loads."""
    try:
        gi.require_version("Nice", "0.1")
        from gi.repository import Nice  # noqa: F401 - registers the NiceAgent class and its methods
    except (ImportError, ValueError):
        return False
    return True


def _require_nice_typelib() -> None:
    """libnice's introspection data, which ``NiceAgent.set_port_range`` needs from Python
    (webrtcbin's own ``min-rtp-port``/``max-rtp-port`` sit on its ``ice-agent``, which 1.22 hands
    out without a reference: reading it from Python frees the agent)."""
    if not _load_nice_typelib():
        raise MediaError(
            "an ICE port range needs libnice's introspection data: apt-get install gir1.2-nice-0.1"
        )


def prepare() -> None:
    """Check the elements and generate the process's DTLS certificate now (blocking, ~150 ms once),
    so that the first call does not wait for it."""
    require_elements(*_ELEMENTS)
    _load_nice_typelib()
    # the DTLS decoder generates the shared certificate when the first one is created
    make_element("dtlsdec")


# -- session descriptions ---------------------------------------------------------------------------


def _media_attributes(media: Any, key: str) -> list[str]:
    return [
        str(media.get_attribute_val_n(key, i))
        for i in range(64)
        if media.get_attribute_val_n(key, i) is not None
    ]


def _parse(sdp: object) -> Any:
    if not isinstance(sdp, str) or not sdp.strip():
        raise InvalidSdpError("the session description is missing or empty")
    if len(sdp) > MAX_SDP_CHARS:
        raise InvalidSdpError(f"the session description has {len(sdp)} characters; at most {MAX_SDP_CHARS}")
    if not sdp.lstrip().startswith("v=0"):
        raise InvalidSdpError("not a session description (SDP starts with 'v=0')")
    result, message = GstSdp.SDPMessage.new_from_text(sdp)
    if result != GstSdp.SDPResult.OK or message is None:
        raise InvalidSdpError(f"the session description does not parse ({result.value_nick})")
    return message


def opus_payload_type(sdp: object) -> int:
    """The Opus payload type of the first audio section of ``sdp``, after checking that the
    description can set up a call (ICE credentials, DTLS fingerprint). Raises InvalidSdpError."""
    message = _parse(sdp)
    session_ice = message.get_attribute_val("ice-ufrag") is not None
    session_fingerprint = message.get_attribute_val("fingerprint") is not None
    for index in range(message.medias_len()):
        media = message.get_media(index)
        if media.get_media() != "audio" or media.get_port() == 0:
            continue
        if not (session_ice or media.get_attribute_val("ice-ufrag") is not None):
            raise InvalidSdpError("the audio section has no ICE credentials (a=ice-ufrag)")
        if not (session_fingerprint or media.get_attribute_val("fingerprint") is not None):
            raise InvalidSdpError("the audio section has no DTLS fingerprint (a=fingerprint)")
        for rtpmap in _media_attributes(media, "rtpmap"):
            match = _RTPMAP.match(rtpmap)
            if match and 0 <= int(match.group(1)) <= 127:
                return int(match.group(1))
        raise InvalidSdpError("the audio section does not offer Opus (opus/48000)")
    raise InvalidSdpError("the session description has no active audio section")


# -- signal handlers: module functions holding the peer weakly ---------------------------------------

PeerRef = Callable[[], "WebRtcPeer | None"]


def _on_ice_candidate(_webrtc: Any, mline_index: int, candidate: str, ref: PeerRef) -> None:
    peer = ref()
    if peer is not None and not peer.closed:
        peer._local_candidate(int(mline_index), str(candidate))


def _on_state(webrtc: Any, pspec: Any, ref: PeerRef) -> None:
    peer = ref()
    if peer is None or peer.closed:
        return
    name = {
        "connection-state": "connection",
        "ice-connection-state": "ice",
        "ice-gathering-state": "gathering",
    }
    value = webrtc.get_property(pspec.name)
    peer._listener.on_state(name[pspec.name], str(value.value_nick))


def _on_element_added(_bin: Any, _parent: Any, element: Any, config: PeerConfig) -> None:
    """Configure libnice's agent as webrtcbin creates its ICE elements (before it gathers).

    The agent is reached through ``nicesrc``/``nicesink``: webrtcbin's own ``ice-agent`` property
    hands out a reference it does not own in 1.22 (reading it from Python frees the agent)."""
    factory = element.get_factory()
    _bound_retransmission(element, config)
    if factory is None or factory.get_name() not in ("nicesrc", "nicesink"):
        return
    _load_nice_typelib()  # before the agent is first wrapped (see there)
    agent = element.get_property("agent")
    if agent is None:
        return
    # no UPnP port mapping: it multicasts SSDP on the LAN, and a server has no router to ask
    agent.set_property("upnp", False)
    agent.set_property("ice-tcp", config.ice_tcp)
    tune_ice_agent(agent)
    if factory.get_name() == "nicesink":
        protect_flights(element, agent)  # the DTLS handshake under loss (see handshake_protection)
    if config.ice_port_range is not None:
        low, high = config.ice_port_range
        agent.set_port_range(element.get_property("stream"), element.get_property("component"), low, high)


def _bound_retransmission(element: Any, config: PeerConfig) -> None:
    """Keep packets for resending only as long as a receiver with a short jitter buffer could still
    use them: a retransmission later than that would only arrive to be dropped."""
    factory = element.get_factory()
    if factory is not None and factory.get_name() == "rtprtxsend":
        element.set_property("max-size-time", max(config.latency_ms, _RESEND_WINDOW_MS))


#: the flag webrtcbin's RED decoder puts on the packets it recovers: GST_RTP_BUFFER_FLAG_REDUNDANT,
#: GST_BUFFER_FLAG_LAST << 1 (ABI). Kept and applied as a plain int on the buffer's flags field:
#: making a ``Gst.BufferFlags`` of this value, which GstBufferFlags does not name, was followed by a
#: crash (SIGSEGV or SIGABRT) in the next torch.compile in the same process (test_seedvc_batching
#: after any in-process call), and ``has_flags``/``unset_flags`` take nothing else
_REDUNDANT = 1 << 21


def _elements(bin_: Any, factory_name: str) -> list[Any]:
    """The elements made by ``factory_name`` anywhere inside ``bin_``."""
    found: list[Any] = []
    iterator = bin_.iterate_recurse()
    while True:
        result, element = iterator.next()
        if result != Gst.IteratorResult.OK:
            return found
        factory = element.get_factory()
        if factory is not None and factory.get_name() == factory_name:
            found.append(element)


def _on_pad_added(_webrtc: Any, pad: Any, ref: PeerRef) -> None:
    peer = ref()
    # pad-added also fires for the sink pads we request
    if peer is not None and pad.get_direction() == Gst.PadDirection.SRC:
        peer._link_incoming(pad)


def _on_bus_error(_bus: Any, message: Any, ref: PeerRef) -> None:
    peer = ref()
    if peer is None or peer.closed:
        return
    err, debug = message.parse_error()
    source = message.src.get_name() if message.src is not None else "pipeline"
    log.warning("%s: %s from %s (%s)", peer.name, err.message, source, debug)
    peer._fail("media", f"media pipeline error in {source}: {err.message}")


def _on_depayloaded(_pad: Any, info: Any, ref: PeerRef) -> Any:
    """An Opus packet, or a GAP event (packets lost), out of the depayloader (its streaming thread):
    decoded here (``ReceivedOpus``) and handed to the listener; the fakesink behind gets nothing."""
    peer = ref()
    receiver = peer._receiver if peer is not None else None
    if receiver is None or peer is None:
        return Gst.PadProbeReturn.DROP
    if info.type & Gst.PadProbeType.BUFFER:
        buffer = info.get_buffer()
        if buffer is None:
            return Gst.PadProbeReturn.DROP
        ok, mapped = buffer.map(Gst.MapFlags.READ)
        if not ok:
            return Gst.PadProbeReturn.DROP
        try:
            packet = bytes(mapped.data)
        finally:
            buffer.unmap(mapped)
        if peer.config.count_received_fec:
            peer._count_received(packet[:2])
        try:
            _deliver_audio(peer, receiver.packet(packet))
        except Exception as exc:  # as a failing appsink handler did: the call fails, the server stays
            log.exception("%s: the incoming audio could not be decoded or handed on", peer.name)
            peer._fail("media", f"the incoming audio could not be decoded or handed on: {exc}")
            return Gst.PadProbeReturn.REMOVE
        return Gst.PadProbeReturn.DROP
    event = info.get_event()
    if event is not None and event.type == Gst.EventType.GAP:
        _timestamp, duration = event.parse_gap()
        if duration != Gst.CLOCK_TIME_NONE:
            receiver.lost(duration / Gst.SECOND)
        return Gst.PadProbeReturn.DROP
    return Gst.PadProbeReturn.OK


def _on_recovered_packet(_pad: Any, info: Any, ref: PeerRef) -> Any:
    """A packet out of webrtcbin's RED decoder: one recovered from a RED copy loses its REDUNDANT
    flag, so that it goes on to the jitter buffer (see ``WebRtcPeer._pass_red_copies_on``), and is
    counted (``PeerStats.red_recovered``)."""
    buffer = info.get_buffer()
    if buffer is not None and buffer.mini_object.flags & _REDUNDANT:
        buffer.mini_object.flags &= ~_REDUNDANT
        peer = ref()
        if peer is not None:
            peer._count_red_recovered()
    return Gst.PadProbeReturn.OK


def _deliver_audio(peer: WebRtcPeer, samples: Audio) -> None:
    if samples.shape[0] and not peer.closed:
        peer.bytes_decoded += samples.nbytes
        peer._listener.on_audio(samples)


def _promise_error(promise: Any, reply: Any) -> str | None:
    """Why a webrtcbin operation failed, or None. Called in the promise's change function, where
    ``wait`` returns at once. Success may reply with no structure; failure puts an ``error`` in it."""
    result = promise.wait()
    if result != Gst.PromiseResult.REPLIED:
        return f"operation {result.value_nick}"
    if reply is not None and reply.has_field("error"):
        error = reply.get_value("error")
        return str(getattr(error, "message", error))
    return None


# -- the peer ----------------------------------------------------------------------------------------


class WebRtcPeer:
    """One webrtcbin call carrying Opus audio both ways. See the module docstring."""

    def __init__(
        self, listener: PeerListener, config: PeerConfig | None = None, *, name: str | None = None
    ) -> None:
        ensure_gst()
        self._glib = GLibLoop.shared()  # runs the bus watch
        self.config = config or PeerConfig()
        self.name = name or f"webrtc-peer-{next(_peer_ids)}"
        self._listener = listener
        self._lock = threading.Lock()
        #: held across negotiation steps and ``close``: a pipeline is never started after its close
        self._control = threading.Lock()
        self._closed = False
        self._failed = False
        self._started = False
        #: local candidates gathered before our description was handed on (None once it was)
        self._held_candidates: list[tuple[int, str]] | None = []
        #: bytes of decoded audio handed to the listener
        self.bytes_decoded = 0
        #: received Opus packets, and those carrying FEC (with ``config.count_received_fec``)
        self._received_packets = 0
        self._received_fec_packets = 0
        #: lost packets rebuilt from RED copies (``PeerStats.red_recovered``)
        self._red_recovered = 0
        self._protection: LossProtection | None = None
        self._encoder: Any = None
        self._red_encoder: Any = None  # webrtcbin's rtpredenc, found once negotiated
        self._red_decoders: list[Any] = []  # webrtcbin's rtpreddec, found when the audio arrives
        #: NACK/RTX negotiated: the receiving jitter buffer asks for retransmissions
        self._nack = False
        ref: PeerRef = weakref.ref(self)
        self._handlers: list[tuple[Any, int]] = []
        self._pipeline: Any = None
        self._bus: Any = None
        self._source: AudioSource | None = None
        #: decodes the incoming stream (made when it arrives)
        self._receiver: ReceivedOpus | None = None
        #: the port range this peer holds a place in until it is closed
        self._port_range: tuple[int, int] | None = None
        if self.config.ice_port_range is not None:
            _require_nice_typelib()
        # the element is configured before the pipeline exists: a refused setting leaves nothing
        self._webrtc: Any = make_element(
            "webrtcbin",
            "webrtc",
            bundle_policy=GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE,
            latency=self.config.latency_ms,
        )
        if self.config.stun_server:
            self._webrtc.set_property("stun-server", self.config.stun_server)
        if self.config.relay_only:
            self._webrtc.set_property("ice-transport-policy", GstWebRTC.WebRTCICETransportPolicy.RELAY)
        for turn in self.config.turn_servers:
            if not self._webrtc.emit("add-turn-server", turn):
                self._closed = True
                raise MediaError(f"webrtcbin refused the TURN server {_hide_password(turn)}")
        if self.config.ice_port_range is not None:
            try:
                _port_ranges.take(self.config.ice_port_range, self.name)
            except MediaError:
                self._closed = True  # nothing was started
                raise
            self._port_range = self.config.ice_port_range
        self._pipeline = Gst.Pipeline.new(self.name)
        _track(self._pipeline)
        self._pipeline.add(self._webrtc)
        self._handlers += [
            (self._pipeline, self._pipeline.connect("deep-element-added", _on_element_added, self.config)),
            (self._webrtc, self._webrtc.connect("on-ice-candidate", _on_ice_candidate, ref)),
            (self._webrtc, self._webrtc.connect("pad-added", _on_pad_added, ref)),
        ]
        for prop in ("connection-state", "ice-connection-state", "ice-gathering-state"):
            self._handlers.append((self._webrtc, self._webrtc.connect(f"notify::{prop}", _on_state, ref)))
        self._bus = self._pipeline.get_bus()
        self._bus.add_signal_watch()
        self._handlers.append((self._bus, self._bus.connect("message::error", _on_bus_error, ref)))

    # -- state ------------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def _fail(self, kind: str, message: str) -> None:
        with self._lock:
            if self._failed or self._closed:
                return
            self._failed = True
        self._listener.on_error(kind, message)

    # -- negotiation ------------------------------------------------------------------------------

    def _description_ready(self, kind: str, text: str) -> None:
        with self._lock:
            held, self._held_candidates = self._held_candidates, None
        announced = self.config.announced_address
        self._listener.on_description(kind, text if announced is None else announce_in_sdp(text, announced))
        for mline_index, candidate in held or ():
            self._listener.on_ice_candidate(mline_index, candidate)

    def _local_candidate(self, mline_index: int, gathered: str) -> None:
        announced = self.config.announced_address
        candidate = gathered if announced is None else announce_candidate(gathered, announced)
        if candidate is None:
            return
        with self._lock:
            if self._held_candidates is not None:
                # the remote end cannot use a candidate before the description it belongs to
                self._held_candidates.append((mline_index, candidate))
                return
        self._listener.on_ice_candidate(mline_index, candidate)

    def _release_port(self) -> None:
        port_range, self._port_range = self._port_range, None
        if port_range is not None:
            _port_ranges.release(port_range)

    def answer(self, offer_sdp: str) -> None:
        """Answer a remote offer; the answer arrives at ``listener.on_description("answer", ...)``.
        Raises InvalidSdpError for an offer that cannot set up an Opus call (nothing started then)."""
        payload_type = opus_payload_type(offer_sdp)
        wanted = opus_features(offer_sdp, payload_type)
        description = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.OFFER, _parse(offer_sdp))
        with self._control:
            self._start(wanted)
            promise = Gst.Promise.new_with_change_func(_remote_set_then_answer, weakref.ref(self))
            self._webrtc.emit("set-remote-description", description, promise)

    def offer(self, payload_type: int = DEFAULT_PAYLOAD_TYPE) -> None:
        """Create an offer (sendrecv Opus); it arrives at ``listener.on_description("offer", ...)``."""
        # browsers send FEC from their first packet when they offer it; so does this end
        features = OpusFeatures(payload_type, inband_fec=self.config.inband_fec, nack=self.config.nack)
        with self._control:
            self._start(features)
            promise = Gst.Promise.new_with_change_func(_description_created, weakref.ref(self), "offer")
            self._webrtc.emit("create-offer", None, promise)

    def accept_answer(self, answer_sdp: str) -> None:
        """Set the remote end's answer to our ``offer``. Raises InvalidSdpError."""
        opus_payload_type(answer_sdp)
        description = GstWebRTC.WebRTCSessionDescription.new(
            GstWebRTC.WebRTCSDPType.ANSWER, _parse(answer_sdp)
        )
        promise = Gst.Promise.new_with_change_func(
            _operation_done, weakref.ref(self), "set-remote-description"
        )
        with self._control:
            if self._closed:
                return
            self._webrtc.emit("set-remote-description", description, promise)

    def add_ice_candidate(self, mline_index: int, candidate: str) -> None:
        """A remote ICE candidate (``candidate:...`` line). webrtcbin keeps candidates that arrive
        before the remote description and applies them once it is set."""
        webrtc = self._webrtc
        if webrtc is not None and not self._closed:
            webrtc.emit("add-ice-candidate", int(mline_index), candidate)

    def _start(self, features: OpusFeatures) -> None:
        with self._lock:
            if self._closed:
                raise MediaError(f"{self.name} is closed")
            if self._started:
                raise MediaError(f"{self.name} has already negotiated (one offer/answer per peer)")
            self._started = True
        self._add_sender(features)
        if self._pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            raise MediaError(f"{self.name}: the WebRTC pipeline could not start")

    def _add_sender(self, features: OpusFeatures) -> None:
        payload_type = features.payload_type
        self._source = AudioSource(
            self.config.audio_rate,
            1,
            name="send",
            live=True,
            max_queue_s=self.config.max_send_queue_s,
            max_ahead_s=self.config.max_send_ahead_s,
        )
        convert = make_element("audioconvert")
        resample = make_element("audioresample")
        self._protection = LossProtection(self.config.bitrate, self.config.inband_fec and features.inband_fec)
        protection = self._protection.current()
        # voice, 20 ms frames: what browsers send too. "voice" (not restricted-lowdelay, where Opus
        # has no SILK layer and so no FEC) lets libopus keep speech in SILK/hybrid mode
        encoder = make_element(
            "opusenc",
            bitrate=protection.bitrate,
            frame_size=20,
            complexity=self.config.complexity,
            inband_fec=protection.inband_fec,
            packet_loss_percentage=protection.packet_loss_pct,
        )
        encoder.set_property("audio-type", "voice")
        self._encoder = encoder
        payloader = make_element("rtpopuspay", pt=payload_type)
        # caps fields webrtcbin does not know become the description's fmtp: useinbandfec=1 tells
        # the remote end that our decoder uses FEC (``ReceivedOpus``), so it should send it
        fmtp = ",useinbandfec=(string)1" if self.config.inband_fec else ""
        caps = make_element(
            "capsfilter",
            caps=Gst.Caps.from_string(
                "application/x-rtp,media=audio,encoding-name=OPUS,clock-rate=48000,"
                f"payload={payload_type}{fmtp}"
            ),
        )
        chain = (self._source.element, convert, resample, encoder, payloader, caps)
        for element in chain:
            self._pipeline.add(element)
        link_many(*chain)
        sink_pad = self._webrtc.request_pad_simple("sink_%u")
        if caps.get_static_pad("src").link(sink_pad) != Gst.PadLinkReturn.OK:
            raise MediaError(f"{self.name}: could not link the Opus sender to webrtcbin")
        transceiver = sink_pad.get_property("transceiver")
        transceiver.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDRECV)
        # set before negotiation: webrtcbin creates the receiving jitter buffer with retransmission
        # requests only then (an answerer left to follow the offer resends but never asks)
        self._nack = self.config.nack and features.nack
        transceiver.set_property("do-nack", self._nack)
        if self.config.red_distance > 0:
            # RED offered and answered (webrtcbin adds its encoder on the way out and its decoder
            # before the jitter buffer); the ULPFEC it offers with it is left out of the descriptions
            # (``red_first``) and makes no packets
            transceiver.set_property("fec-type", GstWebRTC.WebRTCFECType.ULP_RED)
            transceiver.set_property("fec-percentage", 0)

    def _link_incoming(self, pad: Any) -> None:
        """Decode a new incoming stream (webrtcbin's streaming thread)."""
        caps = pad.get_current_caps() or pad.query_caps(None)
        structure = caps.get_structure(0) if caps is not None and caps.get_size() else None
        encoding = str(structure.get_value("encoding-name") or "") if structure is not None else ""
        ours = encoding.upper() == "OPUS"
        with self._lock:
            closed, taken = self._closed, self._receiver is not None
            if ours and not closed and not taken:
                self._receiver = ReceivedOpus(self.config.audio_rate)
        if closed:
            return
        if not ours or taken:
            # not ours to decode (another kind of media, a second stream): discard it
            sink = make_element("fakesink", sync=False, async_=False)
            self._pipeline.add(sink)
            sink.sync_state_with_parent()
            pad.link(sink.get_static_pad("sink"))
            log.info("%s: discarding an incoming %s stream", self.name, encoding or "unknown")
            return
        # decoded in a probe on the depayloader's output (``_on_depayloaded``, ``ReceivedOpus``): each
        # packet at once, the FEC only after a loss; ``opusdec`` would hold every frame back 20 ms
        depay = make_element("rtpopusdepay")
        sink = make_element("fakesink", sync=False, async_=False)
        probed = Gst.PadProbeType.BUFFER | Gst.PadProbeType.EVENT_DOWNSTREAM
        depay.get_static_pad("src").add_probe(probed, _on_depayloaded, weakref.ref(self))
        for element in (depay, sink):
            self._pipeline.add(element)
        link_many(depay, sink)
        for element in (sink, depay):
            element.sync_state_with_parent()
        if pad.link(depay.get_static_pad("sink")) != Gst.PadLinkReturn.OK:
            self._fail("media", "the incoming audio could not be linked to the Opus decoder")
        self._never_request_retransmissions()
        self._pass_red_copies_on()
        if self._protection is not None:  # negotiated by now: redundancy from the start (see there)
            self._set_redundancy(self._protection.current().redundancy)

    def _never_request_retransmissions(self) -> None:
        """Our jitter buffers never send NACKs (webrtcbin 1.22 turns them on for the offering end).
        Asking recovered little: GStreamer's RTP session sends a NACK only in an early RTCP packet, at
        most one per RTCP interval (10 % loss each way, 20 s calls: 245 requests made, 33 reached the
        server, 15 of ~100 lost packets came back in time). And while it asks, the buffer gives a
        packet up only when its retry period (its latency) has passed since the packet was due:
        when a frame and the next are lost, that is the moment RED's copy of the first arrives, so
        the copy often came too late (10 % loss each way, 40 ms buffer: frames too quiet over 1 %
        in 4 of 9 calls asking, 0 of 4 not asking). Without asking, the gap is seen only when the
        next packet arrives, and RED's copy is handed to the buffer just before that packet."""
        for element in _elements(self._webrtc, "rtpjitterbuffer"):
            element.set_property("do-retransmission", False)

    def _pass_red_copies_on(self) -> None:
        """Let the frames recovered from RED reach the jitter buffer. webrtcbin's RED decoder flags
        each one REDUNDANT, and the ``rtpstorage`` behind it keeps such packets back for its ULPFEC
        decoder to fetch when the jitter buffer declares one lost; but webrtcbin sets that decoder to
        pass everything through where ULPFEC was not negotiated (we never answer it, see
        ``red_first``), so no copy was ever used (debug log: "Recovering from RED packet ... seq=N",
        then "Packet #N lost" when N+1 arrived). Unflagged, a copy is an ordinary packet: it
        arrives with the packet after the lost one, just before it, and fills the gap."""
        # a weak reference, as for the depayloader: the pipeline must not keep its peer alive
        ref = weakref.ref(self)
        self._red_decoders = _elements(self._webrtc, "rtpreddec")
        for decoder in self._red_decoders:
            decoder.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, _on_recovered_packet, ref)

    # -- media ------------------------------------------------------------------------------------

    def push(self, samples: Audio) -> bool:
        """Send mono float32 audio at ``config.audio_rate`` (any thread). False once the peer is closed
        or not started."""
        source = self._source
        if source is None or self._closed:
            return False
        return source.push(samples)

    def _count_red_recovered(self) -> None:
        with self._lock:
            self._red_recovered += 1

    def _count_received(self, header: bytes) -> None:
        with self._lock:
            self._received_packets += 1
            self._received_fec_packets += carries_fec(header)

    @property
    def received_fec(self) -> tuple[int, int]:
        """(Opus packets received, of which carrying FEC); only counted with
        ``PeerConfig.count_received_fec``."""
        with self._lock:
            return self._received_packets, self._received_fec_packets

    @property
    def red_received(self) -> int:
        """RED packets received so far (webrtcbin's RED decoder's count; 0 before any, or closed)."""
        if self._closed:
            return 0
        return sum(int(decoder.get_property("received")) for decoder in self._red_decoders)

    def _protect(self, fraction_lost: float | None) -> Protection | None:
        """Apply the encoder settings for the loss the remote end reported (opusenc takes
        ``packet-loss-percentage`` and ``bitrate`` while PLAYING)."""
        protection, encoder = self._protection, self._encoder
        if protection is None or encoder is None:
            return None
        if fraction_lost is None:
            return protection.current()
        settings = protection.report(fraction_lost)
        self._set_redundancy(settings.redundancy)
        if encoder.get_property("packet-loss-percentage") != settings.packet_loss_pct:
            encoder.set_property("packet-loss-percentage", settings.packet_loss_pct)
        if encoder.get_property("bitrate") != settings.bitrate:
            encoder.set_property("bitrate", settings.bitrate)
        return settings

    def _set_redundancy(self, on: bool) -> None:
        """RED packets with or without an older frame (webrtcbin's ``rtpredenc`` takes ``distance``
        while PLAYING). webrtcbin gives its encoder the RED payload type once RED is negotiated, and
        payload type 0 where it is not: it must then pass Opus through untouched (distance 0), or
        it would wrap it in packets of payload type 0 (PCMU) that the remote end cannot decode."""
        if self._red_encoder is None and self.config.red_distance > 0 and self._webrtc is not None:
            self._red_encoder = next(iter(_elements(self._webrtc, "rtpredenc")), None)
        if self._red_encoder is not None:
            negotiated = self._red_encoder.get_property("pt") > 0
            distance = self.config.red_distance if on and negotiated else 0
            if self._red_encoder.get_property("distance") != distance:
                self._red_encoder.set_property("distance", distance)

    @property
    def samples_sent(self) -> int:
        source = self._source
        return source.samples_pushed if source is not None else 0

    def stats(self, timeout_s: float = 1.0) -> PeerStats:
        """webrtcbin's figures (``PeerStats``); all None if it does not answer within ``timeout_s``
        or the peer is closed. Each reading also adapts the encoder's FEC to the loss the remote
        end reported (``LossProtection``): whoever polls the statistics drives the adaptation."""
        webrtc = self._webrtc
        if webrtc is None or self._closed or not self._started:
            return PeerStats()
        done = threading.Event()
        found: dict[str, list[Figures]] = {}
        ice = _IceStats()
        promise = Gst.Promise.new_with_change_func(_stats_ready, done, found, ice)
        webrtc.emit("get-stats", None, promise)
        if not done.wait(timeout_s):
            promise.interrupt()
            return PeerStats()
        figures = _chosen_figures(found)
        decoded_ms = 1000 * self.bytes_decoded / 4 / self.config.audio_rate  # float32 mono
        return PeerStats(
            **figures,
            retransmissions=self._retransmissions(webrtc) if self._nack else None,
            relayed=ice.relayed(),
            protection=self._protect(figures.get("remote_fraction_lost")),
            concealed_ms=1000 * receiver.concealed_s if (receiver := self._receiver) else 0.0,
            decoded_ms=decoded_ms,
            red_packets=self.red_received,
            red_recovered=self._red_recovered,
        )

    @staticmethod
    def _retransmissions(webrtc: Any) -> Retransmissions:
        """Counters from the elements webrtcbin made for NACK/RTX (its own stats have none)."""
        counts = dict.fromkeys(("requested", "recovered", "late", "asked", "resent"), 0)
        iterator = webrtc.iterate_recurse()
        while True:
            result, element = iterator.next()
            if result != Gst.IteratorResult.OK:
                break
            factory = element.get_factory()
            name = factory.get_name() if factory is not None else ""
            if name == "rtpjitterbuffer":
                figures = element.get_property("stats")
                counts["requested"] += int(figures.get_value("rtx-count") or 0)
                counts["recovered"] += int(figures.get_value("rtx-success-count") or 0)
                counts["late"] += int(figures.get_value("num-late") or 0)
            elif name == "rtprtxsend":
                counts["asked"] += int(element.get_property("num-rtx-requests"))
                counts["resent"] += int(element.get_property("num-rtx-packets"))
        return Retransmissions(**counts)

    # -- teardown ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the pipeline and release everything (idempotent; blocks until GStreamer's threads
        for this peer have stopped, so not on an event loop)."""
        with self._control:
            with self._lock:
                if self._closed:
                    return
                self._closed = True
            for obj, handler in self._handlers:
                obj.disconnect(handler)
            self._handlers.clear()
            if self._bus is not None:
                self._bus.remove_signal_watch()
            if self._pipeline is not None:
                self._pipeline.set_state(Gst.State.NULL)
            self._pipeline = self._webrtc = self._bus = self._encoder = self._red_encoder = None
            self._source = None
            self._red_decoders = []
            if self._receiver is not None:  # its streaming thread has stopped with the pipeline
                self._receiver.close()
            self._release_port()  # the pipeline is down: its sockets are closed

    def __del__(self) -> None:
        # only a report: closing blocks on GStreamer's threads, and the collector may run anywhere
        if not getattr(self, "_closed", True):
            log.warning("%s was not closed: its owner leaks a pipeline", getattr(self, "name", "webrtc peer"))


# -- promise callbacks (webrtcbin's thread) ----------------------------------------------------------


def _settle(promise: Any, ref: PeerRef, failure: str) -> tuple[WebRtcPeer, Any] | None:
    """What every promise callback does first: the peer and the reply, or None when the peer is gone
    or closed, or when the operation failed (then the peer fails with ``failure: <why>``)."""
    reply = promise.get_reply()  # kept in a variable: chaining get_value on it crashes PyGObject
    peer = ref()
    if peer is None or peer.closed:
        return None
    error = _promise_error(promise, reply)
    if error is not None:
        peer._fail("negotiation", f"{failure}: {error}")
        return None
    return peer, reply


def _remote_set_then_answer(promise: Any, ref: PeerRef) -> None:
    settled = _settle(promise, ref, "the offer was refused")
    if settled is not None:
        answer = Gst.Promise.new_with_change_func(_description_created, ref, "answer")
        settled[0]._webrtc.emit("create-answer", None, answer)


def _description_created(promise: Any, ref: PeerRef, kind: str) -> None:
    failure = f"creating the {kind} failed"
    settled = _settle(promise, ref, failure)
    if settled is None:
        return
    peer, reply = settled
    if reply is None or not reply.has_field(kind):
        peer._fail("negotiation", f"{failure}: webrtcbin created no {kind}")
        return
    description = reply.get_value(kind)
    text = description.sdp.as_text()
    ready = red_first(text)  # RED before Opus for browsers, and no ULPFEC (see there)
    if kind == "answer":  # the last handshake flight ours, sent in copies (see handshake_protection)
        ready = answer_as_dtls_server(ready, peer._webrtc.get_property("remote-description").sdp.as_text())
    if ready != text:
        text, description = ready, GstWebRTC.WebRTCSessionDescription.new(description.type, _parse(ready))
    # handed on once it is set: the other end's reply can then never arrive before it is in place
    done = Gst.Promise.new_with_change_func(_local_description_set, ref, kind, text)
    peer._webrtc.emit("set-local-description", description, done)


def _local_description_set(promise: Any, ref: PeerRef, kind: str, text: str) -> None:
    settled = _settle(promise, ref, f"setting the local {kind} failed")
    if settled is not None:
        settled[0]._description_ready(kind, text)


def _operation_done(promise: Any, ref: PeerRef, operation: str) -> None:
    if promise.wait() == Gst.PromiseResult.REPLIED:  # not interrupted or expired at shutdown
        _settle(promise, ref, f"{operation} failed")


_STATS_FIELDS: dict[str, dict[str, tuple[str, float]]] = {
    # stats type -> field -> (PeerStats field, scale)
    "inbound-rtp": {
        "jitter": ("jitter_ms", 1000.0),
        "packets-lost": ("packets_lost", 1.0),
        "packets-received": ("packets_received", 1.0),
        "bytes-received": ("bytes_received", 1.0),
    },
    "outbound-rtp": {"packets-sent": ("packets_sent", 1.0), "bytes-sent": ("bytes_sent", 1.0)},
    "remote-inbound-rtp": {
        "round-trip-time": ("rtt_ms", 1000.0),
        "jitter": ("remote_jitter_ms", 1000.0),
        "packets-lost": ("remote_packets_lost", 1.0),
    },
}
#: the stream of each type that counts when there are several (RTX travels on an SSRC of its own)
_BUSIEST_BY = {"inbound-rtp": "packets_received", "outbound-rtp": "packets_sent"}

#: one stats structure's figures, by PeerStats field, plus its ``ssrc``
Figures = dict[str, float]


def _figure(name: str, figures: Figures) -> float:
    return figures.get(name, -1.0)


def _chosen_figures(found: dict[str, list[Figures]]) -> dict[str, float]:
    """One audio stream each way: the busiest inbound and outbound streams (not their RTX streams),
    and the receiver report about the outbound one."""
    chosen: dict[str, float] = {}
    for kind, busiest in _BUSIEST_BY.items():
        streams = sorted(found.get(kind, []), key=functools.partial(_figure, busiest))
        if streams:
            chosen.update(streams[-1])
    reports = found.get("remote-inbound-rtp", [])
    about_ours = [r for r in reports if r.get("ssrc") == chosen.get("ssrc")] or reports
    if about_ours:
        chosen.update(about_ours[0])
    chosen.pop("ssrc", None)
    return chosen


@dataclass
class _IceStats:
    """The ICE part of a ``get-stats`` reply: which candidate pair the transport selected, and the
    types of the candidates. (1.22 swaps local and remote in the candidates' stats types; the pair's
    ids still name the right structures, so both ends are looked up by id alone.)"""

    selected: list[str] = field(default_factory=list)
    pairs: dict[str, tuple[str, str]] = field(default_factory=dict)
    candidate_types: dict[str, str] = field(default_factory=dict)

    def add(self, kind: str, stat: Any) -> None:
        def text(key: str) -> str:
            return str(stat.get_value(key)) if stat.has_field(key) else ""

        if kind == "transport" and text("selected-candidate-pair-id"):
            self.selected.append(text("selected-candidate-pair-id"))
        elif kind == "candidate-pair":
            self.pairs[text("id")] = (text("local-candidate-id"), text("remote-candidate-id"))
        elif kind in ("local-candidate", "remote-candidate"):
            self.candidate_types[text("id")] = text("candidate-type")

    def relayed(self) -> bool | None:
        """Whether a selected pair has a relay candidate at either end; None before ICE selected one."""
        ends = [end for pair in self.selected for end in self.pairs.get(pair, ())]
        if not ends:
            return None
        return any(self.candidate_types.get(end) == "relay" for end in ends)


def _stats_ready(
    promise: Any, done: threading.Event, found: dict[str, list[Figures]], ice: _IceStats
) -> None:
    try:
        reply = promise.get_reply()  # kept in a variable: chaining get_value on it crashes PyGObject
        if reply is not None:
            reply.foreach(_collect_stat, (found, ice))
    except Exception:  # a stats reply we cannot read must not break the call
        log.exception("reading webrtcbin statistics failed")
    finally:
        done.set()


def _number(structure: Any, key: str) -> float | None:
    if not structure.has_field(key):
        return None
    value = structure.get_value(key)
    return float(value) if isinstance(value, int | float) else None


def _source_stats(value: Any) -> Any:
    """The RTP session's own figures of the source a stats structure is about (or None)."""
    source = value.get_value("gst-rtpsource-stats") if value.has_field("gst-rtpsource-stats") else None
    return source if isinstance(source, Gst.Structure) else None


def _report_block_jitter_ms(value: Any) -> float | None:
    """The jitter of a receiver report as the RTP session holds it (``rb-jitter``, in RTP clock
    units): 1.22 leaves ``jitter`` out of ``remote-inbound-rtp`` with some remote ends."""
    source = _source_stats(value)
    if source is None:
        return None
    jitter, clock_rate = _number(source, "rb-jitter"), _number(source, "clock-rate")
    if jitter is None or not clock_rate or not _number(source, "have-rb"):
        return None
    return 1000.0 * jitter / clock_rate


def _report_block_fraction_lost(value: Any, ssrc: float | None) -> float | None:
    """The fraction lost of the receiver report block about ``ssrc`` (``rb-fractionlost``, 1/256ths).
    1.22's own ``fraction-lost`` of ``remote-inbound-rtp`` was seen at 0 while the same reports'
    cumulative loss grew by 20% of the packets sent, and at 33% while it grew by one packet."""
    source = _source_stats(value)
    if source is None or ssrc is None or not _number(source, "have-rb"):
        return None
    if _number(source, "rb-ssrc") != ssrc:
        return None
    fraction = _number(source, "rb-fractionlost")
    return None if fraction is None else fraction / 256.0


def _collect_stat(_field: int, value: Any, into: tuple[dict[str, list[Figures]], _IceStats]) -> bool:
    if not isinstance(value, Gst.Structure):
        return True
    found, ice = into
    kind = str(getattr(value.get_value("type"), "value_nick", ""))
    ice.add(kind, value)
    wanted = _STATS_FIELDS.get(kind)
    if not wanted:
        return True
    figures: Figures = {}
    for key, (name, scale) in wanted.items():
        number = _number(value, key)
        if number is not None:
            figures[name] = number * scale
    ssrc = _number(value, "ssrc")
    if ssrc is not None:
        figures["ssrc"] = ssrc
    if kind == "inbound-rtp":
        # the packets the network lost: the RTP session counts them (expected - received). 1.22's
        # own inbound-rtp figure, where it gives one, is the jitter buffer's, after RED rebuilt
        # what it could (a Chromium call at 10 % loss: 12 there, 125 in the session, 96 rebuilt)
        source = _source_stats(value)
        lost = _number(source, "packets-lost") if source is not None else None
        if lost is not None:
            figures["packets_lost"] = lost
    if kind == "remote-inbound-rtp":
        if "remote_jitter_ms" not in figures:
            jitter_ms = _report_block_jitter_ms(value)
            if jitter_ms is not None:
                figures["remote_jitter_ms"] = jitter_ms
        fraction = _report_block_fraction_lost(value, ssrc)
        if fraction is not None:
            figures["remote_fraction_lost"] = fraction
    found.setdefault(kind, []).append(figures)
    return True


def _hide_password(uri: str) -> str:
    return re.sub(r"(://[^:@/]*:)[^@/]*@", r"\1***@", uri)
