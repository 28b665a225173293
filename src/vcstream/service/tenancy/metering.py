"""Metering and the limits that depend on it, on the database every replica shares.

A call is admitted by ``start_call`` in one transaction that holds the tenant's row (``TenantTurns``:
``SELECT ... FOR UPDATE``), so two replicas racing for a tenant's last place are served one after the
other and the second sees the first's call.

While a call runs its converted seconds are written every few seconds (``record``): a replica that
crashes loses at most that much, and the write is the call's heartbeat: calls not written to for
``stale_after_s`` no longer count against the concurrent limit (their replica is gone). ``end_call``
writes the final figure. Usage is reported per day of the call's start (UTC) and per month."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from vcstream.errors import VcstreamError
from vcstream.service.db.models import CallUsageRecord
from vcstream.service.tenancy.plans import Plans
from vcstream.service.tenancy.store import Tenant
from vcstream.service.tenancy.tenant_turns import TenantTurns

#: how often a running call's converted seconds are written (at most this much is lost in a crash)
RECORD_EVERY_S = 5.0


class LimitReachedError(VcstreamError):
    """A call the tenant's plan does not allow now; ``code`` is the signalling error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class CallAllowance:
    #: converted seconds left this month when the call started; None = no minute limit
    seconds_left: float | None


@dataclass(frozen=True)
class DayUsage:
    day: date
    calls: int
    converted_s: float


@dataclass(frozen=True)
class MonthUsage:
    tenant_id: str | None
    month: str  # YYYY-MM
    days: list[DayUsage]
    #: the plan's monthly minutes (None: no limit, or an open server)
    allowance_minutes: float | None

    @property
    def converted_s(self) -> float:
        return sum(day.converted_s for day in self.days)

    @property
    def calls(self) -> int:
        return sum(day.calls for day in self.days)

    def document(self) -> dict[str, object]:
        """As JSON (``vcstream usage --format json`` and ``GET /api/usage``)."""
        return {
            "month": self.month,
            "converted_s": round(self.converted_s, 3),
            "calls": self.calls,
            "allowance_minutes": self.allowance_minutes,
            "days": [
                {"day": d.day.isoformat(), "calls": d.calls, "converted_s": d.converted_s} for d in self.days
            ],
        }


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """``"2026-11"`` -> its first instant and the next month's, UTC; a bad month is a ValueError."""
    first = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    following = (first + timedelta(days=32)).replace(day=1)
    return first, following


def month_of(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m")


class UsageLedger:
    def __init__(
        self, database: sa.Engine, plans: Plans, replica: str, *, stale_after_s: float = 3 * RECORD_EVERY_S
    ) -> None:
        self.plans = plans
        self.replica = replica
        self.stale_after_s = stale_after_s
        self._sessions = sessionmaker(database, expire_on_commit=False)
        self._turns = TenantTurns(database)

    def start_call(
        self, call_id: str, tenant: Tenant | None, engine: str, now: datetime | None = None
    ) -> CallAllowance:
        """Records the call's start if the tenant's plan allows another call now; else LimitReachedError."""
        now = now or datetime.now(UTC)
        plan = None if tenant is None else self.plans.get(tenant.plan)
        seconds_left: float | None = None
        # every admission for this tenant, on any replica, waits here for the one before it
        with self._turns.transaction(None if tenant is None else tenant.id) as session:
            if tenant is not None and plan is not None:
                if plan.concurrent_calls is not None:
                    running = session.scalar(
                        sa.select(sa.func.count())
                        .select_from(CallUsageRecord)
                        .where(
                            CallUsageRecord.tenant_id == tenant.id,
                            CallUsageRecord.ended_at.is_(None),
                            CallUsageRecord.updated_at >= now - timedelta(seconds=self.stale_after_s),
                        )
                    )
                    if (running or 0) >= plan.concurrent_calls:
                        raise LimitReachedError(
                            "call_limit",
                            f"the {plan.name} plan allows {plan.concurrent_calls} call(s) at a time; "
                            "end another call first",
                        )
                if plan.monthly_minutes is not None:
                    used = self._converted_s(session, tenant.id, *month_bounds(month_of(now)))
                    seconds_left = plan.monthly_minutes * 60 - used
                    if seconds_left <= 0:
                        raise LimitReachedError(
                            "minutes_used_up",
                            f"this month's {plan.monthly_minutes:g} minutes of the {plan.name} plan "
                            "are used up",
                        )
            session.add(
                CallUsageRecord(
                    id=call_id,
                    tenant_id=None if tenant is None else tenant.id,
                    plan=None if plan is None else plan.name,
                    engine=engine,
                    replica=self.replica,
                    started_at=now,
                    updated_at=now,
                    converted_s=0.0,
                )
            )
        return CallAllowance(seconds_left)

    def record(self, call_id: str, converted_s: float, now: datetime | None = None) -> None:
        """The call's converted seconds so far (and its heartbeat)."""
        self._update(call_id, converted_s=converted_s, updated_at=now or datetime.now(UTC))

    def end_call(self, call_id: str, converted_s: float, reason: str, now: datetime | None = None) -> None:
        moment = now or datetime.now(UTC)
        self._update(
            call_id, converted_s=converted_s, updated_at=moment, ended_at=moment, end_reason=reason[:64]
        )

    def _update(self, call_id: str, **values: object) -> None:
        with self._sessions.begin() as session:
            session.execute(
                sa.update(CallUsageRecord)
                .where(CallUsageRecord.id == call_id, CallUsageRecord.ended_at.is_(None))
                .values(**values)
            )

    def month(self, tenant: Tenant | None, month: str) -> MonthUsage:
        first, following = month_bounds(month)
        tenant_id = None if tenant is None else tenant.id
        with self._sessions() as session:
            rows = session.execute(
                sa.select(CallUsageRecord.started_at, CallUsageRecord.converted_s).where(
                    _tenant_is(tenant_id),
                    CallUsageRecord.started_at >= first,
                    CallUsageRecord.started_at < following,
                )
            )
            calls: dict[date, int] = defaultdict(int)
            seconds: dict[date, float] = defaultdict(float)
            for started_at, converted_s in rows:
                day = (started_at if started_at.tzinfo else started_at.replace(tzinfo=UTC)).date()
                calls[day] += 1
                seconds[day] += converted_s
        allowance = None if tenant is None else self.plans.get(tenant.plan).monthly_minutes
        days = [DayUsage(day, calls[day], round(seconds[day], 3)) for day in sorted(calls)]
        return MonthUsage(tenant_id, month, days, allowance)

    @staticmethod
    def _converted_s(session: sa.orm.Session, tenant_id: str, first: datetime, following: datetime) -> float:
        total = session.scalar(
            sa.select(sa.func.coalesce(sa.func.sum(CallUsageRecord.converted_s), 0.0)).where(
                CallUsageRecord.tenant_id == tenant_id,
                CallUsageRecord.started_at >= first,
                CallUsageRecord.started_at < following,
            )
        )
        return float(total or 0.0)


def _tenant_is(tenant_id: str | None) -> sa.ColumnElement[bool]:
    column = CallUsageRecord.tenant_id
    return column.is_(None) if tenant_id is None else column == tenant_id
