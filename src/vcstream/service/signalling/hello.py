"""What answering ``hello`` needs beyond the connection's state: who the client is (its ``token``) and
the ``ready`` message (ICE servers, engine, voices, settings) for the engine it will call on."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from vcstream.service.admission import EngineSlot
from vcstream.service.auth import OPEN, AuthError, Principal
from vcstream.service.ice import ice_servers
from vcstream.service.keys import SETTINGS_KEY, VOICES_KEY
from vcstream.service.signalling.protocol import (
    MAX_MESSAGE_BYTES,
    STATS_INTERVAL_S,
    SignallingError,
    settings_schema,
)
from vcstream.service.tenant_api import AUTH_KEY

__all__ = ["authenticated", "ready_fields"]


async def authenticated(app: web.Application, token: object, client_address: str) -> Principal:
    """The principal of hello's ``token`` (an access token, or a backend's API key); failed
    credentials are charged to ``client_address``."""
    authenticator = app[AUTH_KEY]
    if authenticator.open:
        return OPEN
    if not isinstance(token, str) or not token:
        raise SignallingError(
            "unauthorized", 'this server needs an access token in hello ("token")', fatal=True
        )
    try:
        return await authenticator.of_credential(token, client_address)
    except AuthError as exc:
        raise SignallingError(exc.code, exc.message, fatal=True, retry_after_s=exc.retry_after_s) from None


async def ready_fields(
    app: web.Application, slot: EngineSlot, principal: Principal, session_id: str
) -> dict[str, Any]:
    """The fields of ``ready`` for a connection that will call on ``slot``."""
    settings, engine = app[SETTINGS_KEY], slot.engine
    voices = [v for v in await app[VOICES_KEY].list(principal.tenant_id) if principal.may_use(v.id)]
    return {
        "session": session_id,
        "ice_servers": ice_servers(settings, f"vcstream-{session_id}").for_browser(),
        "engine": {
            "name": engine.name,
            "note": slot.note,
            "cpu_fallback": slot.cpu_fallback,
            "overflow": slot.role == "overflow",
            "device": str(engine.describe().get("device", "cpu")),
            "sample_rate": engine.sample_rate,
        },
        "voices": [{"id": v.id, "name": v.name, "duration_s": round(v.duration_s, 2)} for v in voices],
        "settings": slot.defaults.values(per_call_only=True),
        "settings_schema": slot.choices.schema(settings_schema(slot.defaults)),
        "max_message_bytes": MAX_MESSAGE_BYTES,
        "stats_interval_s": STATS_INTERVAL_S,
    }
