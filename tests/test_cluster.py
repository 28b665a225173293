"""The local cluster (issue 9, item 8): three real replicas (passthrough engine, CAPACITY places
each) behind HAProxy, one PostgreSQL database, coturn and Prometheus, started once for the module
(tests/cluster_harness.py). Calls are real WebRTC calls from Python (vcstream.bench.call_client),
opened and re-opened by the client's reconnect policy (vcstream.bench.redial)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa

from cluster_harness import Cluster, Replica, running_cluster
from conftest import Speech, write_wav
from vcstream.bench.call_client import BenchCall, CallRefused, talk
from vcstream.bench.redial import RedialingCall, RedialPolicy, open_call
from vcstream.bench.signals import flite_speech
from vcstream.media.webrtc import OPUS_RATE
from waiting import wait_until, wait_until_async

CAPACITY = 2
GRACE_S = 5.0
#: the issue's bounds: a refusal within 2 s, a killed replica's calls converting elsewhere within 5 s
REFUSED_WITHIN_S = 2.0
RECONNECTED_WITHIN_S = 5.0
#: a call setting up (ICE, DTLS, first converted audio) on this shared 2-core machine
CONVERTING_WITHIN_S = 15.0
#: an undisturbed call: all its audio arrives (within scheduling noise) and no silence is this long.
#: Arrivals are normally 20 ms apart; on this shared 2-core machine, loaded by other work, single
#: gaps of up to ~400 ms were seen with no audio lost. A replica gone or a call moved is seconds.
LONGEST_GAP_S = 0.6
RECEIVED_AT_LEAST = 0.95
#: the other calls' audio is judged over at least this long after a kill (blocks arrive 100 ms at a
#: time: over a quarter of a second one block in flight is already 40% of the window)
UNDISTURBED_WINDOW_S = 2.0
DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "vcstream.json"
#: one try only: what the balancer or a replica answers is what the test looks at
ONE_TRY = RedialPolicy(attempts=1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, postgres_cluster: str) -> Iterator[Cluster]:
    name = f"cluster_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_cluster, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(postgres_cluster).set(database=name).render_as_string(hide_password=False)
    started = time.perf_counter()
    try:
        with running_cluster(
            tmp_path_factory.mktemp("cluster"), url, capacity=CAPACITY, grace_s=GRACE_S
        ) as running:
            print(f"\ncluster up in {time.perf_counter() - started:.1f} s")
            yield running
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, flite_speech: Speech) -> Path:
    folder = tmp_path_factory.mktemp("cluster-voices")
    return write_wav(folder / "slt.wav", *flite_speech("slt", None, 16000))


def upload(base: str, path: Path, name: str) -> str:
    async def post() -> str:
        form = aiohttp.FormData()
        form.add_field("name", name)
        data = await asyncio.to_thread(path.read_bytes)
        form.add_field("file", data, filename=path.name, content_type="audio/wav")
        async with aiohttp.ClientSession() as http, http.post(f"{base}/api/voices", data=form) as response:
            body = await response.json()
            assert response.status == 201, body
            return str(body["id"])

    return asyncio.run(post())


@pytest.fixture(scope="module")
def voice(cluster: Cluster, reference: Path) -> str:
    """A voice every replica can use, uploaded once through the balancer."""
    return upload(cluster.balancer.base, reference, "cluster voice")


@pytest.fixture
def healthy(cluster: Cluster) -> Cluster:
    """The cluster with all three replicas up and in the balancer, and no call left from a test before."""
    cluster.ensure_all_up()
    wait_until(lambda: not any(cluster.sessions().values()), 15, "no session left", state=cluster.sessions)
    return cluster


@asynccontextmanager
async def calls_talking(calls: list[Any]) -> AsyncIterator[aiohttp.ClientSession]:
    """Real-time speech into every call of ``calls`` (BenchCalls or RedialingCalls: each of their
    live calls), read again at each step; hangs all of them up at the end."""
    speech = flite_speech("slt", OPUS_RATE)

    def current() -> list[BenchCall]:
        return [live for c in calls for live in (c.live() if isinstance(c, RedialingCall) else [c])]

    talking = asyncio.create_task(talk(current, speech))
    async with aiohttp.ClientSession() as http:
        try:
            yield http
        finally:
            talking.cancel()
            for call in calls:
                await call.close()


async def converting(call: BenchCall, what: str) -> None:
    """Wait for the call's first converted audio; fail at once when the server answers with an error."""
    await wait_until_async(
        lambda: call.converting.is_set() or call.errors,
        CONVERTING_WITHIN_S,
        f"{what}: converted audio arrived",
        state=lambda: {"states": call.states, "end": call.end_reason},
    )
    assert call.converting.is_set(), f"{what}: {call.errors}"


