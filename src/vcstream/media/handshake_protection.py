"""webrtcbin's connection set-up (ICE checks, DTLS handshake) made to survive packet loss.

Why a WebRTC call took seconds to connect on a lossy link (measured: 0.5-7 s at 10 % loss): the DTLS
elements of GStreamer 1.22 run OpenSSL with its default retransmission timer (1 s, doubling: no
``DTLS_set_timer_cb``), so every handshake flight that loses one datagram costs at least a second,
and a flight is several datagrams (one per handshake record). Python cannot reach OpenSSL's timer
inside the elements; what it can do is make a lost datagram rare: every DTLS handshake datagram
webrtcbin sends leaves ``HANDSHAKE_COPIES`` times (a duplicate record is discarded by the receiver:
DTLS numbers its handshake messages and records). At 10 % loss a datagram is then lost with 0.1 %
instead of 10 %, and a five-datagram flight with 0.5 % instead of 41 %. It costs a few kilobytes
per call, once; the copying stops at the first SRTP packet.

A flight written before ICE has a pair to send on waits for one (``_FlightSender``): ``nicesink``
drops it otherwise, and OpenSSL sends it again only a second later. The answering server is ready
when the caller's nominating check reaches it and starts the handshake at once; the caller is ready
when the answer to that check comes back, so a lost answer used to cost a second (3 of 40 calls at
10 % loss each way: 1.10-1.14 s; none of 60 with the hold, which sends the reply when the caller's
retried check is answered, 0.5 s later).

ICE: libnice gives up on a candidate pair after 3 retransmissions of its check; at 10 % loss each
way a call in three to six failed ICE outright. 7 here (``tune_ice_agent``). The retransmission
timer of a connectivity check cannot be shortened: libnice 0.1.21 computes it from its pacing timer
with a floor of 500 ms (``priv_compute_conncheck_timer``; its debug log says "timer set to 500ms"),
doubling at each try, and ``stun-initial-timeout`` reaches only the STUN/TURN requests of gathering.
webrtcbin 1.22 makes its agents nominate the regular way (``NICE_AGENT_OPTION_REGULAR_NOMINATION``,
a construct-only setting): the controlling caller nominates with a check of its own once a pair
works, one more exchange on those timers. So when a check or its answer is lost, ICE takes 0.5 s
longer (measured at 10 % loss each way: 14 of 60 calls connected in 0.60-0.70 s, 45 in
0.09-0.17 s), 1.5 s when it happens twice in a row (1.65 s in one of those 60). A browser as the
caller retries its checks far sooner than libnice does (its calls connected in 0.26-1.32 s at that
loss).

The DTLS roles (``answer_as_dtls_server``): webrtcbin answers an offer that leaves the role open
(``a=setup:actpass``, as browsers offer) with ``active``, the DTLS client, whose handshake ends with
the caller's last flight (ChangeCipherSpec, Finished). The caller is connected once it has sent it;
the server only once that flight arrives, and when it is lost the server's OpenSSL sends its own
again after 1 s, then 2 s (a Chromium call at 10 % loss each way: connected at 0.12 s at the
caller, at 3.11 s at the server, first audio after 3.27 s). Answered ``passive``, the server is the
DTLS server: the last flight is its own and leaves in copies, and the caller's flights are sent
again on the caller's timer, not OpenSSL's default one (libwebrtc starts at 50 ms when it knows the
round trip).

The certificate (why this module's name, and no code for it): the elements already share one
certificate per process (``prepare()`` makes it ahead of the first call), and a certificate set
through ``dtlsdec``'s ``pem`` at ``deep-element-added`` comes too late in 1.22: the DTLS transport
creates its connection, with the default certificate, when it is constructed, before its elements
join the pipeline (checked: the SDP fingerprint stays the default one). An ECDSA certificate would
not shorten a flight anyway: each handshake record is a datagram of its own, whatever the key.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

from vcstream.media.gst import Gst

__all__ = [
    "HANDSHAKE_COPIES",
    "PROTECTION_VARIABLE",
    "answer_as_dtls_server",
    "protect_flights",
    "protected",
    "tune_ice_agent",
]

#: times each DTLS handshake datagram is sent (1 = once, as webrtcbin alone does)
HANDSHAKE_COPIES = 3
#: set to 0, webrtcbin's own handshake (one copy, libnice's check timers): what
#: scripts/webrtc-loss-table.sh measures as "before"
PROTECTION_VARIABLE = "VCSTREAM_WEBRTC_HANDSHAKE_PROTECTION"
#: DTLS record content types (RFC 6347): change_cipher_spec and handshake are what a flight holds
_DTLS_FLIGHT_TYPES = (20, 22)
#: RFC 7983: a first byte in 128-191 is RTP/RTCP (SRTP here): the handshake is over
_RTP_FIRST_BYTES = range(128, 192)
_copying = threading.local()


def _is_flight_datagram(buffer: Any) -> bool | None:
    """True for a DTLS handshake datagram, False for anything else, None for SRTP (handshake over)."""
    ok, info = buffer.map(Gst.MapFlags.READ)
    if not ok:
        return False
    try:
        first = info.data[0] if info.size else 0
    finally:
        buffer.unmap(info)
    if first in _RTP_FIRST_BYTES:
        return None
    return first in _DTLS_FLIGHT_TYPES


def protected() -> bool:
    """Whether the handshake is protected (``VCSTREAM_WEBRTC_HANDSHAKE_PROTECTION`` is not ``0``)."""
    return os.environ.get(PROTECTION_VARIABLE, "1").strip() != "0"


#: libnice's component states in which it has a pair to send on (NiceComponentState)
_CONNECTED, _READY = 3, 4


class _FlightSender:
    """The DTLS handshake datagrams written to one ICE sink (``nicesink``): each leaves
    ``copies`` times, and one written before ICE has selected a pair to send on waits for that pair.

    Why the wait: nicesink drops what it is given before then, and either side can be there. The
    answering server is connected as soon as the caller's nominating check reaches it, and starts
    the handshake; the caller is connected only when the answer to that check comes back. When the
    answer is lost, the caller's reply to the first flight was dropped, and the server's OpenSSL
    sent its flight again a second later (measured: 3 of 40 calls at 10 % loss took 1.10-1.14 s
    instead of 0.6 s). Held, the reply leaves the moment the caller's retried check is answered."""

    def __init__(self, sink: Any, agent: Any, copies: int) -> None:
        self._pad = sink.get_static_pad("sink")
        self._where = (sink.get_property("stream"), sink.get_property("component"))
        self._copies = copies
        self._lock = threading.Lock()
        self._held: list[Any] = []
        # the agent is not kept: it holds this handler, which would keep it alive
        self._handler = agent.connect("component-state-changed", self._on_state)
        # without libnice's introspection data (scripts/setup.sh installs it) the state is not known
        state = agent.get_component_state(*self._where) if hasattr(agent, "get_component_state") else _READY
        self._open = int(state) in (_CONNECTED, _READY)
        self._pad.add_probe(Gst.PadProbeType.BUFFER, self._on_buffer)

    def _on_buffer(self, pad: Any, info: Any) -> Any:
        if getattr(_copying, "active", False):
            return Gst.PadProbeReturn.OK
        buffer = info.get_buffer()
        if buffer is None:
            return Gst.PadProbeReturn.OK
        flight = _is_flight_datagram(buffer)
        if flight is None:
            sink = pad.get_parent_element()
            agent = sink.get_property("agent") if sink is not None else None
            if agent is not None and self._handler:
                agent.disconnect(self._handler)
                self._handler = 0
            return Gst.PadProbeReturn.REMOVE  # SRTP flows: no handshake left to protect
        if not flight:
            return Gst.PadProbeReturn.OK
        with self._lock:
            if not self._open:
                self._held.append(buffer.copy())
                return Gst.PadProbeReturn.DROP
        # the copies go first, through the same pad (re-entering it is allowed: its stream lock
        # is recursive, and the sink's own locks are taken only after the probes)
        self._send(buffer, self._copies - 1)
        return Gst.PadProbeReturn.OK

    def _on_state(self, _agent: Any, stream: int, component: int, state: int) -> None:
        """libnice's thread, after it let go of its lock: the held datagrams go out."""
        if (stream, component) != self._where or int(state) not in (_CONNECTED, _READY):
            return
        with self._lock:
            self._open = True
            held, self._held = self._held, []
        for buffer in held:  # not under the lock: the streaming thread may wait for it in the probe
            self._send(buffer, self._copies)

    def _send(self, buffer: Any, times: int) -> None:
        _copying.active = True
        try:
            for _ in range(times):
                self._pad.chain(buffer.copy())
        finally:
            _copying.active = False


