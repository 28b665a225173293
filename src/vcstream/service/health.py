"""Liveness and readiness: /healthz (the process answers) and /readyz (the engine is loaded and warm,
the server is not draining and a session place is free), plus the admission rule for new sessions.

Readiness includes capacity so that a balancer health-checking /readyz stops sending new calls to a
full replica (its running calls are not affected: WebSockets already open stay where they are).

``ServiceState`` is the part of the application that changes after start-up (warm-up finishing,
draining on SIGTERM). aiohttp freezes an application's keys once it starts, so the state lives in one
mutable object under ``STATE_KEY`` instead of in keys that would be reassigned.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from vcstream.service.keys import ADMISSION_KEY
from vcstream.service.openapi import error, operation, reply
from vcstream.service.schemas import Alive, ErrorBody, Ready, json_reply


@dataclass
class ServiceState:
    """What /readyz and session admission look at. Written on the event loop thread only."""

    #: one block went through a session of the loaded engine
    warm: bool = False
    #: why warm-up failed, if it did (the server then stays unready)
    warm_error: str | None = None
    #: SIGTERM (or shutdown) was received: no new sessions, /readyz answers 503
    draining: bool = False

    def not_ready_reason(self) -> str | None:
        if self.draining:
            return "the server is shutting down (draining sessions)"
        if self.warm_error is not None:
            return f"engine warm-up failed: {self.warm_error}"
        if not self.warm:
            return "the engine is warming up"
        return None


STATE_KEY: web.AppKey[ServiceState] = web.AppKey("state", ServiceState)


def session_refusal(app: web.Application) -> tuple[str, str] | None:
    """Why a new session must be refused right now, as (reason word for ``session_failed``, message),
    or None when it may start. Call ``ServiceMetrics.session_started`` right after a None, with no
    ``await`` in between. A None only says a place is free now: ``Admission.take`` claims it."""
    state = app[STATE_KEY]
    if state.draining:
        return "draining", "the server is shutting down; try again shortly"
    reason = state.not_ready_reason()
    if reason is not None:
        return "not_ready", reason
    admission = app[ADMISSION_KEY]
    if admission.choose() is None:
        return "full", f"all {admission.places} session places are taken; try again later"
    return None


def readiness_problem(app: web.Application) -> str | None:
    """Why /readyz answers 503 now (warming, warm-up failed, draining, or full), None when ready."""
    reason = app[STATE_KEY].not_ready_reason()
    if reason is not None:
        return reason
    admission = app[ADMISSION_KEY]
    if admission.choose() is None:
        return f"the server is full: all {admission.places} session places are taken"
    return None


@operation("healthz", "Liveness: the process answers", {200: reply("alive", Alive)})
async def healthz(request: web.Request) -> web.Response:
    return json_reply(Alive())


@operation(
    "readyz",
    "Readiness: engine loaded and warm, not draining, a session place free",
    {
        200: reply("ready for sessions", Ready),
        503: error("not_ready: warming up, warm-up failed, shutting down, or full"),
    },
)
async def readyz(request: web.Request) -> web.Response:
    reason = readiness_problem(request.app)
    if reason is not None:
        return json_reply(ErrorBody(error="not_ready", message=reason), 503)
    return json_reply(Ready())


def setup(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
