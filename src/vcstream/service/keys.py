"""Typed keys for what the aiohttp application holds (no module-level registries anywhere)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from vcstream.engines.base import Engine
from vcstream.engines.settings import SessionSettings

if TYPE_CHECKING:
    from vcstream.media.mainloop import Runtime
    from vcstream.quality.live import LiveQualityWorker
    from vcstream.service.admission import Admission
    from vcstream.service.config import ServiceSettings
    from vcstream.service.metrics import ServiceMetrics
    from vcstream.service.signalling import SessionRegistry
    from vcstream.service.voices import VoiceLibrary

#: the loops and thread pools every thread crossing goes through (built first, closed last)
RUNTIME_KEY: web.AppKey[Runtime] = web.AppKey("runtime")
SETTINGS_KEY: web.AppKey[ServiceSettings] = web.AppKey("settings")
ENGINE_KEY: web.AppKey[Engine] = web.AppKey("engine", Engine)
#: the engines sessions run on (the primary and, if configured, an overflow CPU engine) and their places
ADMISSION_KEY: web.AppKey[Admission] = web.AppKey("admission")
#: the engine's session settings with the operator's defaults applied
DEFAULTS_KEY: web.AppKey[SessionSettings] = web.AppKey("session_defaults", SessionSettings)
VOICES_KEY: web.AppKey[VoiceLibrary] = web.AppKey("voices")
METRICS_KEY: web.AppKey[ServiceMetrics] = web.AppKey("metrics")
SESSIONS_KEY: web.AppKey[SessionRegistry] = web.AppKey("sessions")
#: the live quality estimator of every call (absent when ``live_quality`` is off)
LIVE_QUALITY_KEY: web.AppKey[LiveQualityWorker] = web.AppKey("live_quality")

# the runtime's thread pools, by name
#: blocking GStreamer calls of WebRTC sessions (state changes, teardown, statistics)
MEDIA_POOL = "media"
#: engine loading and warm-up (one at a time)
ENGINE_POOL = "engine"
#: the voice library's database calls, apart from its decoding and feature work: a query must not
#: wait behind a 30 s decode
VOICES_DB_POOL = "voices-db"
VOICES_WORK_POOL = "voices-work"