#: libnice's STUN timers: the first timeout of gathering's STUN/TURN requests (its default 500 ms; not
#: used for connectivity checks, whose floor is 500 ms, see above) and the retransmissions of both
#: (its default 3, after which a connectivity check fails its pair)
ICE_INITIAL_TIMEOUT_MS = 200
ICE_MAX_RETRANSMISSIONS = 7


def tune_ice_agent(agent: Any) -> None:
    """ICE that survives loss: a candidate pair fails only after 8 sends of its check instead of 4,
    and a lost STUN/TURN request while gathering is sent again after 200 ms instead of 500 ms."""
    if not protected():
        return
    agent.set_property("stun-initial-timeout", ICE_INITIAL_TIMEOUT_MS)
    agent.set_property("stun-max-retransmissions", ICE_MAX_RETRANSMISSIONS)


_MEDIA_SECTION = re.compile(r"^m=", re.MULTILINE)


def answer_as_dtls_server(answer: str, offer: str) -> str:
    """``answer`` with ``a=setup:passive`` in each media section whose offer left the DTLS role open
    (``actpass``) and which webrtcbin answered ``active``: this end then is the DTLS server (above).
    Unchanged when the handshake is not protected, or where the offer chose a role."""
    if not protected():
        return answer
    offered = _MEDIA_SECTION.split(offer)[1:]
    head, *sections = _MEDIA_SECTION.split(answer)
    for index, section in enumerate(sections):
        if index < len(offered) and "a=setup:actpass" in offered[index]:
            sections[index] = section.replace("a=setup:active", "a=setup:passive")
    return "m=".join([head, *sections])


def protect_flights(sink: Any, agent: Any) -> None:
    """Called for each ICE sink (``nicesink``) webrtcbin creates, with its libnice agent (whose
    introspection data is loaded): its DTLS handshake datagrams go out ``HANDSHAKE_COPIES`` times, and
    wait for the agent to have a pair to send on instead of being dropped (``_FlightSender``)."""
    if protected():
        _FlightSender(sink, agent, HANDSHAKE_COPIES)
