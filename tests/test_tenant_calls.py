"""Calls of a paid service (``--auth required``) through real WebRTC calls: hello needs an access
token, the page's Origin is checked, a plan's concurrent-call limit refuses a second call, a call's
converted seconds are written while it runs, the caller is warned before its minutes run out and the
call ends when they have; the next call is refused at once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import sqlalchemy as sa

from tenants_harness import TOKEN_SECRET, tenant_keys
from vcstream.engines.passthrough import PassthroughEngine
from vcstream.service.db.models import CallUsageRecord
from vcstream.service.origins import origin_allowed
from waiting import wait_until_async
from webrtc_harness import PyClient, Server, client, reference_wav, serving, speech_48k

Speech = Callable[..., tuple[np.ndarray, int]]
SECRET = TOKEN_SECRET  # the name test_token_backend imports
#: a plan that runs out within a test: one call at a time, 6 s a month
PLANS = {"default": "tiny", "plans": {"tiny": {"concurrent_calls": 1, "monthly_minutes": 0.1}}}


def test_origins() -> None:
    assert origin_allowed(None, "a.example:8080", ())  # not a browser
    assert origin_allowed("http://a.example:8080", "a.example:8080", ())
    assert origin_allowed("https://a.example", "a.example", ())
    assert not origin_allowed("https://evil.example", "a.example", ())
    assert not origin_allowed("http://a.example:9999", "a.example:8080", ())
    assert not origin_allowed("null", "a.example", ())
    assert origin_allowed("https://shop.example", "api.example", ("https://shop.example",))
    assert not origin_allowed("https://a.example", "a.example", ("https://shop.example",))


def paid_service(data: Path) -> str:
    """A tenant on the tiny plan and its API key, in ``data``'s database (plans in plans.json)."""
    (key,) = tenant_keys(data, "Acme", plans=PLANS)
    return key


def serving_plans(data: Path) -> AbstractAsyncContextManager[Server]:
    """A passthrough server with auth required and the plans written in ``data`` (plans.json)."""
    plans = data / "plans.json"
    return serving(data, running=PassthroughEngine(), auth="required", token_secret=SECRET, plans_file=plans)


async def upload(server: Server, key: str, path: Path) -> str:
    form = aiohttp.FormData()
    form.add_field("name", "awb")
    form.add_field(
        "file", await asyncio.to_thread(path.read_bytes), filename=path.name, content_type="audio/wav"
    )
    headers = {"Authorization": f"Bearer {key}"}
    async with server.http.post(f"{server.base}/api/voices", data=form, headers=headers) as response:
        assert response.status == 201, await response.text()
        return str((await response.json())["id"])


async def token(server: Server, key: str) -> str:
    headers = {"Authorization": f"Bearer {key}"}
    async with server.http.post(
        f"{server.base}/api/tokens", json={"ttl_s": 120}, headers=headers
    ) as response:
        assert response.status == 201, await response.text()
        return str((await response.json())["token"])


async def hello(call: PyClient, **fields: object) -> dict[str, object]:
    await call.send("hello", **fields)
    call.ready = await call.receive()
    return call.ready


def usage_rows(data: Path) -> list[CallUsageRecord]:
    database = sa.create_engine(f"sqlite:///{data / 'vcstream.db'}")
    try:
        with database.connect() as connection:
            return list(connection.execute(sa.select(CallUsageRecord)).all())  # type: ignore[arg-type]
    finally:
        database.dispose()


def test_a_paid_call_needs_a_token_is_limited_metered_and_ended_when_minutes_run_out(
    tmp_path: Path, flite_speech: Speech
) -> None:
    data = tmp_path / "data"
    key = paid_service(data)
    speech = speech_48k(flite_speech, "slt")

    async def main() -> None:
        async with serving_plans(data) as server:
            voice = await upload(server, key, reference_wav(tmp_path, flite_speech, "awb"))
            async with client(server) as anonymous:
                refused = await hello(anonymous)
                assert refused["type"] == "error" and refused["code"] == "unauthorized", refused
            async with client(server) as forged:
                refused = await hello(forged, token=SECRET)
                assert refused["code"] == "unauthorized" and SECRET not in json.dumps(refused)
            hijack = await server.http.get(
                server.ws_url.replace("ws://", "http://"),
                headers={"Origin": "https://evil.example", "Upgrade": "websocket", "Connection": "Upgrade"},
            )
            assert hijack.status == 403 and (await hijack.json())["error"] == "origin_not_allowed"

            async with client(server) as first, client(server) as second:
                assert (await hello(first, token=await token(server, key)))["type"] == "ready"
                await first.start(voice, settings={"block_time": 0.1})
                await first.talk_until_converted(speech)
                # the plan allows one call at a time: the second is refused at its offer
                assert (await hello(second, token=await token(server, key)))["type"] == "ready"
                await second.start(voice, settings={"block_time": 0.1})
                await wait_until_async(lambda: second.of_type("error"), 10, "the second call refused")
                assert second.of_type("error")[0]["code"] == "call_limit", second.of_type("error")

                # 6 s a month: warned at once (under a minute left), ended once 6 s are converted
                talking = asyncio.create_task(first.talk(speech, first.closed.is_set, 20))
                await wait_until_async(lambda: first.of_type("warning"), 10, "the minutes warning")
                assert first.of_type("warning")[0]["code"] == "minutes_ending"
                running = await asyncio.to_thread(usage_rows, data)
                await wait_until_async(first.closed.is_set, 15, "the call ended by its allowance")
                await talking
                errors = first.of_type("error")
                assert errors and errors[-1]["code"] == "minutes_used_up", errors
                stats = first.of_type("stats")
                assert stats and stats[-1]["output_ms"] >= 5000, stats[-1:]

            # the next call is refused at once: the month's minutes are used up
            async with client(server) as third:
                assert (await hello(third, token=await token(server, key)))["type"] == "ready"
                await third.start(voice, settings={"block_time": 0.1})
                await wait_until_async(lambda: third.of_type("error"), 10, "the third call refused")
                assert third.of_type("error")[0]["code"] == "minutes_used_up"

            ended = await asyncio.to_thread(usage_rows, data)
            async with server.http.get(f"{server.base}/metrics") as response:
                metrics = await response.text()

        # Prometheus counts by plan (never by tenant)
        assert 'vcstream_plan_refusals_total{plan="tiny",reason="call_limit"} 1.0' in metrics
        assert (
            'vcstream_plan_refusals_total{plan="tiny",reason="minutes_used_up"} 2.0' in metrics
        )  # ended, refused
        (metered,) = [
            line for line in metrics.splitlines() if line.startswith("vcstream_converted_seconds_total")
        ]
        assert 'plan="tiny"' in metered and 6.0 <= float(metered.split()[-1]) < 8.0, metered

        (row_while_running,) = [r for r in running if r.ended_at is None]
        assert row_while_running.converted_s >= 0 and row_while_running.tenant_id is not None
        (call,) = [r for r in ended if r.converted_s > 0]
        print(f"\nmetered: {call.converted_s:.2f} s converted, ended: {call.end_reason}")
        assert call.end_reason == "minutes_used_up"
        assert 6.0 <= call.converted_s < 8.0, call.converted_s
        assert call.ended_at is not None and call.plan == "tiny"

    asyncio.run(main())


