"""Two network namespaces joined by a veth pair, for tests that need a real, impaired link.

Names are unique per use (several test runs may share a host), addresses are 10.200.x.0/24 inside
the namespaces only (each namespace has its own routing table, so nothing leaks to the host), and
everything is removed on exit, also after failures: deleting a namespace deletes its veth end and
its nftables rules. Processes started in the namespaces are killed first, or they would keep them
alive.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

_TIMEOUT_S = 10


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=_TIMEOUT_S)


def require_netns() -> None:
    """Fail (not skip) when namespaces cannot be made: CI runs as root and must run these tests.
    Set VCSTREAM_SKIP_NETNS=1 to skip them deliberately elsewhere."""
    if os.environ.get("VCSTREAM_SKIP_NETNS") == "1":
        pytest.skip("VCSTREAM_SKIP_NETNS=1")
    missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed; run scripts/setup.sh")
    if os.geteuid() != 0:
        pytest.fail("network namespace tests need root (or set VCSTREAM_SKIP_NETNS=1 to skip them)")


@dataclass
class NetnsPair:
    a: str
    b: str
    address_a: str
    address_b: str
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    def command(self, namespace: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", namespace, *argv]

    def start(self, namespace: str, argv: Sequence[str]) -> subprocess.Popen[str]:
        """A process inside ``namespace`` (stdout piped as text), killed when the pair goes away."""
        process = subprocess.Popen(
            self.command(namespace, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.processes.append(process)
        return process

    def run(self, namespace: str, argv: Sequence[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(namespace, argv), capture_output=True, text=True, timeout=timeout_s, check=False
        )

    def random_loss(self, namespace: str, udp_dport: int, percent: int) -> None:
        """Drop ``percent`` % of the UDP datagrams leaving ``namespace`` for ``udp_dport`` (nftables)."""
        ruleset = (
            "table inet vcstream_loss {\n"
            "  chain out {\n"
            "    type filter hook output priority 0; policy accept;\n"
            f"    udp dport {udp_dport} numgen random mod 100 < {percent} drop\n"
            "  }\n"
            "}\n"
        )
        subprocess.run(
            self.command(namespace, ["nft", "-f", "-"]),
            input=ruleset,
            check=True,
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_S,
        )

    def clear_loss(self, namespace: str) -> None:
        subprocess.run(
            self.command(namespace, ["nft", "delete", "table", "inet", "vcstream_loss"]),
            check=False,
            capture_output=True,
            timeout=_TIMEOUT_S,
        )

    def stop_processes(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):  # stuck in the kernel: leave it
                process.communicate(timeout=_TIMEOUT_S)
        self.processes.clear()


@contextmanager
def netns_pair() -> Iterator[NetnsPair]:
    """Namespaces A and B, veth A <-> B with 10.200.N.1 (A) and 10.200.N.2 (B), loopback up in both."""
    tag = secrets.token_hex(3)
    a, b = f"vcs-{tag}-a", f"vcs-{tag}-b"
    veth_a, veth_b = f"va{tag}", f"vb{tag}"
    subnet = f"10.200.{secrets.randbelow(250) + 1}"
    pair = NetnsPair(a, b, f"{subnet}.1", f"{subnet}.2")
    created: list[str] = []
    try:
        for namespace in (a, b):
            _ip("netns", "add", namespace)
            created.append(namespace)
        # created directly inside the namespaces: nothing ever appears in the host's namespace
        _ip("link", "add", veth_a, "netns", a, "type", "veth", "peer", "name", veth_b, "netns", b)
        for namespace, device, address in ((a, veth_a, pair.address_a), (b, veth_b, pair.address_b)):
            _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", device)
            _ip("-n", namespace, "link", "set", device, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
        yield pair
    finally:
        pair.stop_processes()
        for namespace in created:
            subprocess.run(
                ["ip", "netns", "del", namespace], check=False, capture_output=True, timeout=_TIMEOUT_S
            )
