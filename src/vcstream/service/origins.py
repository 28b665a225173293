"""Which pages may open a signalling WebSocket (cross-site WebSocket hijacking: a browser opens a
WebSocket to any site with that site's cookies, and says which page asked only in ``Origin``)."""

from __future__ import annotations

from urllib.parse import urlsplit


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """No ``Origin`` (not a browser: it must authenticate like any client) is allowed; a browser's
    page must come from an ``allowed`` origin, or with none configured, from this server itself
    (the origin's host and port are the request's ``Host``; the scheme may differ behind a proxy
    that terminates TLS)."""
    if origin is None:
        return True
    if allowed:
        return origin.rstrip("/").lower() in {entry.rstrip("/").lower() for entry in allowed}
    if host is None or origin == "null":
        return False
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    default_port = 443 if parts.scheme == "https" else 80
    try:
        origin_port = parts.port or default_port
    except ValueError:
        return False
    asked = urlsplit(f"//{host}")
    try:
        host_port = asked.port or default_port  # no port in Host: the scheme's own
    except ValueError:
        return False
    return (asked.hostname or "").lower() == parts.hostname.lower() and origin_port == host_port
