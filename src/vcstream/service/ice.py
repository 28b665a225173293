"""ICE servers for a session: what the browser gets (``RTCIceServer`` dictionaries) and what the
server's own webrtcbin gets (GStreamer URIs), from the same settings.

TURN credentials are time-limited in the REST style coturn implements (``use-auth-secret`` with
``static-auth-secret``): the username is ``"<expiry unix time>:<user>"`` and the password is
``base64(HMAC-SHA1(secret, username))``. The TURN server recomputes the HMAC with the shared secret and
refuses the credentials after the expiry, so nothing but the secret is shared between the two and no
long-lived password reaches a browser.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from vcstream.service.config import ServiceSettings


@dataclass(frozen=True)
class TurnCredentials:
    username: str
    credential: str
    #: unix time after which the TURN server refuses them
    expires_at: int


def turn_credentials(secret: str, user: str, ttl_s: int, now: float | None = None) -> TurnCredentials:
    """Time-limited TURN credentials for ``user`` valid for ``ttl_s`` seconds from ``now``."""
    if not secret:
        raise ValueError("a TURN shared secret is required")
    if ttl_s <= 0:
        raise ValueError(f"the credentials' lifetime must be positive, got {ttl_s}")
    if ":" in user:
        raise ValueError("the TURN user name must not contain ':' (it separates the expiry)")
    expires_at = int(time.time() if now is None else now) + int(ttl_s)
    username = f"{expires_at}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return TurnCredentials(username, base64.b64encode(digest).decode("ascii"), expires_at)


@dataclass(frozen=True)
class IceServers:
    """The ICE servers of one session."""

    stun_urls: tuple[str, ...]
    turn_urls: tuple[str, ...]
    turn: TurnCredentials | None

    def for_browser(self) -> list[dict[str, Any]]:
        """``RTCConfiguration.iceServers`` for the client."""
        servers: list[dict[str, Any]] = []
        if self.stun_urls:
            servers.append({"urls": list(self.stun_urls)})
        if self.turn_urls and self.turn is not None:
            servers.append(
                {
                    "urls": list(self.turn_urls),
                    "username": self.turn.username,
                    "credential": self.turn.credential,
                }
            )
        return servers

    def stun_server(self) -> str | None:
        """webrtcbin's ``stun-server`` (it takes one: the first)."""
        return _gst_uri(self.stun_urls[0]) if self.stun_urls else None

    def turn_servers(self) -> tuple[str, ...]:
        """webrtcbin ``add-turn-server`` URIs with the credentials in them (percent-encoded: the
        username holds a ':')."""
        if self.turn is None:
            return ()
        userinfo = f"{quote(self.turn.username, safe='')}:{quote(self.turn.credential, safe='')}@"
        return tuple(_gst_uri(url, userinfo) for url in self.turn_urls)


def _gst_uri(url: str, userinfo: str = "") -> str:
    """``stun:host:port`` / ``turn:host:port?transport=udp`` (RFC 7064/7065, as browsers take them)
    -> ``stun://host:port`` / ``turn://user:pass@host:port?transport=udp`` (GStreamer's form)."""
    scheme, _, rest = url.partition(":")
    return f"{scheme}://{userinfo}{rest.removeprefix('//')}"


def ice_servers(settings: ServiceSettings, user: str, now: float | None = None) -> IceServers:
    """The ICE servers the settings configure, with fresh TURN credentials for ``user``."""
    turn = None
    if settings.turn_urls and settings.turn_secret:
        turn = turn_credentials(settings.turn_secret, user, settings.turn_ttl_s, now)
    return IceServers(settings.stun_urls, settings.turn_urls, turn)