async def open_on(
    cluster: Cluster, http: aiohttp.ClientSession, voice: str, calls: list[Any], **options: Any
) -> Replica:
    """Open a call through the balancer (a RedialingCall with ``redialing=True``), add it to
    ``calls`` (the ones talking) and return the replica it landed on: the one whose session count
    grew (calls are opened one at a time)."""
    redialing = options.pop("redialing", False)
    before = cluster.sessions()
    if redialing:
        call: Any = RedialingCall(http, cluster.balancer.ws_url, voice)
        calls.append(call)
        await call.start()
        bench = call.current
    else:
        bench = await open_call(http, cluster.balancer.ws_url, voice, **options)
        calls.append(bench)
    await converting(bench, "a call through the balancer")
    after = cluster.sessions()
    grown = [r for r in cluster.replicas if after.get(r.name, 0) > before.get(r.name, 0)]
    assert len(grown) == 1, (before, after)
    return grown[0]


# -- a: the voice library is shared -----------------------------------------------------------------


def test_a_voice_uploaded_through_one_replica_is_used_by_a_call_on_another(
    healthy: Cluster, tmp_path: Path, flite_speech: Speech
) -> None:
    uploader, caller = healthy.replicas[0], healthy.replicas[1]
    recording = write_wav(tmp_path / "rms.wav", *flite_speech("rms", None, 16000))
    voice_id = upload(uploader.base, recording, "uploaded on r0")

    async def main() -> None:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{caller.base}/api/voices") as response:
                listed = [v["id"] for v in (await response.json())["voices"]]
            assert voice_id in listed
            call = await open_call(http, caller.ws_url, voice_id, policy=ONE_TRY)
            async with calls_talking([call]):
                await converting(call, f"a call on {caller.name} with a voice uploaded on {uploader.name}")

    asyncio.run(main())


# -- b: capacity-aware routing ----------------------------------------------------------------------


def test_b_3c_plus_1_calls_admit_3c_evenly_and_refuse_the_last_fast(healthy: Cluster, voice: str) -> None:
    places = CAPACITY * len(healthy.replicas)

    async def main() -> None:
        calls: list[BenchCall] = []
        async with calls_talking(calls) as http:
            # every call at once; the first goes through TURN only, so relayed media is covered too
            opened = await asyncio.gather(
                *(
                    open_call(http, healthy.balancer.ws_url, voice, policy=ONE_TRY, relay_only=index == 0)
                    for index in range(places)
                ),
                return_exceptions=True,
            )
            calls += [c for c in opened if isinstance(c, BenchCall)]
            assert len(calls) == places, [c for c in opened if not isinstance(c, BenchCall)]
            for call in calls:
                await converting(call, "an admitted call")

            spread = healthy.sessions()
            in_balancer = {n: int(s["scur"]) for n, s in healthy.balancer.servers("signalling").items()}
            print(f"\nsessions per replica: {spread}; signalling connections in HAProxy: {in_balancer}")
            assert spread == {r.name: CAPACITY for r in healthy.replicas}
            assert in_balancer == {r.name: CAPACITY for r in healthy.replicas}

            started = time.perf_counter()
            with pytest.raises(CallRefused) as refused:
                calls.append(await open_call(http, healthy.balancer.ws_url, voice, policy=ONE_TRY))
            refused_after_s = time.perf_counter() - started
            print(f"call {places + 1} refused after {refused_after_s:.2f} s: {refused.value.refusal}")
            assert refused_after_s < REFUSED_WITHIN_S
            assert refused.value.refusal.code in ("http_503", "server_full"), refused.value.refusal
            assert refused.value.refusal.retry_after_s is not None and refused.value.refusal.retry_after_s > 0
            assert healthy.sessions() == spread  # the refused call took no place

            relayed_user = f"vcstream-{calls[0].welcome['session']}"
            assert relayed_user in healthy.coturn.allocations(), healthy.coturn.allocations()

    asyncio.run(main())


