"""Typed keys for what the aiohttp application holds (no module-level registries anywhere)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from vcstream.engines.base import Engine
from vcstream.engines.settings import SessionSettings

if TYPE_CHECKING:
    from vcstream.service.config import ServiceSettings
    from vcstream.service.metrics import ServiceMetrics
    from vcstream.service.signalling import SessionRegistry
    from vcstream.service.voices import VoiceLibrary

SETTINGS_KEY: web.AppKey[ServiceSettings] = web.AppKey("settings")
ENGINE_KEY: web.AppKey[Engine] = web.AppKey("engine", Engine)
#: the engine's session settings with the operator's defaults applied
DEFAULTS_KEY: web.AppKey[SessionSettings] = web.AppKey("session_defaults", SessionSettings)
VOICES_KEY: web.AppKey[VoiceLibrary] = web.AppKey("voices")
METRICS_KEY: web.AppKey[ServiceMetrics] = web.AppKey("metrics")
SESSIONS_KEY: web.AppKey[SessionRegistry] = web.AppKey("sessions")
