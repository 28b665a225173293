"""Who is asking: the ``Principal`` behind a request or a call's ``hello``.

``auth=open`` (one local library): everyone is the open principal, as before tenants existed.
``auth=required``: the REST API takes ``Authorization: Bearer <API key or access token>``; a call's
``hello`` takes ``"token"``. Failed attempts cost the client's address from a small budget, and an
address out of budget gets 429 before its credential is even looked at (guessing keys is slow). No
credential appears in any log or error message."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from aiohttp import hdrs, web

from vcstream.service.budget import AddressBudget
from vcstream.service.forwarded import TrustedProxies
from vcstream.service.tenancy import tokens
from vcstream.service.tenancy.api_keys import looks_like_key
from vcstream.service.tenancy.store import Tenant, TenantStore

log = logging.getLogger(__name__)

T = TypeVar("T")


class BlockingRunner(Protocol):
    """Runs a blocking function off the event loop (the runtime's database pool)."""

    def __call__(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]: ...


#: failed attempts an address may make in a burst, then one every 6 s
FAILURE_BURST = 10
FAILURES_PER_S = 1 / 6


@dataclass(frozen=True)
class Principal:
    #: None: the open server's own library
    tenant: Tenant | None
    #: voices an access token limits its holder to (None: every voice of the tenant)
    voices: frozenset[str] | None
    may_manage_voices: bool
    #: "open", "key" or "token"
    via: str

    @property
    def tenant_id(self) -> str | None:
        return None if self.tenant is None else self.tenant.id

    def may_use(self, voice_id: str) -> bool:
        return self.voices is None or voice_id in self.voices


OPEN = Principal(tenant=None, voices=None, may_manage_voices=True, via="open")


class AuthError(Exception):
    """A refused credential: HTTP status, machine code, a sentence (never the credential)."""

    def __init__(self, status: int, code: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after_s = status, code, message, retry_after_s


class Authenticator:
    def __init__(
        self,
        mode: str,
        token_secret: str | None,
        store: TenantStore | None,
        proxies: TrustedProxies,
        blocking: BlockingRunner | None = None,
    ) -> None:
        self.mode = mode
        self._secret = token_secret
        self._store = store
        self._proxies = proxies
        self._blocking = blocking
        self._failures = AddressBudget(FAILURES_PER_S, FAILURE_BURST)

    @property
    def open(self) -> bool:
        return self.mode == "open"

    @property
    def token_secret(self) -> str | None:
        return self._secret

    async def run_blocking(self, fn: Callable[..., T], *args: object) -> T:
        """``fn`` in the database pool (directly when none was given)."""
        return await self._run(fn, *args)

    def client_address(self, request: web.Request) -> str:
        return self._proxies.client(request.remote, request.headers.getall(hdrs.X_FORWARDED_FOR, []))

    async def of_request(self, request: web.Request) -> Principal:
        """The principal of a REST request's ``Authorization`` header; AuthError if there is none."""
        if self.open:
            return OPEN
        address = self.client_address(request)
        header = request.headers.get(hdrs.AUTHORIZATION, "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise AuthError(401, "unauthorized", "send Authorization: Bearer <API key or access token>")
        return await self.of_credential(credential.strip(), address)

    async def of_credential(self, credential: str, address: str) -> Principal:
        """An API key's or an access token's principal; a failure is charged to ``address``."""
        if self.open:
            return OPEN
        wait = self._failures.blocked_s(address)
        if wait is not None:
            raise AuthError(429, "too_many_failures", "too many failed credentials; try again later", wait)
        try:
            return await self._check(credential)
        except AuthError:
            self._failures.take(address)
            log.info("refused a credential from %s", address)  # which one is never logged
            raise

    async def _check(self, credential: str) -> Principal:
        assert self._store is not None and self._secret is not None  # required mode has both
        if looks_like_key(credential):
            tenant = await self._run(self._store.authenticate, credential)
            if tenant is None:
                raise AuthError(
                    401, "unauthorized", "the API key is not valid (unknown, revoked or mistyped)"
                )
            return Principal(tenant, None, may_manage_voices=True, via="key")
        try:
            grant = tokens.verify(self._secret, credential)
        except tokens.InvalidTokenError as exc:
            raise AuthError(401, "unauthorized", str(exc)) from None
        tenant = await self._run(self._store.tenant_by_id, grant.tenant_id)
        if tenant is None:
            raise AuthError(401, "unauthorized", "the access token's tenant no longer exists")
        return Principal(tenant, grant.voices, grant.may_manage_voices, via="token")

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        if self._blocking is None:
            return fn(*args)
        return await self._blocking(fn, *args)
