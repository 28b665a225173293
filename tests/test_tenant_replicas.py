"""A tenant's limits hold across replicas: two real ``vcstream serve`` processes (auth required,
passthrough engine) on one PostgreSQL database, started once for the module, and a tenant whose plan
allows one call at a time. Callers are real WebRTC calls (``PyClient``) whose offers reach both
replicas in the same instant: exactly one is admitted, the others are refused with ``call_limit``;
once the admitted call hangs up the next is admitted; once its replica is killed (SIGKILL: no hang-up
is ever written) the tenant's place comes back when the call's heartbeat is older than the stale
window, not before. Voice names are unique per owner in the database: the same name uploaded through
both replicas in the same instant is stored once."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
import sqlalchemy as sa

from cluster_harness import Replica
from conftest import Speech
from ports import free_port
from postgres_harness import created_database
from tenants_harness import TOKEN_SECRET, tenant_keys
from vcstream.audio.types import Audio
from vcstream.service.db.models import CallUsageRecord, VoiceRecord
from vcstream.service.signalling.registry import CONNECTS_PER_S
from vcstream.service.tenancy.metering import RECORD_EVERY_S
from waiting import wait_until, wait_until_async
from webrtc_harness import PyClient, reference_wav, speech_48k

#: one call at a time, nothing else limited
PLANS = {"default": "single", "plans": {"single": {"concurrent_calls": 1}}}
REPLICAS = 2
CALLERS_PER_REPLICA = 2
ROUNDS = 5
#: the ledger's default: a call not written to for this long no longer counts (its replica is gone)
STALE_AFTER_S = 3 * RECORD_EVERY_S
#: simultaneous uploads of one voice name through both replicas
NAME_ROUNDS = 4
#: a call's offer answered (admitted) or refused, on this shared 2-core machine
DECIDED_WITHIN_S = 15.0
#: scheduling on a loaded machine: the place may come back this much after the stale window
STALE_SLACK_S = 3.0


@dataclass
class PaidReplicas:
    replicas: list[Replica]
    database: sa.Engine
    key: str
    voice: str
    tenant_id: str
    speech: Audio
    reference: Path

    def both_up(self) -> None:
        for replica in self.replicas:
            if not replica.alive:
                replica.start()
        for replica in self.replicas:
            replica.wait_ready()

    def running_calls(self) -> list[CallUsageRecord]:
        with self.database.connect() as connection:
            rows = connection.execute(
                sa.select(CallUsageRecord).where(
                    CallUsageRecord.tenant_id == self.tenant_id, CallUsageRecord.ended_at.is_(None)
                )
            )
            return list(rows.all())  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def paid(
    tmp_path_factory: pytest.TempPathFactory, postgres_cluster: str, flite_speech: Speech
) -> Iterator[PaidReplicas]:
    folder = tmp_path_factory.mktemp("paid-replicas")
    with created_database(postgres_cluster, "replicas") as url:
        (key,) = tenant_keys(folder / "operator", "Acme", plans=PLANS, database_url=url)
        replicas = []
        for index in range(REPLICAS):
            home = folder / f"r{index}"
            home.mkdir()
            env = {
                **os.environ,
                "VCSTREAM_HOST": "127.0.0.1",
                "VCSTREAM_PORT": str(free_port()),
                "VCSTREAM_ENGINE": "passthrough",
                "VCSTREAM_MAX_SESSIONS": str(CALLERS_PER_REPLICA + 1),
                "VCSTREAM_DATA_DIR": str(home),
                "VCSTREAM_DATABASE_URL": url,
                "VCSTREAM_AUTH": "required",
                "VCSTREAM_TOKEN_SECRET": TOKEN_SECRET,
                "VCSTREAM_PLANS_FILE": str(folder / "operator" / "plans.json"),
                "VCSTREAM_REPLICA_NAME": f"r{index}",
                "VCSTREAM_WEBRTC_LATENCY_MS": "20",
                "VCSTREAM_LIVE_QUALITY": "0",
            }
            replicas.append(Replica(f"r{index}", int(env["VCSTREAM_PORT"]), home, env))
        database = sa.create_engine(url)
        try:
            started = time.perf_counter()
            for replica in replicas:
                replica.start()
            for replica in replicas:
                replica.wait_ready()
            print(f"\n{REPLICAS} replicas ready in {time.perf_counter() - started:.1f} s")
            reference = reference_wav(folder, flite_speech, "awb")
            voice = asyncio.run(upload(replicas[0], key, reference, "awb"))[1]["id"]
            with database.connect() as connection:
                tenant_id = connection.scalar(sa.select(VoiceRecord.tenant_id).where(VoiceRecord.id == voice))
            assert tenant_id is not None
            yield PaidReplicas(
                replicas, database, key, str(voice), tenant_id, speech_48k(flite_speech, "slt"), reference
            )
        finally:
            for replica in replicas:
                replica.stop()
            database.dispose()


async def upload(replica: Replica, key: str, path: Path, name: str) -> tuple[int, dict[str, object]]:
    form = aiohttp.FormData()
    form.add_field("name", name)
    form.add_field(
        "file", await asyncio.to_thread(path.read_bytes), filename=path.name, content_type="audio/wav"
    )
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{replica.base}/api/voices", data=form, headers=headers) as response,
    ):
        return response.status, await response.json()


async def access_token(http: aiohttp.ClientSession, replica: Replica, key: str) -> str:
    headers = {"Authorization": f"Bearer {key}"}
    async with http.post(f"{replica.base}/api/tokens", json={"ttl_s": 300}, headers=headers) as response:
        assert response.status == 201, await response.text()
        return str((await response.json())["token"])


@dataclass
class Caller:
    replica: Replica
    call: PyClient

    def verdict(self) -> str | None:
        """``admitted`` (the offer was answered), a refusal's code, or None while undecided."""
        if self.call.of_type("answer"):
            return "admitted"
        errors = self.call.of_type("error")
        return str(errors[0]["code"]) if errors else None


