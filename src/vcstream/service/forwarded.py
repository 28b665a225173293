"""The client's address as seen through trusted reverse proxies (X-Forwarded-For).

A balancer in front makes every connection come from its own address; per-address limits would then
throttle all clients together. X-Forwarded-For is believed only from the operator's proxies
(``trusted_proxies``), since anyone else can write the header.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["TrustedProxies"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


class TrustedProxies:
    """The networks whose X-Forwarded-For header is believed."""

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks: tuple[_Network, ...] = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    def trusts(self, address: str) -> bool:
        ip = _address(address)
        return ip is not None and any(ip in network for network in self.networks)

    def client(self, peer: str | None, forwarded_for: Iterable[str] = ()) -> str:
        """The client's address: ``peer`` (the socket's), unless it is a trusted proxy; then the
        X-Forwarded-For entries (every header, in order) are read from the right, skipping trusted
        proxies, and the first other address is the client. An entry that is no address ends the
        walk there (what precedes it was written by the client and proves nothing)."""
        if peer is None or not self.trusts(peer):
            return peer or "?"
        hops = [hop.strip() for header in forwarded_for for hop in header.split(",")]
        client = peer
        for hop in reversed(hops):
            if _address(hop) is None:
                break
            client = hop
            if not self.trusts(hop):
                break
        return client
