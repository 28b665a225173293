"""ICE server configuration: coturn-style time-limited TURN credentials, the browser's RTCIceServer
list and webrtcbin's URIs, and what the signalling ``ready`` message hands out."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from vcstream.service.config import ServiceSettings
from vcstream.service.ice import ice_servers, turn_credentials
from webrtc_harness import receive_json, serving


def test_turn_credentials_match_coturns_rest_scheme() -> None:
    # expected value from an independent implementation:
    # echo -n "1433895918:user" | openssl dgst -sha1 -hmac north -binary | base64
    creds = turn_credentials("north", "user", ttl_s=3600, now=1433892318)
    assert creds.username == "1433895918:user"
    assert creds.credential == "/gk4t5tUc08OpM3NjrVjHSFVNmY="
    assert creds.expires_at == 1433895918


def test_turn_credentials_expire_after_the_ttl_and_depend_on_the_secret() -> None:
    a = turn_credentials("secret", "alice", ttl_s=60, now=1000.9)
    assert a.expires_at == 1060
    digest = hmac.new(b"secret", a.username.encode(), hashlib.sha1).digest()
    assert base64.b64decode(a.credential) == digest
    assert turn_credentials("other", "alice", ttl_s=60, now=1000).credential != a.credential


@pytest.mark.parametrize(
    ("secret", "user", "ttl"), [("", "alice", 60), ("s", "al:ice", 60), ("s", "alice", 0)]
)
def test_turn_credentials_refuse_bad_input(secret: str, user: str, ttl: int) -> None:
    with pytest.raises(ValueError):
        turn_credentials(secret, user, ttl_s=ttl)


def test_ice_servers_for_browser_and_webrtcbin(tmp_path: Path) -> None:
    settings = ServiceSettings(
        data_dir=tmp_path,
        stun_urls=("stun:stun.example.org:3478", "stun:backup.example.org"),
        turn_urls=("turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349"),
        turn_secret="s3cret",
        turn_ttl_s=600,
    )
    servers = ice_servers(settings, "vcstream-abc", now=2000)
    browser = servers.for_browser()
    assert browser[0] == {"urls": ["stun:stun.example.org:3478", "stun:backup.example.org"]}
    turn = browser[1]
    assert turn["urls"] == list(settings.turn_urls)
    assert turn["username"] == "2600:vcstream-abc"
    assert turn["credential"] == turn_credentials("s3cret", "vcstream-abc", 600, now=2000).credential

    assert servers.stun_server() == "stun://stun.example.org:3478"
    gst = servers.turn_servers()
    assert len(gst) == 2
    parts = urlsplit(gst[0])
    assert (parts.scheme, parts.hostname, parts.port, parts.query) == (
        "turn",
        "turn.example.org",
        3478,
        "transport=udp",
    )
    # the ':' of the username is percent-encoded so the URI parses; decoded it is the credential
    assert unquote(parts.username or "") == "2600:vcstream-abc"
    assert unquote(parts.password or "") == turn["credential"]
    assert gst[1].startswith("turns://")


def test_no_ice_servers_by_default(tmp_path: Path) -> None:
    servers = ice_servers(ServiceSettings(data_dir=tmp_path), "x")
    assert servers.for_browser() == []
    assert servers.stun_server() is None
    assert servers.turn_servers() == ()


def test_ready_message_hands_out_fresh_turn_credentials(tmp_path: Path) -> None:
    async def main() -> None:
        turn = {"turn_urls": ("turn:127.0.0.1:3478",), "turn_secret": "k", "turn_ttl_s": 300}
        async with serving(tmp_path / "data", **turn) as server:
            ready = []
            for _ in range(2):
                async with server.http.ws_connect(server.ws_url) as ws:
                    await ws.send_str(json.dumps({"v": 1, "type": "hello"}))
                    ready.append(await receive_json(ws))
            for message in ready:
                assert message["type"] == "ready"
                (entry,) = message["ice_servers"]
                expiry, _, user = entry["username"].partition(":")
                assert user == f"vcstream-{message['session']}"
                assert int(expiry) > 0
                key = hmac.new(b"k", entry["username"].encode(), hashlib.sha1).digest()
                assert entry["credential"] == base64.b64encode(key).decode()
            # one user name per session
            assert ready[0]["ice_servers"][0]["username"] != ready[1]["ice_servers"][0]["username"]

    asyncio.run(main())
