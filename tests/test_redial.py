"""The call client's pure parts: the wait between tries and the TURN servers handed to webrtcbin.
(Refusals, redials and moves against real replicas and HAProxy are in test_cluster.py.)"""

from __future__ import annotations

from vcstream.bench.call_client import Refusal, gst_turn_servers
from vcstream.bench.redial import RETRIED_CODES, RedialPolicy
from vcstream.service.config import ServiceSettings
from vcstream.service.ice import ice_servers


def test_the_hint_is_honoured_up_to_the_cap_and_the_backoff_stands_in_for_none() -> None:
    policy = RedialPolicy(backoff_s=0.25, max_wait_s=2.0)
    assert policy.wait_s(Refusal("http_503", "full", 1.5)) == 1.5
    assert policy.wait_s(Refusal("server_full", "full", 15.0)) == 2.0  # another replica may be free now
    assert policy.wait_s(Refusal("unreachable", "refused")) == 0.25
    assert policy.wait_s(Refusal("http_503", "full", -3.0)) == 0.0


def test_only_not_here_not_now_refusals_are_retried() -> None:
    assert {"server_full", "server_draining", "server_not_ready", "http_503", "unreachable"} <= RETRIED_CODES
    assert not {"voice_not_found", "bad_sdp", "rate_limited"} & RETRIED_CODES


def test_the_client_relays_through_the_turn_servers_the_server_itself_uses() -> None:
    """What ``ready`` tells a client, turned into webrtcbin's form by the client, is what the
    server hands its own webrtcbin (same servers, same credentials)."""
    settings = ServiceSettings(
        stun_urls=("stun:stun.example.org:3478",),
        turn_urls=("turn:192.0.2.1:3478?transport=udp", "turns:turn.example.org:5349"),
        turn_secret="s3cret",
    )
    servers = ice_servers(settings, "vcstream-abc", now=1_700_000_000)
    converted = gst_turn_servers(servers.for_browser())
    assert converted == servers.turn_servers()
    assert len(converted) == 2 and "%3A" in converted[0]  # the ':' of the username is encoded
