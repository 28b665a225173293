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

ICE: libnice gives up on a candidate pair after 3 retransmissions of its check; at 10 % loss each
way a call in three to six failed ICE outright. 7 here (``tune_ice_agent``). The retransmission
timer of a connectivity check cannot be shortened: libnice 0.1.21 computes it from its pacing timer
with a floor of 500 ms (``priv_compute_conncheck_timer``; its debug log says "timer set to 500ms"),
doubling at each try, and ``stun-initial-timeout`` reaches only the STUN/TURN requests of gathering.
So when a check or its answer is lost, ICE takes 0.5 s longer (measured at 10 % loss each way: 8 of
24 calls connected in 0.59-0.67 s instead of 0.08-0.12 s), 1.5 s when it happens twice in a row.
The answering server is the controlled agent and needs its own check on the nominated pair to
succeed before it reports ``connected`` and starts DTLS, so a browser's quick pings do not help it.

The certificate (why this module's name, and no code for it): the elements already share one
certificate per process (``prepare()`` makes it ahead of the first call), and a certificate set
through ``dtlsdec``'s ``pem`` at ``deep-element-added`` comes too late in 1.22: the DTLS transport
creates its connection, with the default certificate, when it is constructed, before its elements
join the pipeline (checked: the SDP fingerprint stays the default one). An ECDSA certificate would
not shorten a flight anyway: each handshake record is a datagram of its own, whatever the key.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from vcstream.media.gst import Gst

__all__ = ["HANDSHAKE_COPIES", "PROTECTION_VARIABLE", "harden_element", "protected", "tune_ice_agent"]

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


def _send_copies(pad: Any, info: Any, copies: int) -> Any:
    """Buffer probe on the ICE sink: the handshake datagrams go out ``HANDSHAKE_COPIES`` times."""
    if getattr(_copying, "active", False):
        return Gst.PadProbeReturn.OK
    buffer = info.get_buffer()
    if buffer is None:
        return Gst.PadProbeReturn.OK
    flight = _is_flight_datagram(buffer)
    if flight is None:
        return Gst.PadProbeReturn.REMOVE  # SRTP flows: no handshake left to protect
    if flight:
        # the copies go first, through the same pad (re-entering it is allowed: its stream lock
        # is recursive, and the sink's own locks are taken only after the probes)
        _copying.active = True
        try:
            for _ in range(copies - 1):
                pad.chain(buffer.copy())
        finally:
            _copying.active = False
    return Gst.PadProbeReturn.OK


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


def harden_element(element: Any) -> None:
    """Called for each element webrtcbin creates (``deep-element-added``): the handshake copies on
    ``nicesink``."""
    factory = element.get_factory()
    name = factory.get_name() if factory is not None else ""
    if name == "nicesink" and HANDSHAKE_COPIES > 1 and protected():
        element.get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, _send_copies, HANDSHAKE_COPIES)
