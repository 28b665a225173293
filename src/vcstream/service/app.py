"""The aiohttp application: ``create_app`` builds it, and its start-up and shutdown order.

Start-up (``cleanup_ctx``, in this order, before the server accepts connections):

1. the runtime (``RUNTIME_KEY``): the GLib loop, the asyncio loop and the named thread pools
   (``POOLS``) every thread crossing goes through; it closes last;
2. the engine is chosen and loaded on the runtime's engine pool (the loop stays responsive), then
   stored under ``ENGINE_KEY``; warm-up (one voice and two blocks through a session) continues in the
   background after start-up, and /readyz answers 503 until it is done;
3. the voice library opens its database (``VOICES_KEY``);
4. unless ``live_quality`` is off, the calls' quality estimator (``LIVE_QUALITY_KEY``): its thread
   starts, and CAM++ loads, with the first call;
5. whatever ``vcstream.service.signalling.setup`` registered (it sees the keys above).

Shutdown: ``drain`` marks the server draining (/readyz 503; ``health.session_refusal`` refuses new
sessions), tells every running call's client to move (``draining``: make-before-break) and waits
up to ``shutdown_grace_s`` for running sessions to end (as counted by
``ServiceMetrics.session_started``/``session_ended``); ``vcstream serve`` calls it on SIGTERM while
still listening, so load balancers see the 503. Then the app's ``on_shutdown`` handlers run (ours
first: it sets draining for any other way of stopping; signalling's closes what is left) and the
cleanup contexts close in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import hdrs, web

from vcstream.engines.base import Engine
from vcstream.media.mainloop import Runtime
from vcstream.quality.live import LiveQualityWorker
from vcstream.service import api, health, tenant_api
from vcstream.service.admission import Admission, EngineSlot
from vcstream.service.auth import Authenticator
from vcstream.service.call_choices import CallChoices
from vcstream.service.capacity_metrics import CapacitySources
from vcstream.service.config import ServiceSettings
from vcstream.service.connection_guard import body_deadline
from vcstream.service.db.connect import create_database_engine
from vcstream.service.engine_loader import (
    LoadedEngine,
    load_engine,
    load_overflow_engine,
    loaded,
    measure_capacity,
    warm_engine,
)
from vcstream.service.forwarded import TrustedProxies
from vcstream.service.health import STATE_KEY, ServiceState
from vcstream.service.keys import (
    ADMISSION_KEY,
    DEFAULTS_KEY,
    ENGINE_KEY,
    ENGINE_POOL,
    LIVE_QUALITY_KEY,
    MEDIA_POOL,
    METRICS_KEY,
    RUNTIME_KEY,
    SESSIONS_KEY,
    SETTINGS_KEY,
    VOICES_DB_POOL,
    VOICES_KEY,
    VOICES_WORK_POOL,
)
from vcstream.service.metrics import ServiceMetrics
from vcstream.service.openapi import Media, error, operation, reply
from vcstream.service.tenancy.metering import UsageLedger
from vcstream.service.tenancy.plans import load_plans
from vcstream.service.tenancy.store import TenantStore
from vcstream.service.voices import VoiceLibrary
from vcstream.streaming.capacity import MEDIA_CORES_PER_SESSION, available_cores
from vcstream.streaming.scheduler import BlockScheduler, SchedulerConfig

log = logging.getLogger(__name__)

T = TypeVar("T")

#: the runtime's thread pools and their workers
POOLS = {MEDIA_POOL: 8, ENGINE_POOL: 1, VOICES_DB_POOL: 4, VOICES_WORK_POOL: 2}

#: the browser client (written beside the signalling endpoint)
STATIC_DIR = Path(__file__).parent / "static"


def create_app(settings: ServiceSettings, engine: Engine | None = None) -> web.Application:
    """The server application. ``engine``: an engine already loaded (tests, embedding); without it
    the settings choose and load one at start-up."""
    app = web.Application(
        # the upload handler streams with its own cap; this bounds every other body read
        client_max_size=settings.max_upload_bytes + api.MULTIPART_OVERHEAD,
        # the body deadline inside json_errors: what it cuts short is not reported as a failure
        middlewares=[api.json_errors, tenant_api.authenticated, body_deadline(settings.header_timeout_s)],
    )
    app[SETTINGS_KEY] = settings
    app[METRICS_KEY] = ServiceMetrics()
    app[STATE_KEY] = ServiceState()
    app[METRICS_KEY].watch_capacity(_capacity_sources(app))
    app.cleanup_ctx.append(_runtime_context)
    if settings.live_quality:  # before the engine: its warm-up loads the estimator's encoder
        app.cleanup_ctx.append(_live_quality_context)
    app.cleanup_ctx.append(_engine_context(engine))
    app.cleanup_ctx.append(_voices_context)
    app.cleanup_ctx.append(_tenancy_context)
    app.on_shutdown.append(_mark_draining)

    api.setup(app)
    tenant_api.setup(app)
    health.setup(app)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", index)
    if STATIC_DIR.is_dir():
        app.router.add_static("/static/", STATIC_DIR)

    if importlib.util.find_spec("vcstream.service.signalling") is not None:
        from vcstream.service import signalling

        signalling.setup(app)
    else:
        log.warning("vcstream.service.signalling is not installed: no WebRTC sessions")
    return app


def _capacity_sources(app: web.Application) -> CapacitySources:
    """The capacity gauges' figures, read from the application at each scrape (before the engine is
    loaded there is no place, and the server is not ready)."""

    def usage() -> list[tuple[str, int, int]]:
        admission = app.get(ADMISSION_KEY)
        return admission.usage() if admission is not None else []

    def relayed() -> int:
        registry = app.get(SESSIONS_KEY)
        return registry.relayed_calls if registry is not None else 0

    return CapacitySources(
        usage=usage,
        ready=lambda: ADMISSION_KEY in app and health.readiness_problem(app) is None,
        draining=lambda: app[STATE_KEY].draining,
        relayed_sessions=relayed,
    )


async def _runtime_context(app: web.Application) -> AsyncIterator[None]:
    runtime = Runtime.start(POOLS)
    app[RUNTIME_KEY] = runtime
    try:
        yield
    finally:
        await runtime.close()


def _engine_context(given: Engine | None) -> Callable[[web.Application], AsyncIterator[None]]:
    async def engine_context(app: web.Application) -> AsyncIterator[None]:
        settings, state, runtime = app[SETTINGS_KEY], app[STATE_KEY], app[RUNTIME_KEY]
        if given is None:
            result = await runtime.run_blocking(ENGINE_POOL, load_engine, settings)
        else:
            result = loaded(given, settings)
        overflow = await runtime.run_blocking(ENGINE_POOL, load_overflow_engine, settings, result.engine)
        app[ENGINE_KEY] = result.engine
        app[METRICS_KEY].engine_loaded(result.engine.name, result.device, result.cpu_fallback)
        log.info("engine %s loaded", result.engine.name)
        app[DEFAULTS_KEY] = result.defaults
        slots = [_slot("primary", result, settings)]
        if overflow is not None:
            slots.append(_slot("overflow", overflow, settings))
        admission = Admission(*slots)
        app[ADMISSION_KEY] = admission
        app[METRICS_KEY].watch_schedulers(lambda: [slot.scheduler.snapshot() for slot in admission.slots])
        worker = app.get(LIVE_QUALITY_KEY)
        preload = worker.preload if worker is not None else None
        warming = asyncio.create_task(
            _warm(runtime, state, admission, settings, preload), name="engine-warm-up"
        )
        try:
            yield
        finally:
            warming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await warming
            for slot in admission.slots:
                await runtime.run_blocking(ENGINE_POOL, slot.scheduler.close)

    return engine_context


def _slot(role: str, loaded_engine: LoadedEngine, settings: ServiceSettings) -> EngineSlot:
    engine, defaults = loaded_engine.engine, loaded_engine.defaults
    # the operator's call choices name the primary engine's settings
    configured = settings.call_choices if role == "primary" else ()
    return EngineSlot(
        role=role,
        engine=engine,
        scheduler=BlockScheduler(engine, SchedulerConfig.for_engine(engine)),
        defaults=defaults,
        note=loaded_engine.engine_note,
        cpu_fallback=loaded_engine.cpu_fallback,
        choices=CallChoices.for_engine(engine, defaults, configured),
    )


async def _warm(
    runtime: Runtime,
    state: ServiceState,
    admission: Admission,
    settings: ServiceSettings,
    preload: Callable[[], None] | None = None,
) -> None:
    """Warm each engine, then measure what it carries, then ``preload`` (the live quality
    estimator's encoder, after the measurement so as not to disturb it); ready after all three."""
    try:
        planned_cores = 0.0
        for slot in admission.slots:
            await runtime.run_blocking(ENGINE_POOL, warm_engine, slot.engine, slot.defaults)
            primary = slot.role == "primary"
            # the overflow engine gets the CPU the primary's sessions leave
            cores = None if primary else max(0.0, available_cores() - planned_cores)
            slot.capacity = await runtime.run_blocking(
                ENGINE_POOL,
                partial(
                    measure_capacity,
                    operator_sessions=settings.max_sessions if primary else None,
                    cores=cores,
                ),
                slot.engine,
                slot.defaults,
                settings,
                slot.scheduler.config,
            )
            planned_cores += slot.places * MEDIA_CORES_PER_SESSION
            log.info(
                "%s engine %s: %d session(s), %s",
                slot.role,
                slot.engine.name,
                slot.places,
                slot.capacity.detail,
            )
        if preload is not None:
            await runtime.run_blocking(ENGINE_POOL, preload)
    except Exception as exc:  # stays up, unready, and says why (on /readyz and in the log)
        log.exception("engine warm-up failed")
        state.warm_error = f"{type(exc).__name__}: {exc}"
        return
    state.warm = True
    log.info("ready for sessions")


async def _voices_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    library = VoiceLibrary(
        settings.effective_database_url,
        settings.effective_voices_dir,
        app[ENGINE_KEY],
        app[RUNTIME_KEY],
        max_upload_bytes=settings.max_upload_bytes,
        profile_cache_size=settings.voice_cache_size,
    )
    try:
        await library.open()
        app[VOICES_KEY] = library
        yield
    finally:
        await library.close()


async def _live_quality_context(app: web.Application) -> AsyncIterator[None]:
    """The calls' quality estimator: its encoder loads during the engine's warm-up, its thread
    starts with the first call."""
    worker = LiveQualityWorker()
    app[LIVE_QUALITY_KEY] = worker
    try:
        yield
    finally:
        await app[RUNTIME_KEY].run_blocking(MEDIA_POOL, worker.close)


async def _tenancy_context(app: web.Application) -> AsyncIterator[None]:
    """Tenants, keys and metering, on the library's database (its schema is at head by now)."""
    settings, runtime = app[SETTINGS_KEY], app[RUNTIME_KEY]
    plans = load_plans(settings.plans_file)
    database = create_database_engine(settings.effective_database_url)

    def blocking(fn: Callable[..., T], *args: Any) -> Awaitable[T]:
        return runtime.run_blocking(VOICES_DB_POOL, fn, *args)

    proxies = TrustedProxies(settings.trusted_proxies)
    store = TenantStore(database, plans)
    app[tenant_api.AUTH_KEY] = Authenticator(settings.auth, settings.token_secret, store, proxies, blocking)
    app[tenant_api.LEDGER_KEY] = UsageLedger(database, plans, settings.replica_name)
    app[tenant_api.PLANS_KEY] = plans
    log.info("auth %s; plans: %s", settings.auth, ", ".join(sorted(plans.by_name)))
    try:
        yield
    finally:
        await runtime.run_blocking(VOICES_DB_POOL, database.dispose)


async def _mark_draining(app: web.Application) -> None:
    app[STATE_KEY].draining = True


async def drain(app: web.Application, grace_s: float | None = None) -> bool:
    """Stop admitting sessions (/readyz 503) and wait up to ``grace_s`` (default: the settings'
    ``shutdown_grace_s``) for running ones to end. Returns whether none are left."""
    state, sessions = app[STATE_KEY], app[METRICS_KEY]
    grace = app[SETTINGS_KEY].shutdown_grace_s if grace_s is None else grace_s
    if not state.draining:
        state.draining = True
        registry = app.get(SESSIONS_KEY)
        told = registry.announce_draining(grace) if registry is not None else 0
        log.info("draining: no new sessions; %d running, %d told to move", sessions.active_sessions, told)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    # sessions end on any thread (the count is thread-safe); polling it is simpler than an event per loop
    while sessions.active_sessions > 0 and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    left = sessions.active_sessions
    if left:
        log.warning("%d session(s) still running after %.0f s: closing them", left, grace)
    return left == 0


@operation(
    "metrics",
    "Prometheus metrics (text exposition format)",
    {200: reply("metrics", Media("text/plain"))},
)
async def metrics(request: web.Request) -> web.Response:
    service_metrics = request.app[METRICS_KEY]
    return web.Response(
        body=service_metrics.render(), headers={hdrs.CONTENT_TYPE: service_metrics.content_type}
    )


@operation(
    "index",
    "The browser client's page",
    {
        200: reply("the page", Media("text/html")),
        404: error("not_found: the browser client is not installed"),
    },
)
async def index(request: web.Request) -> web.StreamResponse:
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        raise web.HTTPNotFound(text="the browser client is not installed (no static/index.html)")
    return web.FileResponse(page)
