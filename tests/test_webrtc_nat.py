"""A WebRTC call to a server behind NAT, without containers: the server runs in one network
namespace (10.200.N.2), the client in another, and the client's namespace reaches the server only
through an announced address 10.200.N.99 that nftables forwards (DNAT) to the server's ICE port
range; UDP straight to the server's own address (or over IPv6) is dropped. The call converts only if
the server's host candidates carry the announced address and ports of the range (without the
announced address the same call fails with ice_failed: checked by hand)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Speech, median_f0, vcstream_argv
from netns import netns_pair, require_netns
from webrtc_harness import reference_wav

TESTS = Path(__file__).resolve().parent
PORTS = (40000, 40001)
HTTP_PORT = 8080


def _nat_rules(announced: str, server: str) -> str:
    first, last = PORTS
    return (
        "table ip vcstream_nat {\n"
        "  chain dnat_out {\n"
        "    type nat hook output priority -100; policy accept;\n"
        f"    ip daddr {announced} udp dport {first}-{last} dnat to {server}\n"
        "  }\n"
        "  chain only_through_nat {\n"
        "    type filter hook output priority 0; policy accept;\n"
        f"    ip daddr {server} meta l4proto udp ct status dnat accept\n"
        f"    ip daddr {server} meta l4proto udp drop\n"
        "  }\n"
        "}\n"
        # nor around it over IPv6 (link-local addresses connect the namespaces too)
        "table ip6 vcstream_no_v6 {\n"
        "  chain out {\n"
        "    type filter hook output priority 0; policy accept;\n"
        "    meta l4proto udp drop\n"
        "  }\n"
        "}\n"
    )


def test_a_call_through_the_announced_address_converts(tmp_path: Path, flite_speech: Speech) -> None:
    require_netns()
    with netns_pair() as pair:
        client_ns, server_ns = pair.a, pair.b
        announced = pair.address_a.rsplit(".", 1)[0] + ".99"
        subprocess.run(
            pair.command(client_ns, ["nft", "-f", "-"]),
            input=_nat_rules(announced, pair.address_b),
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        )
        env = {
            **os.environ,
            "VCSTREAM_ENGINE": "world",
            "VCSTREAM_MAX_SESSIONS": "1",
            "VCSTREAM_ICE_PORT_RANGE": f"{PORTS[0]}-{PORTS[1]}",
            "VCSTREAM_ANNOUNCED_ADDRESS": announced,
            "VCSTREAM_DATA_DIR": str(tmp_path / "data"),
            "VCSTREAM_WEBRTC_LATENCY_MS": "20",
        }
        server = subprocess.Popen(
            pair.command(server_ns, vcstream_argv("serve", "--port", HTTP_PORT)),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        pair.processes.append(server)
        reference = reference_wav(tmp_path, flite_speech, "slt")
        call = pair.run(
            client_ns,
            [sys.executable, str(TESTS / "nat_call.py"), "--base", f"http://{pair.address_b}:{HTTP_PORT}",
             "--reference", str(reference)],
            timeout_s=60,
        )  # fmt: skip
        if call.returncode != 0:
            server.kill()
            pytest.fail(f"the call failed: {call.stderr[-2500:]}\nserver: {server.communicate()[1][-2500:]}")
        seen = json.loads(call.stdout.strip().splitlines()[-1])

    hosts = [c.split() for c in seen["candidates"] if " typ host" in c]
    assert hosts, seen["candidates"]
    assert {(h[4], int(h[5]) in range(PORTS[0], PORTS[1] + 1)) for h in hosts} == {(announced, True)}
    f0_voice = median_f0(flite_speech("slt", None, 16000)[0], 16000)
    print(f"\ncall behind NAT: F0 {seen['f0_in']:.0f} -> {seen['f0_out']:.0f} Hz (voice {f0_voice:.0f} Hz)")
    assert abs(seen["f0_out"] / f0_voice - 1) < 0.2  # WORLD moved it to the voice
