"""A call's heartbeat in the usage ledger runs on the meter's own timer: a call whose statistics stop
(no ``observe`` at all) is still written to, so it goes on counting against its plan's concurrent
calls past the stale window, and its latest figure is carried; the heartbeat ends with the call.
Real ledgers on SQLite and PostgreSQL; intervals shortened so that the stale window passes quickly."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa

from tenants_harness import tenant_keys
from vcstream.service.auth import Principal
from vcstream.service.db.models import CallUsageRecord
from vcstream.service.metrics import ServiceMetrics
from vcstream.service.signalling.call_meter import CallMeter
from vcstream.service.tenancy.metering import LimitReachedError, UsageLedger
from vcstream.service.tenancy.plans import load_plans
from vcstream.service.tenancy.store import TenantStore
from waiting import wait_until_async

T = TypeVar("T")
ONE_CALL = {"default": "solo", "plans": {"solo": {"concurrent_calls": 1}}}
#: a call not written to for this long no longer counts (the service's is 15 s)
STALE_S = 1.0
#: the heartbeat's interval (the service's is 5 s)
RECORD_EVERY_S = 0.2


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(fn, *args)


def test_a_call_whose_statistics_stop_keeps_counting_against_the_limit(
    tmp_path: Path, database_url: str
) -> None:
    operator = tmp_path / "operator"
    tenant_keys(operator, "Acme", plans=ONE_CALL, database_url=database_url)
    plans = load_plans(operator / "plans.json")
    database = sa.create_engine(database_url)
    tenant = TenantStore(database, plans).tenant("Acme")
    ledger = UsageLedger(database, plans, "r0", stale_after_s=STALE_S)
    principal = Principal(tenant=tenant, voices=None, may_manage_voices=True, via="key")

    def row(call_id: str) -> CallUsageRecord:
        with sa.orm.Session(database) as session:
            found = session.get(CallUsageRecord, call_id)
            assert found is not None
            return found

    async def main() -> None:
        meter = CallMeter(
            ledger, in_thread, principal, "passthrough", ServiceMetrics(), record_every_s=RECORD_EVERY_S
        )
        await meter.start()
        started = (await asyncio.to_thread(row, meter.id)).started_at

        # no statistics at all: the heartbeat alone keeps the row fresh past the stale window
        async def written_past_the_window() -> bool:
            current = await asyncio.to_thread(row, meter.id)
            return (current.updated_at - started).total_seconds() > 2 * STALE_S

        await wait_until_async(written_past_the_window, 10 * STALE_S, "heartbeats past the stale window")
        with pytest.raises(LimitReachedError) as refused:
            await asyncio.to_thread(ledger.start_call, "second", tenant, "passthrough")
        assert refused.value.code == "call_limit"

        # a figure the statistics report is carried by the next heartbeat
        assert meter.observe(object(), 3.5) is None
        await wait_until_async(
            lambda: asyncio.to_thread(lambda: row(meter.id).converted_s == 3.5), 10, "the figure written"
        )

        await meter.end("hung up")
        ended = await asyncio.to_thread(row, meter.id)
        assert ended.ended_at is not None and ended.end_reason == "hung up" and ended.converted_s == 3.5
        assert asyncio.all_tasks() == {asyncio.current_task()}  # the heartbeat ended with the call
        await asyncio.to_thread(ledger.start_call, "third", tenant, "passthrough")  # the place is free

    try:
        asyncio.run(main())
    finally:
        database.dispose()
