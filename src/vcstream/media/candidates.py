"""ICE candidates as a server behind NAT announces them (mediasoup's ``announcedIp``, LiveKit's
``node_ip``): its host candidates carry the public address that forwards to it instead of the
private one it gathered on. Pure text functions, no GStreamer: webrtcbin hands candidates out as
``candidate:...`` lines (trickled, or as ``a=candidate:`` lines of a description).

Host candidates of the announced address's family are rewritten; those of the other family are
dropped (a pod's private IPv6 or link-local address is unreachable from outside and only leaks the
internal network). Server-reflexive, peer-reflexive and relay candidates are left as they are: their
addresses are already the ones the outside sees.
"""

from __future__ import annotations

import ipaddress

__all__ = ["announce_candidate", "announce_in_sdp", "parse_port_range"]

#: fields of a candidate line: foundation, component, transport, priority, address, port, "typ", type
_ADDRESS, _TYPE_KEYWORD, _TYPE = 4, 6, 7


def announce_candidate(candidate: str, announced: str) -> str | None:
    """``candidate`` (``candidate:1 1 UDP 2015363327 10.88.0.5 40000 typ host``, with or without the
    ``a=`` prefix) with its address replaced by ``announced`` when it is a host candidate of the same
    IP family; None for a host candidate of the other family; any other candidate unchanged."""
    fields = candidate.split()
    if len(fields) <= _TYPE or fields[_TYPE_KEYWORD] != "typ" or fields[_TYPE] != "host":
        return candidate
    try:
        gathered = ipaddress.ip_address(fields[_ADDRESS])
    except ValueError:  # an mDNS name (.local) or anything else that is not an address: keep it
        return candidate
    public = ipaddress.ip_address(announced)
    if gathered.version != public.version:
        return None
    fields[_ADDRESS] = str(public)
    return " ".join(fields)


def announce_in_sdp(sdp: str, announced: str) -> str:
    """``sdp`` with every ``a=candidate:`` line passed through ``announce_candidate`` (other lines,
    and the line endings, untouched)."""
    lines = sdp.splitlines(keepends=True)
    kept: list[str] = []
    for line in lines:
        if not line.startswith("a=candidate:"):
            kept.append(line)
            continue
        body = line.rstrip("\r\n")
        rewritten = announce_candidate(body, announced)
        if rewritten is not None:
            kept.append(rewritten + line[len(body) :])
    return "".join(kept)


def parse_port_range(value: str) -> tuple[int, int]:
    """``"40000-40099"`` -> ``(40000, 40099)``; ValueError unless 1 <= first <= last <= 65535."""
    first, sep, last = value.strip().partition("-")
    if not sep or not first.strip().isdigit() or not last.strip().isdigit():
        raise ValueError(f"{value!r} is not a port range FIRST-LAST (e.g. 40000-40099)")
    low, high = int(first), int(last)
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"{value!r}: ports must satisfy 1 <= first <= last <= 65535")
    return low, high
