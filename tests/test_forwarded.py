"""The client address behind trusted proxies: the pure rule, and the signalling endpoint's
per-address budget using it (a real server: one client behind the proxy is throttled, the others not;
a header from an untrusted peer changes nothing)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from vcstream.errors import ConfigurationError
from vcstream.service.config import ServiceSettings
from vcstream.service.forwarded import TrustedProxies
from vcstream.service.signalling.registry import CONNECT_BURST
from webrtc_harness import serving

PROXIES = TrustedProxies(["127.0.0.1", "10.0.0.0/8", "fd00::/8"])


@pytest.mark.parametrize(
    ("peer", "headers", "client"),
    [
        # a direct client: its header proves nothing
        ("198.51.100.9", ["203.0.113.7"], "198.51.100.9"),
        # one trusted proxy: the address it saw
        ("127.0.0.1", ["203.0.113.7"], "203.0.113.7"),
        # a client that forged an entry before reaching the proxy: the proxy's own entry counts
        ("127.0.0.1", ["6.6.6.6, 203.0.113.7"], "203.0.113.7"),
        # two trusted hops (ingress, then a sidecar), over two headers
        ("10.1.2.3", ["6.6.6.6, 203.0.113.7", "10.9.9.9"], "203.0.113.7"),
        ("fd00::2", ["2001:db8::1"], "2001:db8::1"),
        # a proxy without the header, or with garbage as its entry: the proxy itself
        ("127.0.0.1", [], "127.0.0.1"),
        ("127.0.0.1", ["unknown"], "127.0.0.1"),
        # every hop trusted: the leftmost trusted one is as far as the chain can be believed
        ("127.0.0.1", ["10.0.0.5"], "10.0.0.5"),
        (None, ["203.0.113.7"], "?"),
    ],
)
def test_client_address(peer: str | None, headers: list[str], client: str) -> None:
    assert PROXIES.client(peer, headers) == client


def test_trusted_proxies_setting_is_checked() -> None:
    settings = ServiceSettings.from_env({"VCSTREAM_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8"})
    assert settings.trusted_proxies == ("127.0.0.1", "10.0.0.0/8")
    with pytest.raises(ConfigurationError, match=r"trusted proxy 'proxy\.local' is not an address"):
        ServiceSettings(trusted_proxies=("proxy.local",))
    env = {"VCSTREAM_MAX_CONNECTIONS": "50", "VCSTREAM_HEADER_TIMEOUT_S": "2.5"}
    hardened = ServiceSettings.from_env(env)
    assert (hardened.max_connections, hardened.header_timeout_s) == (50, 2.5)
    with pytest.raises(ConfigurationError, match="max_connections must be at least 1"):
        ServiceSettings(max_connections=0)


async def _upgrade(http: aiohttp.ClientSession, url: str, forwarded_for: str) -> int:
    """The status of a WebSocket upgrade (101 when it opened; closed again at once)."""
    try:
        async with http.ws_connect(url, headers={"X-Forwarded-For": forwarded_for}):
            return 101
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status


@pytest.mark.parametrize("trusted", [True, False])
def test_the_connection_budget_sees_the_client_behind_a_trusted_proxy(tmp_path: Path, trusted: bool) -> None:
    burst = int(CONNECT_BURST)

    async def main() -> None:
        proxies = ("127.0.0.1",) if trusted else ()
        async with serving(tmp_path / "data", trusted_proxies=proxies) as server:
            flooding = [await _upgrade(server.http, server.ws_url, "203.0.113.1") for _ in range(burst + 1)]
            assert flooding[:burst] == [101] * burst and flooding[burst] == 429
            # another client behind the same proxy: its own budget only if the proxy is believed
            other = await _upgrade(server.http, server.ws_url, "203.0.113.2")
            assert other == (101 if trusted else 429)

    asyncio.run(main())
