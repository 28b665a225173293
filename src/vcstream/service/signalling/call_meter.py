"""One call's place in the usage ledger (``vcstream.service.tenancy.metering``): admitted at the offer
under the tenant's plan, its converted seconds written every few seconds while it runs and at its end,
and its minute allowance watched: a warning a minute before it runs out, the end of the call when it
has. The ledger's calls block on the database, so they run in the registry's pool; a failed write is
logged and the call goes on (the next write carries the whole figure again).

The running writes are the call's heartbeat (a call not written to for a while no longer counts
against the plan's concurrent calls), so they run on a timer of the meter's own: the statistics
loop only reports the figures, and a call whose statistics stall still counts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from vcstream.service.auth import Principal
from vcstream.service.metrics import ServiceMetrics
from vcstream.service.signalling.protocol import SignallingError
from vcstream.service.tenancy.metering import RECORD_EVERY_S, LimitReachedError, UsageLedger

log = logging.getLogger(__name__)

T = TypeVar("T")
#: how long before the allowance runs out the caller is warned
WARN_BEFORE_END_S = 60.0


class CallMeter:
    def __init__(
        self,
        ledger: UsageLedger,
        blocking: Callable[..., Awaitable[Any]],
        principal: Principal,
        engine: str,
        metrics: ServiceMetrics,
        *,
        record_every_s: float = RECORD_EVERY_S,
    ) -> None:
        self._ledger = ledger
        self._record_every_s = record_every_s
        self._heartbeat: asyncio.Task[None] | None = None
        self._blocking = blocking
        self._principal = principal
        self._engine = engine
        self._metrics = metrics
        #: the plan's name in metrics ("open": a server without tenants)
        self.plan = "open" if principal.tenant is None else principal.tenant.plan
        #: converted seconds already counted in the metrics
        self._counted_s = 0.0
        #: the usage row's id: unique across replicas
        self.id = secrets.token_hex(16)
        self._seconds_left: float | None = None
        self._warned = False
        self.started = False
        self._ended = False
        #: why the call ended, as the connection closed it (written with the final figure)
        self.end_reason = "ended"
        #: converted seconds of the call's earlier sessions (settings changes re-open the session and
        #: its counter starts at 0), the current session and its last figure
        self._before_s = 0.0
        self._session: int | None = None
        self._session_s = 0.0

    @property
    def converted_s(self) -> float:
        return self._before_s + self._session_s

    async def start(self) -> None:
        """Admits and records the call; a SignallingError (fatal) when the plan does not allow it."""
        try:
            allowance = await self._blocking(
                self._ledger.start_call, self.id, self._principal.tenant, self._engine
            )
        except LimitReachedError as exc:
            self._metrics.plan_refused(self.plan, exc.code)
            raise SignallingError(exc.code, str(exc), fatal=True) from exc
        self._seconds_left = allowance.seconds_left
        self.started = True
        self._heartbeat = asyncio.create_task(self._beat(), name=f"usage-{self.id}")

    async def _beat(self) -> None:
        """The call's figure written every ``record_every_s`` until it ends, whatever else runs."""
        while True:
            await asyncio.sleep(self._record_every_s)
            converted_s = self.converted_s
            try:
                await self._blocking(self._ledger.record, self.id, converted_s)
            except Exception:
                log.exception("call %s: writing its usage failed (the next write carries it)", self.id)
            self._count(converted_s)

    def observe(self, session: object, session_s: float) -> str | None:
        """The converted seconds of the call's current ``session`` (each stats sample; the
        heartbeat writes the latest). Returns ``"warn"`` once when a minute is left, ``"end"`` when
        the allowance is used up, else None."""
        if not self.started or self._ended:
            return None
        # the session's id, not the session: a finished call's engine session must not live on here
        # (and a counter that went back is a new session even if its id was reused)
        if id(session) != self._session or session_s < self._session_s:
            self._before_s += self._session_s
            self._session, self._session_s = id(session), 0.0
        self._session_s = session_s
        left = self.seconds_left(self.converted_s)
        if left is None:
            return None
        if left <= 0:
            self._metrics.plan_refused(self.plan, "minutes_used_up")
            return "end"
        if left <= WARN_BEFORE_END_S and not self._warned:
            self._warned = True
            return "warn"
        return None

    def seconds_left(self, converted_s: float) -> float | None:
        return None if self._seconds_left is None else self._seconds_left - converted_s

    async def end(self, reason: str | None = None) -> None:
        """The call's final figure (as of its last sample: at most one stats interval short)."""
        reason = reason or self.end_reason
        if not self.started or self._ended:
            return
        self._ended = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        self._count(self.converted_s)
        try:
            await self._blocking(self._ledger.end_call, self.id, self.converted_s, reason)
        except Exception:
            log.exception("call %s: writing its final usage failed (%.1f s)", self.id, self.converted_s)

    def _count(self, converted_s: float) -> None:
        self._metrics.metered(self.plan, converted_s - self._counted_s)
        self._counted_s = max(self._counted_s, converted_s)