async def callers_ready(http: aiohttp.ClientSession, token: str, on: list[Replica]) -> list[Caller]:
    """One caller per replica in ``on``: connected, greeted (``ready``) and holding its offer."""
    callers = [Caller(replica, PyClient(await http.ws_connect(replica.ws_url))) for replica in on]
    for caller in callers:
        ready = await caller.call.hello(token)
        assert ready["type"] == "ready", ready
    await asyncio.gather(*(caller.call.prepare_offer() for caller in callers))
    return callers


async def offer_at_once(callers: list[Caller], voice: str) -> dict[str, list[Caller]]:
    """Every caller's offer sent in the same instant; the callers by verdict once each has one."""
    await asyncio.gather(*(caller.call.send_offer(voice) for caller in callers))
    await wait_until_async(
        lambda: all(caller.verdict() for caller in callers),
        DECIDED_WITHIN_S,
        "every offer admitted or refused",
        state=lambda: [(c.replica.name, c.verdict(), c.call.messages[-2:]) for c in callers],
    )
    verdicts: dict[str, list[Caller]] = {}
    for caller in callers:
        verdicts.setdefault(str(caller.verdict()), []).append(caller)
    return verdicts


async def hang_up(callers: list[Caller]) -> None:
    await asyncio.gather(*(caller.call.close() for caller in callers))


def test_racing_callers_on_two_replicas_get_exactly_one_call_per_round(paid: PaidReplicas) -> None:
    paid.both_up()
    callers_on = [r for r in paid.replicas for _ in range(CALLERS_PER_REPLICA)]

    async def main() -> None:
        async with aiohttp.ClientSession() as http:
            token = await access_token(http, paid.replicas[0], paid.key)
            for round_number in range(1, ROUNDS + 1):
                callers = await callers_ready(http, token, callers_on)
                try:
                    verdicts = await offer_at_once(callers, paid.voice)
                    admitted = verdicts.pop("admitted", [])
                    print(
                        f"\nround {round_number}: {len(callers)} offers on {REPLICAS} replicas at once: "
                        f"admitted on {[c.replica.name for c in admitted]}, refused: "
                        f"{ {code: len(cs) for code, cs in verdicts.items()} }"
                    )
                    assert len(admitted) == 1, (round_number, [c.replica.name for c in admitted])
                    assert set(verdicts) == {"call_limit"}, verdicts
                    (winner,) = admitted
                    # the admitted call is a real one: its converted audio comes back
                    await winner.call.talk_until_converted(paid.speech, timeout_s=DECIDED_WITHIN_S)
                    assert len(await asyncio.to_thread(paid.running_calls)) == 1
                finally:
                    await hang_up(callers)
                # the hang-up is written by the replica after the socket closes: the next round
                # (whose one admission is the check) starts once the ledger holds no running call
                hung_up = time.perf_counter()
                await asyncio.to_thread(
                    wait_until, lambda: not paid.running_calls(), 10, "the hung-up call ended in the ledger"
                )
                print(f"hang-up written after {time.perf_counter() - hung_up:.2f} s")

    asyncio.run(main())