@pytest.mark.parametrize("origin", ["https://evil.example"])
def test_the_open_server_checks_the_origin_too(tmp_path: Path, origin: str) -> None:
    async def main() -> None:
        async with serving(tmp_path / "data", running=PassthroughEngine()) as server:
            ws = await server.http.ws_connect(server.ws_url, origin=server.base)
            await ws.close()
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await server.http.ws_connect(server.ws_url, origin=origin)
            assert refused.value.status == 403

    asyncio.run(main())


#: one call at a time, no minute limit
ONE_CALL_PLANS = {"default": "solo", "plans": {"solo": {"concurrent_calls": 1}}}
#: hang-ups each followed at once by a redial (each one a chance for the race)
REDIALS = 3


def answered_or_refused(call: PyClient) -> Callable[[], bool]:
    return lambda: bool(call.of_type("error")) or call.events.first_audio is not None


def test_a_call_redialled_at_once_after_a_hang_up_is_admitted_on_a_one_call_plan(
    tmp_path: Path, flite_speech: Speech
) -> None:
    """The hung-up call's end is in the ledger by the time the client's hang-up completes (the
    server's close frame follows the write), so the redial finds the plan's one place free: the next
    call's offer is ready before the hang-up and sent the moment it completes."""
    data = tmp_path / "data"
    (key,) = tenant_keys(data, "Acme", plans=ONE_CALL_PLANS)
    speech = speech_48k(flite_speech, "slt")

    async def main() -> None:
        async with serving_plans(data) as server:
            voice = await upload(server, key, reference_wav(tmp_path, flite_speech, "awb"))
            calls: list[PyClient] = []
            hung_up_at: list[datetime] = []

            async def dialled() -> PyClient:
                calls.append(PyClient(await server.http.ws_connect(server.ws_url)))
                assert (await calls[-1].hello(await token(server, key)))["type"] == "ready"
                return calls[-1]

            try:
                current = await dialled()
                await current.start(voice, {"block_time": 0.1})
                await current.talk_until_converted(speech)
                for _ in range(REDIALS):
                    redial = await dialled()
                    await redial.prepare_offer()
                    await current.ws.close()  # hung up: the close handshake has completed
                    hung_up_at.append(datetime.now(UTC).replace(tzinfo=None))  # as SQLite keeps it
                    await redial.send_offer(voice, {"block_time": 0.1})
                    await current.close()
                    await redial.talk(speech, answered_or_refused(redial), 10)
                    assert not redial.of_type("error"), redial.of_type("error")
                    assert redial.events.first_audio is not None, redial.messages[-3:]
                    current = redial
            finally:
                for call in calls:
                    await call.close()

        rows = sorted(await asyncio.to_thread(usage_rows, data), key=lambda r: r.started_at)
        assert len(rows) == 1 + REDIALS and all(r.ended_at is not None for r in rows), rows
        # each hung-up call's end was in the ledger before its hang-up completed
        ends = [r.ended_at for r in rows[:REDIALS] if r.ended_at is not None]
        margins_ms = [(hung - end).total_seconds() * 1000 for end, hung in zip(ends, hung_up_at, strict=True)]
        print(f"\nend written {[f'{m:.1f}' for m in margins_ms]} ms before the hang-up completed")
        assert all(m >= 0 for m in margins_ms), margins_ms
        print(
            f"\n{REDIALS} redials at once after a hang-up admitted; ended as {[r.end_reason for r in rows]}"
        )

    asyncio.run(main())
