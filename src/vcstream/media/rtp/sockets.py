"""UDP sockets for RTP and RTCP: numeric addresses, binding (no address reuse) and free port pairs."""

from __future__ import annotations

import socket
from typing import Any

import gi

from vcstream.errors import ConfigurationError, MediaError

gi.require_version("Gio", "2.0")
from gi.repository import Gio, GLib  # noqa: E402


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