def test_one_voice_name_uploaded_through_both_replicas_at_once_is_stored_once(paid: PaidReplicas) -> None:
    paid.both_up()
    first, second = paid.replicas

    async def main() -> list[tuple[int, dict[str, object]]]:
        outcomes = []
        for n in range(NAME_ROUNDS):
            # one name spelled two ways (case, and a combining diaeresis): one name after NFC + folding
            spellings = (f"Zoë {n}", f"ZOE\u0308 {n}")
            pair = await asyncio.gather(
                upload(first, paid.key, paid.reference, spellings[0]),
                upload(second, paid.key, paid.reference, spellings[1]),
            )
            assert sorted(status for status, _ in pair) == [201, 409], pair
            outcomes += pair
        return outcomes

    outcomes = asyncio.run(main())
    refused = [body for status, body in outcomes if status == 409]
    assert all(body["error"] == "name_taken" for body in refused), refused
    with paid.database.connect() as connection:
        stored = connection.scalars(
            sa.select(VoiceRecord.name).where(
                VoiceRecord.tenant_id == paid.tenant_id, VoiceRecord.name_key.like("zoë %")
            )
        ).all()
    assert len(stored) == NAME_ROUNDS, stored
    # how many pairs were close enough that both passed the replicas' own check (the index decided)
    by_index = sum(r.log.read_text(errors="replace").count("stored by another writer") for r in paid.replicas)
    print(f"\n{NAME_ROUNDS} rounds of one name through both replicas: one 201 and one 409 each; "
          f"{by_index} decided by the database's unique index")  # fmt: skip


def test_a_killed_replicas_call_gives_its_place_back_after_the_stale_window(paid: PaidReplicas) -> None:
    paid.both_up()
    survivor, victim = paid.replicas

    async def main() -> None:
        async with aiohttp.ClientSession() as http:
            token = await access_token(http, survivor, paid.key)
            (held,) = await callers_ready(http, token, [victim])
            talking: asyncio.Task[None] | None = None
            try:
                assert (await offer_at_once([held], paid.voice)).keys() == {"admitted"}
                await held.call.talk_until_converted(paid.speech, timeout_s=DECIDED_WITHIN_S)
                talking = asyncio.create_task(held.call.talk(paid.speech, lambda: False, 60))

                victim.signal(signal.SIGKILL)
                await asyncio.to_thread(victim.wait_exit, 10)
                killed_at = time.perf_counter()
                (orphan,) = await asyncio.to_thread(paid.running_calls)
                # the last heartbeat: from then on the window runs (the replica may be only slow)
                heartbeat = orphan.updated_at.astimezone(UTC)
                comes_back = heartbeat + timedelta(seconds=STALE_AFTER_S)

                attempts: list[tuple[float, str]] = []
                admitted: Caller | None = None
                deadline = killed_at + STALE_AFTER_S + STALE_SLACK_S
                while admitted is None and time.perf_counter() < deadline:
                    # one try at a time, no faster than one address may open signalling connections
                    next_try = time.perf_counter() + 1 / CONNECTS_PER_S
                    (caller,) = await callers_ready(http, token, [survivor])
                    verdict = next(iter(await offer_at_once([caller], paid.voice)))
                    attempts.append((time.perf_counter() - killed_at, verdict))
                    if verdict == "admitted":
                        admitted, admitted_wall = caller, datetime.now(UTC)
                    else:
                        assert verdict == "call_limit", verdict
                        await hang_up([caller])
                        await asyncio.sleep(max(0.0, next_try - time.perf_counter()))
                assert admitted is not None, f"the place did not come back: {attempts}"
                try:
                    back_after_s = attempts[-1][0]
                    refused = [at for at, verdict in attempts if verdict != "admitted"]
                    print(
                        f"\nkill -9: the place came back {back_after_s:.2f} s after the kill "
                        f"({(admitted_wall - heartbeat).total_seconds():.2f} s after the dead call's last "
                        f"heartbeat); {len(refused)} calls refused before, the last at "
                        f"{max(refused, default=0):.2f} s"
                    )
                    assert refused and refused[0] < 2.0, "a call right after the kill must still be refused"
                    # never before the window ran out: the dead call counted until then
                    assert admitted_wall >= comes_back, (admitted_wall, comes_back)
                    assert back_after_s <= STALE_AFTER_S + STALE_SLACK_S
                    await admitted.call.talk_until_converted(paid.speech, timeout_s=DECIDED_WITHIN_S)
                finally:
                    await hang_up([admitted])
            finally:
                if talking is not None:
                    talking.cancel()
                await hang_up([held])

    asyncio.run(main())
    paid.both_up()  # the killed replica back for what follows
