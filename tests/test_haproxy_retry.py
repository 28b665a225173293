"""The balancer's answer when a replica dies under a new connection (deploy/haproxy/haproxy.cfg.in).

A replica killed with SIGKILL can still accept a connection in the instant its sockets are being
closed: the kernel finishes the handshake, then resets it unanswered. HAProxy's default retries only
cover connections that fail to open, so that caller got a 502 (seen once in CI: a call moving off a
killed replica was refused with http_502). The template retries an empty response on another
replica too; this test serves a replica that passes its health checks but drops every call
connection unanswered, next to a healthy one, and every call request must reach the healthy one."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster_harness import http_get, render_haproxy
from ports import free_port
from waiting import wait_until


@dataclass
class Backend:
    name: str
    port: int


def _serve(listener: socket.socket, drops_calls: bool, stop: threading.Event) -> None:
    """Answers /readyz 200; other requests get 200 too, or (``drops_calls``) a close with no answer."""
    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            continue
        with connection:
            connection.settimeout(2)
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = connection.recv(4096)
                if not chunk:
                    break
                request += chunk
            if drops_calls and not request.startswith(b"GET /readyz"):
                continue  # closed unanswered, as a dying process does
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")


@pytest.fixture
def backends() -> Iterator[list[Backend]]:
    stop = threading.Event()
    made: list[Backend] = []
    threads = []
    for name, drops in (("dying", True), ("healthy", False)):
        listener = socket.create_server(("127.0.0.1", 0))
        made.append(Backend(name, listener.getsockname()[1]))
        thread = threading.Thread(target=_serve, args=(listener, drops, stop), daemon=True)
        thread.start()
        threads.append((thread, listener))
    yield made
    stop.set()
    for thread, listener in threads:
        thread.join(5)
        listener.close()


def test_a_call_connection_dropped_unanswered_is_retried_on_another_replica(
    tmp_path: Path, backends: list[Backend]
) -> None:
    assert shutil.which("haproxy"), "haproxy is missing: run scripts/setup.sh (it installs Debian's haproxy)"
    port = free_port()
    config = render_haproxy(tmp_path, f"127.0.0.1:{port}", 4, backends)  # type: ignore[arg-type]
    log = (tmp_path / "haproxy.log").open("wb")
    balancer = subprocess.Popen(["haproxy", "-W", "-db", "-f", str(config)], stdout=log, stderr=log)
    try:
        # both replicas pass their checks (rise 2 at 500 ms) before calls are sent
        wait_until(lambda: _both_up(tmp_path / "haproxy.sock"), 15, "both replicas up in HAProxy")
        statuses = [http_get(f"http://127.0.0.1:{port}/ws")[0] for _ in range(20)]
        assert statuses == [200] * 20, (statuses, (tmp_path / "haproxy.log").read_text()[-2000:])
        # the dying replica was chosen (and retried away from), not merely avoided
        assert "dying" in (tmp_path / "haproxy.log").read_text() or _retries(tmp_path / "haproxy.sock") > 0
    finally:
        balancer.terminate()
        balancer.wait(10)
        log.close()


def _stat(sock_path: Path) -> list[dict[str, str]]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(sock_path))
        sock.sendall(b"show stat\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    lines = data.decode().lstrip("# ").splitlines()
    header = lines[0].split(",")
    return [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]


def _both_up(sock_path: Path) -> bool:
    if not sock_path.exists():
        return False
    rows = [
        r for r in _stat(sock_path) if r["pxname"] == "signalling" and r["svname"] in ("dying", "healthy")
    ]
    return len(rows) == 2 and all(r["status"] == "UP" for r in rows)


def _retries(sock_path: Path) -> int:
    rows = [r for r in _stat(sock_path) if r["pxname"] == "signalling" and r["svname"] == "dying"]
    return sum(int(r["wretr"] or 0) + int(r["wredis"] or 0) for r in rows)