# -- e: monitoring ----------------------------------------------------------------------------------


def test_e_prometheus_scrapes_every_replica_and_every_dashboard_query_has_data(
    healthy: Cluster, voice: str
) -> None:
    prometheus = healthy.prometheus
    instances = {f"127.0.0.1:{r.port}" for r in healthy.replicas}

    def all_up() -> bool:
        up = prometheus.query('up{job="vcstream"}')
        return {s["metric"]["instance"] for s in up if s["value"][1] == "1"} == instances

    wait_until(all_up, 20, "Prometheus scraped every replica (up == 1)", state=lambda: prometheus.query("up"))
    queries = _dashboard_queries(json.loads(DASHBOARD.read_text()))
    missing: list[tuple[str, str]] = []

    def every_query_has_data() -> bool:
        missing[:] = [(title, query) for title, query in queries if not prometheus.query(query)]
        return not missing

    async def main() -> None:
        calls: list[BenchCall] = []
        async with calls_talking(calls) as http:
            for index in range(len(healthy.replicas)):  # one call per replica, one of them relayed
                await open_on(healthy, http, voice, calls, policy=ONE_TRY, relay_only=index == 0)
            # one replica filled up, straight to it, and one call more: a replica's own refusal
            # (server_full, with its retry hint) for the refusals panel
            full = healthy.replicas[0]
            for _ in range(CAPACITY - full.active_sessions()):
                calls.append(await open_call(http, full.ws_url, voice, policy=ONE_TRY))
                await converting(calls[-1], f"a call straight to {full.name}")
            with pytest.raises(CallRefused) as refused:
                calls.append(await open_call(http, full.ws_url, voice, policy=ONE_TRY))
            assert refused.value.refusal.code == "server_full", refused.value.refusal
            assert refused.value.refusal.retry_after_s, refused.value.refusal
            await asyncio.to_thread(
                wait_until,
                every_query_has_data,
                30,
                "every dashboard query returned data",
                state=lambda: missing,
            )

    asyncio.run(main())
    print(f"\n{len(queries)} dashboard queries returned data")


def _dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, query) of every panel target, Grafana's variables given values Prometheus takes."""
    found = []
    panels = list(dashboard.get("panels", []))
    while panels:
        panel = panels.pop()
        panels += panel.get("panels", [])  # rows hold panels
        for target in panel.get("targets", []):
            expression = target.get("expr")
            if expression:
                expression = re.sub(r"\$__rate_interval|\$__interval|\$__range", "30s", expression)
                expression = re.sub(r"\$\{?\w+\}?", ".*", expression)  # template variables: everything
                found.append((str(panel.get("title")), expression))
    return found


# -- c: drain ---------------------------------------------------------------------------------------


