"""Host candidates rewritten to the announced address, the ICE port range setting, and both on a
real pair of webrtcbin peers: the server's candidates name only the announced address and ports of
its range, and a range with no port left refuses a peer at once instead of leaving it gathering."""

from __future__ import annotations

import pytest

from peer_pair import PeerSide
from ports import free_udp_range
from vcstream.errors import ConfigurationError, MediaError
from vcstream.media.candidates import announce_candidate, announce_in_sdp, parse_port_range
from vcstream.media.webrtc import PeerConfig, WebRtcPeer, peers_in_port_range
from vcstream.service.config import ServiceSettings

HOST_V4 = "candidate:1 1 UDP 2015363327 10.88.0.5 40000 typ host"
HOST_V6 = "candidate:2 1 UDP 2015363583 fd00::5 40000 typ host"
SRFLX = "candidate:3 1 UDP 1677722111 198.51.100.4 40000 typ srflx raddr 10.88.0.5 rport 40000"
RELAY = "candidate:4 1 UDP 16777215 192.0.2.9 50123 typ relay raddr 198.51.100.4 rport 40000"


def test_a_host_candidate_takes_the_announced_address_and_keeps_its_port() -> None:
    assert announce_candidate(HOST_V4, "203.0.113.7") == (
        "candidate:1 1 UDP 2015363327 203.0.113.7 40000 typ host"
    )
    assert announce_candidate("a=" + HOST_V4, "203.0.113.7") == (
        "a=candidate:1 1 UDP 2015363327 203.0.113.7 40000 typ host"
    )
    tcp = "candidate:5 1 TCP 1010827775 10.88.0.5 9 typ host tcptype active"
    assert announce_candidate(tcp, "203.0.113.7") == (
        "candidate:5 1 TCP 1010827775 203.0.113.7 9 typ host tcptype active"
    )


def test_host_candidates_of_the_other_family_are_dropped() -> None:
    assert announce_candidate(HOST_V6, "203.0.113.7") is None
    assert announce_candidate(HOST_V4, "2001:db8::7") is None
    v6 = announce_candidate(HOST_V6, "2001:db8::7")
    assert v6 == "candidate:2 1 UDP 2015363583 2001:db8::7 40000 typ host"


@pytest.mark.parametrize("candidate", [SRFLX, RELAY, "candidate:6 1 UDP 2015363327 abc.local 40000 typ host"])
def test_reflexive_relay_and_named_candidates_are_untouched(candidate: str) -> None:
    assert announce_candidate(candidate, "203.0.113.7") == candidate


def test_candidate_lines_of_a_description_are_rewritten_and_nothing_else() -> None:
    sdp = (
        "v=0\r\no=- 1 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96\r\n"
        "c=IN IP4 0.0.0.0\r\n"
        f"a={HOST_V4}\r\na={HOST_V6}\r\na={SRFLX}\r\na=rtpmap:96 OPUS/48000/2\r\n"
    )
    rewritten = announce_in_sdp(sdp, "203.0.113.7")
    assert rewritten == sdp.replace(f"a={HOST_V6}\r\n", "").replace(
        "10.88.0.5 40000 typ host", "203.0.113.7 40000 typ host"
    )
    assert f"a={SRFLX}\r\n" in rewritten  # its raddr still names the private address


@pytest.mark.parametrize(
    ("text", "expected"), [("40000-40099", (40000, 40099)), (" 5000 - 5000 ", (5000, 5000))]
)
def test_port_ranges_parse(text: str, expected: tuple[int, int]) -> None:
    assert parse_port_range(text) == expected


@pytest.mark.parametrize("text", ["40000", "40099-40000", "0-10", "1-70000", "a-b", "-5", "40000-"])
def test_bad_port_ranges_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="port"):
        parse_port_range(text)


def test_settings_read_the_range_and_the_announced_address() -> None:
    settings = ServiceSettings.from_env(
        {"VCSTREAM_ICE_PORT_RANGE": "40000-40099", "VCSTREAM_ANNOUNCED_ADDRESS": " 203.0.113.7 "}
    )
    assert settings.ice_port_range == (40000, 40099)
    assert settings.announced_address == "203.0.113.7"
    unset = ServiceSettings.from_env({})
    assert unset.ice_port_range is None and unset.announced_address is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VCSTREAM_ICE_PORT_RANGE": "40000"}, "VCSTREAM_ICE_PORT_RANGE"),
        ({"VCSTREAM_ANNOUNCED_ADDRESS": "vc.example.com"}, "VCSTREAM_ANNOUNCED_ADDRESS"),
        ({"VCSTREAM_ICE_PORT_RANGE": "40000-40003", "VCSTREAM_MAX_SESSIONS": "5"}, "4 ports for 5 sessions"),
    ],
)
def test_bad_nat_settings_stop_the_server_at_start(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ServiceSettings.from_env(env)
    with pytest.raises(ConfigurationError, match="not an IP address"):
        ServiceSettings(announced_address="nowhere")


# -- real peers ----------------------------------------------------------------------------------


def test_server_candidates_use_the_range_and_a_full_range_refuses_at_once() -> None:
    port_range = free_udp_range(1)
    client_side, server_side = PeerSide(), PeerSide()
    client = WebRtcPeer(client_side, PeerConfig(latency_ms=0))
    server = WebRtcPeer(server_side, PeerConfig(latency_ms=0, ice_port_range=port_range))
    client_side.other, server_side.other = server, client
    try:
        assert peers_in_port_range(port_range) == 1
        with pytest.raises(MediaError, match=f"{port_range[0]}-{port_range[1]} is held by an open call"):
            WebRtcPeer(PeerSide(), PeerConfig(ice_port_range=port_range))
        client.offer()
        assert server_side.connected.wait(10), (server_side.states, server_side.errors)
        hosts = [c for c in server_side.candidates if " typ host" in c]
        assert hosts, server_side.candidates
        assert {int(c.split()[5]) for c in hosts} == {port_range[0]}
    finally:
        client.close()
        server.close()
    assert peers_in_port_range(port_range) == 0
    WebRtcPeer(PeerSide(), PeerConfig(ice_port_range=port_range)).close()  # the port is free again
