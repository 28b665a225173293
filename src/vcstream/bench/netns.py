"""Two network namespaces joined by a veth pair: a real link that can lose packets, for benchmarks
and tests.

Names are unique per use (several runs may share a host), addresses are 10.200.x.0/24 inside the
namespaces only (each namespace has its own routing table, so nothing leaks to the host), and
everything is removed on exit, also after failures: deleting a namespace deletes its veth end and
its nftables rules. Processes started in the namespaces are killed first, or they would keep them
alive. Needs root, ``ip`` (iproute2) and ``nft`` (nftables).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from vcstream.errors import ConfigurationError

_TIMEOUT_S = 10
#: loss is drawn per packet out of this many, so that fractional percentages work
_LOSS_SCALE = 10000


class NamespacesUnavailable(ConfigurationError):
    """Network namespaces cannot be made here (not root, or ``ip``/``nft`` missing)."""


def netns_unavailable_reason() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (scripts/setup.sh installs them)"
    if os.geteuid() != 0:
        return "network namespaces need root"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=_TIMEOUT_S)


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

    def random_loss(
        self,
        namespace: str,
        udp_dport: int | str | None,
        percent: float,
        *,
        udp_sport: int | str | None = None,
        rtp_only: bool = False,
    ) -> None:
        """Drop ``percent`` % of the UDP datagrams leaving ``namespace`` (nftables) for ``udp_dport``
        and/or from ``udp_sport`` (a port or a ``FIRST-LAST`` range). ``rtp_only`` spares all but
        (S)RTP and (S)RTCP, whose first byte says RTP version 2 (RFC 7983): STUN and DTLS on the
        same ports get through, so the loss hits the media, not the call's set-up."""
        match = "udp"
        if udp_dport is not None:
            match += f" dport {udp_dport}"
        if udp_sport is not None:
            match += f" sport {udp_sport}"
        if rtp_only:
            match += " @th,64,2 2"  # the first two bits after the 8-byte UDP header
        threshold = round(percent * _LOSS_SCALE / 100)
        ruleset = (
            "table inet vcstream_loss {\n"
            "  chain out {\n"
            "    type filter hook output priority 0; policy accept;\n"
            f"    {match} numgen random mod {_LOSS_SCALE} < {threshold} counter drop\n"
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

    def dropped_packets(self, namespace: str) -> int:
        """Datagrams ``random_loss`` dropped in ``namespace`` so far (0 without a loss rule)."""
        listing = subprocess.run(
            self.command(namespace, ["nft", "list", "table", "inet", "vcstream_loss"]),
            check=False,
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_S,
        )
        return sum(int(n) for n in re.findall(r"counter packets (\d+)", listing.stdout))

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
    """Namespaces A and B, veth A <-> B with 10.200.N.1 (A) and 10.200.N.2 (B), loopback up in both.
    Raises ``NamespacesUnavailable`` when they cannot be made here."""
    reason = netns_unavailable_reason()
    if reason is not None:
        raise NamespacesUnavailable(f"cannot make network namespaces: {reason}")
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