def test_c_sigterm_drains_a_replica_without_disturbing_calls(healthy: Cluster, voice: str) -> None:
    """The drained replica carries two calls: one that stays (it flows until the grace runs out) and
    one whose client moves on ``draining`` (make-before-break: the new call converts before the old
    one is hung up)."""

    async def main() -> None:
        calls: list[Any] = []
        async with calls_talking(calls) as http:
            placed: dict[str, BenchCall] = {}
            for _ in healthy.replicas:
                replica = await open_on(healthy, http, voice, calls, policy=ONE_TRY)
                placed[replica.name] = calls[-1]
            victim = await open_on(healthy, http, voice, calls, redialing=True)
            mover: RedialingCall = calls[-1]
            stayer = placed[victim.name]
            others = [placed[r.name] for r in healthy.replicas if r is not victim]
            started_before = victim.sessions_started()

            victim.signal(signal.SIGTERM)
            drained_at = time.perf_counter()
            for call in [*placed.values(), mover.current]:
                call.start_window()

            # a new call goes elsewhere: it converts and the victim started no session (it may
            # answer server_draining before the balancer takes it out: the client then tries again)
            calls.append(await open_call(http, healthy.balancer.ws_url, voice))
            await converting(calls[-1], "a call opened while a replica drains")
            assert victim.sessions_started() == started_before

            # the call that stays keeps flowing until the grace expires; then it ends
            await wait_until_async(
                stayer.ended.is_set, GRACE_S + 10, "the drained call ended after the grace"
            )
            ended_after_s = time.perf_counter() - drained_at
            flowing_until_s = (stayer.last_audio or 0) - drained_at
            print(f"\ndrained call: audio until {flowing_until_s:.2f} s, ended at {ended_after_s:.2f} s")
            assert flowing_until_s > GRACE_S - 1.0, "the call stopped flowing before the grace ran out"

            # calls on the other replicas did not notice
            window_s = time.perf_counter() - drained_at
            for call in others:
                result = call.result(window_s)
                print(f"undisturbed call: {result}")
                assert result["received_s"] > RECEIVED_AT_LEAST * window_s, result
                assert result["longest_gap_ms"] < 1000 * LONGEST_GAP_S, result
                assert not call.ended.is_set(), call.end_reason

            # the drained replica is gone once its last call is (the next test starts it again)
            exited = await asyncio.to_thread(victim.wait_exit, 10)
            assert exited == 0, "the drained replica did not exit cleanly"

            # both calls were told at once to move, and how long they may stay
            for told in (stayer, mover.calls[0]):
                assert told.draining.is_set(), "no draining message reached a drained call"
                assert told.draining_message.get("grace_s") == pytest.approx(GRACE_S, abs=1), (
                    told.draining_message
                )
            # the mover's client moved it: the new call converted while the old one still flowed
            assert mover.handovers and mover.handovers[0].reason == "draining", mover.handovers
            moved = mover.handovers[0]
            assert moved.converting_at is not None and moved.converting_at - drained_at < RECONNECTED_WITHIN_S
            old_until = mover.calls[0].last_audio or 0
            print(f"moved call: converting elsewhere after {moved.converting_at - drained_at:.2f} s, old "
                  f"call's audio until {old_until - drained_at:.2f} s")  # fmt: skip
            assert old_until > moved.converting_at - LONGEST_GAP_S, "a break between the old and the new call"

    asyncio.run(main())


# -- d: a replica dies ------------------------------------------------------------------------------


def test_d_kill_9_moves_its_calls_to_another_replica_within_5_s(healthy: Cluster, voice: str) -> None:
    async def main() -> None:
        calls: list[RedialingCall] = []
        async with calls_talking(calls) as http:
            placed: dict[str, RedialingCall] = {}
            for _ in healthy.replicas:
                replica = await open_on(healthy, http, voice, calls, redialing=True)
                placed[replica.name] = calls[-1]
            victim = healthy.replicas[1]
            moved = placed[victim.name]
            for call in calls:
                call.current.start_window()

            victim.signal(signal.SIGKILL)
            killed_at = time.perf_counter()
            await wait_until_async(
                lambda: moved.handovers and moved.handovers[0].converting_at is not None,
                RECONNECTED_WITHIN_S + 5,
                "the killed replica's call converted elsewhere",
                state=lambda: moved.handovers,
            )
            handover = moved.handovers[0]
            print(
                f"\nkilled replica's call: {handover}; back after {handover.converting_at - killed_at:.2f} s"
            )
            assert "closed" in handover.reason, handover  # the client saw the connection go, not a hang-up
            assert handover.converting_at - killed_at < RECONNECTED_WITHIN_S
            survivors = healthy.sessions()
            assert victim.name not in survivors and sum(survivors.values()) == len(calls), survivors

            # a measuring window, not a wait for a condition
            await asyncio.sleep(max(0.0, UNDISTURBED_WINDOW_S - (time.perf_counter() - killed_at)))
            window_s = time.perf_counter() - killed_at
            for call in calls:
                if call is not moved:
                    result = call.current.result(window_s)
                    assert not call.handovers, call.handovers
                    assert result["received_s"] > RECEIVED_AT_LEAST * window_s, result
                    assert result["longest_gap_ms"] < 1000 * LONGEST_GAP_S, result

    asyncio.run(main())
