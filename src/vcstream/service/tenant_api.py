"""The tenant's side of the REST API: access tokens for browsers (``POST /api/tokens``) and usage
(``GET /api/usage``), and the middleware that puts a ``Principal`` on every ``/api`` request."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from aiohttp import hdrs, web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vcstream.service.auth import Authenticator, AuthError, Principal
from vcstream.service.openapi import Media, error, operation, reply
from vcstream.service.schemas import Body, ErrorBody, json_reply
from vcstream.service.tenancy import tokens
from vcstream.service.tenancy.metering import UsageLedger, month_bounds
from vcstream.service.tenancy.plans import Plans

AUTH_KEY: web.AppKey[Authenticator] = web.AppKey("authenticator")
LEDGER_KEY: web.AppKey[UsageLedger] = web.AppKey("ledger")
PLANS_KEY: web.AppKey[Plans] = web.AppKey("plans")
#: where a request's principal is kept for its handler
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
#: routes anyone may read, whatever the mode: what the server is, and how to talk to it
PUBLIC_PATHS = frozenset({"/api/info", "/api/openapi.json"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def principal_of(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def voice_limit(request: web.Request) -> int | None:
    """The voices the caller's plan allows (None: no limit, or an open server)."""
    tenant = principal_of(request).tenant
    return None if tenant is None else request.app[PLANS_KEY].get(tenant.plan).voices


@web.middleware
async def authenticated(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every ``/api`` route but the public ones needs a principal; refusals are JSON errors."""
    if request.path.startswith("/api/") and request.path not in PUBLIC_PATHS:
        try:
            request[PRINCIPAL] = await request.app[AUTH_KEY].of_request(request)
        except AuthError as exc:
            headers: dict[str, str] = {}
            if exc.status == 401:
                headers[str(hdrs.WWW_AUTHENTICATE)] = 'Bearer realm="vcstream"'
            if exc.retry_after_s is not None:
                headers[str(hdrs.RETRY_AFTER)] = str(max(1, round(exc.retry_after_s)))
            return json_reply(ErrorBody(error=exc.code, message=exc.message), exc.status, headers)
    return await handler(request)


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    voices: list[str] | None = Field(
        default=None,
        max_length=100,
        description="voice ids the token may use (default: every voice of the tenant)",
    )
    ttl_s: int = Field(
        default=tokens.DEFAULT_TTL_S, ge=10, le=tokens.MAX_TTL_S, description="seconds the token is valid"
    )
    manage_voices: bool = Field(default=False, description="whether the token may add and delete voices")


class TokenReply(Body):
    token: str = Field(description="the access token: the browser sends it in hello and as a Bearer token")
    expires_at: datetime
    tenant_id: str


@operation(
    "createToken",
    "Exchange an API key for a short-lived access token a browser can use",
    {
        201: reply("the token", TokenReply),
        400: error("invalid_request: the body is not a TokenRequest"),
        401: error("unauthorized: no valid API key"),
        403: error("api_key_required: an access token cannot mint tokens; an open server has none"),
    },
    body=("application/json", TokenRequest),
)
async def create_token(request: web.Request) -> web.Response:
    principal = principal_of(request)
    if principal.via != "key" or principal.tenant is None:
        raise web.HTTPForbidden(reason="api_key_required", text="only an API key can mint access tokens")
    try:
        asked = TokenRequest.model_validate_json(await request.read() or b"{}")
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise web.HTTPBadRequest(reason="invalid_request", text=problems) from None
    expires_at = time.time() + asked.ttl_s
    grant = tokens.TokenGrant(
        principal.tenant.id,
        None if asked.voices is None else frozenset(asked.voices),
        asked.manage_voices,
        expires_at,
    )
    secret = request.app[AUTH_KEY].token_secret
    assert secret is not None  # a tenant principal exists only in required mode
    return json_reply(
        TokenReply(
            token=tokens.mint(secret, grant),
            expires_at=datetime.fromtimestamp(int(expires_at), UTC),
            tenant_id=principal.tenant.id,
        ),
        201,
    )


class UsageQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    month: str | None = Field(
        default=None, pattern=r"^\d{4}-\d{2}$", description="YYYY-MM (default: this month)"
    )
    format: str = Field(default="json", pattern="^(json|csv)$")


class DayUsageBody(Body):
    day: str
    calls: int
    converted_s: float


class UsageReply(Body):
    month: str
    converted_s: float
    calls: int
    allowance_minutes: float | None = Field(description="the plan's monthly minutes (null: no limit)")
    days: list[DayUsageBody]


@operation(
    "getUsage",
    "Converted seconds per day of a month, for the caller's tenant",
    {
        200: reply("usage (JSON, or CSV with ?format=csv)", UsageReply, Media("text/csv")),
        400: error("invalid_query: month is not YYYY-MM or format not json/csv"),
        401: error("unauthorized"),
    },
    query=UsageQuery,
)
async def usage(request: web.Request) -> web.Response:
    try:
        query = UsageQuery.model_validate(dict(request.query))
        month = query.month or datetime.now(UTC).strftime("%Y-%m")
        month_bounds(month)
    except (ValidationError, ValueError):
        raise web.HTTPBadRequest(
            reason="invalid_query", text="month is YYYY-MM, format json or csv"
        ) from None
    ledger = request.app[LEDGER_KEY]
    report = await request.app[AUTH_KEY].run_blocking(ledger.month, principal_of(request).tenant, month)
    if query.format == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["day", "calls", "converted_s"])
        for day in report.days:
            writer.writerow([day.day.isoformat(), day.calls, f"{day.converted_s:.3f}"])
        return web.Response(text=out.getvalue(), content_type="text/csv")
    return json_reply(UsageReply.model_validate(report.document()))


def setup(app: web.Application) -> None:
    app.router.add_post("/api/tokens", create_token)
    app.router.add_get("/api/usage", usage)
