"""Free local ports for tests that publish or bind a known range (checked by binding them now)."""

from __future__ import annotations

import socket


def free_port(kind: int = socket.SOCK_STREAM, address: str = "127.0.0.1") -> int:
    """A port on ``address`` that nobody holds now (TCP by default; ``socket.SOCK_DGRAM`` for UDP)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def free_udp_range(size: int, start: int = 42000) -> tuple[int, int]:
    """``size`` consecutive UDP ports that nobody holds on any address now: (first, last)."""
    for first in range(start, 60000 - size, 97):
        sockets: list[socket.socket] = []
        try:
            for port in range(first, first + size):
                sockets.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                sockets[-1].bind(("0.0.0.0", port))
            return first, first + size - 1
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise AssertionError(f"no {size} free consecutive UDP ports")
