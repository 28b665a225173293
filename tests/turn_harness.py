"""A real TURN server for tests: coturn with ``use-auth-secret`` (the credentials vcstream issues),
listening and relaying on this machine's interface address. Used by the TURN test and the cluster
test."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ports import free_port
from waiting import wait_until

ALLOCATED = re.compile(r"user <\d+:([^>]+)>.*ALLOCATE processed, success")


@dataclass
class Coturn:
    address: str
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"turn:{self.address}:{self.port}?transport=udp"

    def allocations(self) -> list[str]:
        """The user part of the (``<expiry>:<user>``) credentials of every relay coturn allocated."""
        return ALLOCATED.findall(self.log.read_text(errors="replace"))


def interface_address() -> str:
    """This machine's address on its network interface. Chromium and libnice gather candidates
    there, not on loopback, and a relay on 127.0.0.1 cannot send to it (the kernel drops loopback-
    sourced packets to other addresses). Connecting a UDP socket sends nothing."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("203.0.113.1", 9))  # TEST-NET-3: only the route is looked up
        except OSError:
            return "127.0.0.1"
        return str(probe.getsockname()[0])


@contextmanager
def running_coturn(folder: Path, secret: str, realm: str) -> Iterator[Coturn]:
    """coturn on a free port of the interface address, its log and state in ``folder``."""
    if shutil.which("turnserver") is None:
        raise AssertionError("coturn is missing: apt-get install coturn (scripts/setup.sh does)")
    address = interface_address()
    port, log = free_port(socket.SOCK_DGRAM, address), folder / "turnserver.log"
    command = [
        "turnserver", "-n", "--simple-log", "--verbose", f"--log-file={log}",
        f"--listening-ip={address}", f"--listening-port={port}", f"--relay-ip={address}",
        "--min-port=50000", "--max-port=50999", "--no-tls", "--no-dtls", "--no-cli",
        "--use-auth-secret", f"--static-auth-secret={secret}", f"--realm={realm}",
        f"--pidfile={folder / 'turnserver.pid'}", f"--userdb={folder / 'turndb'}",
        "--allow-loopback-peers",  # the clients and the servers are on this machine
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def log_text() -> str:
        return log.read_text(errors="replace") if log.exists() else ""

    def listening() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"turnserver exited with {process.returncode}: {log_text()}")
        return "UDP listener opened" in log_text()

    try:
        wait_until(listening, 10, "turnserver opened its UDP listener", state=log_text)
        yield Coturn(address, port, log)
    finally:
        process.terminate()
        process.wait(10)
