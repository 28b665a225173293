"""Admission follows measured capacity: the start-up probe, a capacity file from the benchmark, the
operator's figure; a full engine hands new calls to the overflow CPU engine, visible in ``ready``
and /api/info, and a call on it converts. Real servers, real WebRTC calls."""

from __future__ import annotations

import asyncio
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import Speech
from slow_engine import BatchedEngine
from vcstream.engines.passthrough import PassthroughEngine
from vcstream.engines.settings import SettingsError
from vcstream.engines.world import WorldEngine
from vcstream.errors import ConfigurationError
from vcstream.service.call_choices import FREE, CallChoices
from vcstream.service.keys import ADMISSION_KEY
from vcstream.streaming.capacity import MEDIA_CORES_PER_SESSION, UTILISATION, Capacity, batch_sizes, probe
from vcstream.streaming.scheduler import SchedulerConfig
from webrtc_harness import client, receive_json, reference_wav, serving, settled, speech_48k


def test_probe_of_a_batched_device_is_bounded_by_its_batches() -> None:
    # 50 ms per batch whatever its size, 0.1 s blocks: a batch of b carries 2b sessions
    engine = BatchedEngine(batch_s=0.05, sample_rate=16000)
    reference = np.full(16000, 0.1, np.float32)
    capacity = probe(
        engine, reference, engine.settings(block_time=0.1), SchedulerConfig(max_batch=8), cores=100
    )
    assert sorted(capacity.batch_s) == [1, 2, 4, 8]
    assert all(0.05 <= t < 0.1 for t in capacity.batch_s.values())
    assert 10 <= capacity.sessions <= math.floor(UTILISATION * 16)
    assert "bounded by the engine" in capacity.detail and capacity.source == "probe"


def test_probe_of_a_cheap_engine_is_bounded_by_the_media_path() -> None:
    engine = PassthroughEngine()
    reference = np.full(22050, 0.1, np.float32)
    capacity = probe(engine, reference, None, SchedulerConfig.for_engine(engine), cores=2)
    assert capacity.batch_s.keys() == {1}
    assert capacity.sessions <= math.floor(UTILISATION * 2 / MEDIA_CORES_PER_SESSION)
    assert capacity.sessions >= math.floor(UTILISATION * 2 / MEDIA_CORES_PER_SESSION) - 1
    assert "the CPU" in capacity.detail


def test_batch_sizes_double_up_to_the_limit() -> None:
    assert batch_sizes(1) == [1] and batch_sizes(8) == [1, 2, 4, 8] and batch_sizes(12) == [1, 2, 4, 8, 12]


def test_a_capacity_file_is_used_for_its_engine_and_device_only(tmp_path: Path) -> None:
    matching = tmp_path / "capacity.json"
    Capacity(3, "probe", "passthrough", "cpu", 0.1, {1: 0.001}).write(matching)
    other = tmp_path / "other.json"
    Capacity(40, "probe", "seedvc", "cuda:0", 0.18, {1: 0.05}).write(other)
    broken = tmp_path / "broken.json"
    broken.write_text("{")

    async def main() -> None:
        async with serving(tmp_path / "a", running=PassthroughEngine(), capacity_file=matching) as server:
            info = await (await server.http.get(f"{server.base}/api/info")).json()
            assert info["max_sessions"] == 3
            assert info["capacity"][0]["source"] == "file" and info["capacity"][0]["role"] == "primary"
        async with serving(tmp_path / "b", running=PassthroughEngine(), capacity_file=other) as server:
            info = await (await server.http.get(f"{server.base}/api/info")).json()
            assert info["capacity"][0]["source"] == "probe" and info["max_sessions"] != 40

    asyncio.run(main())
    with pytest.raises(ConfigurationError, match="not readable"):
        Capacity.read(broken)


def test_a_full_engine_hands_new_calls_to_the_overflow_engine(tmp_path: Path, flite_speech: Speech) -> None:
    async def main() -> None:
        async with serving(
            tmp_path / "data", running=WorldEngine(), max_sessions=1, overflow_engine="passthrough"
        ) as server:
            admission = server.app[ADMISSION_KEY]
            assert [s.role for s in admission.slots] == ["primary", "overflow"]
            voice = await server.upload(reference_wav(tmp_path, flite_speech, "slt"), "slt")
            speech = speech_48k(flite_speech, "rms")
            async with client(server) as first:
                ready = await first.hello()
                assert ready["engine"]["name"] == "world" and ready["engine"]["overflow"] is False
                await first.start(voice)
                await first.talk_until_converted(speech)
                async with client(server) as second:
                    ready = await second.hello()
                    engine = ready["engine"]
                    assert (engine["name"], engine["overflow"], engine["cpu_fallback"]) == (
                        "passthrough",
                        True,
                        True,
                    )
                    assert "places are all taken" in engine["note"]
                    assert "block_time" in ready["settings_schema"]  # the overflow engine's own settings
                    await second.start(voice)
                    await second.talk_until_converted(speech)
                    info = await (await server.http.get(f"{server.base}/api/info")).json()
                    assert [(c["engine"], c["role"], c["active_sessions"]) for c in info["capacity"]] == [
                        ("world", "primary", 1),
                        ("passthrough", "overflow", 1),
                    ]
                    assert info["capacity"][0]["source"] == "operator"
                    assert info["capacity"][1]["source"] == "probe"
            await settled(server)
            assert [s.active for s in admission.slots] == [0, 0]

    asyncio.run(main())


def test_call_choices_come_from_the_operator_and_always_offer_the_default() -> None:
    engine = WorldEngine()
    defaults = engine.settings(block_time=0.1)
    choices = CallChoices.for_engine(engine, defaults, ("block_time=0.2|0.3",))
    assert choices.choices == {"block_time": (0.1, 0.2, 0.3)} and choices.shapes() == 3
    assert choices.check(engine.settings(block_time=0.3)).block_time == 0.3
    with pytest.raises(SettingsError, match=re.escape("not offered on this server: choose 0.1, 0.2, 0.3")):
        choices.check(engine.settings(block_time=0.15))
    with pytest.raises(SettingsError, match="not allowed"):  # the engine's own rules still hold
        CallChoices.for_engine(engine, defaults, ("block_time=0.123",))
    with pytest.raises(SettingsError, match="per-call settings"):
        CallChoices.for_engine(engine, defaults, ("pitch_shift=1|2",))
    # on a CPU engine without a batched forward pass callers choose freely unless told otherwise
    assert CallChoices.for_engine(engine, defaults, ()).choices == {}
    assert CallChoices.for_engine(engine, defaults, (FREE,)).choices == {}


def test_a_caller_picks_among_the_servers_choices(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            serving(tmp_path / "data", call_choices=("block_time=0.2",)) as server,
            server.http.ws_connect(server.ws_url) as ws,
        ):
            await ws.send_str(json.dumps({"v": 1, "type": "hello"}))
            ready = await receive_json(ws)
            assert ready["settings_schema"]["block_time"]["choices"] == [0.1, 0.2]
            await ws.send_str(json.dumps({"v": 1, "type": "settings", "settings": {"block_time": 0.15}}))
            refused = await receive_json(ws)
            assert refused["code"] == "bad_settings" and "choose 0.1, 0.2" in refused["message"]
            await ws.send_str(json.dumps({"v": 1, "type": "settings", "settings": {"block_time": 0.2}}))
            assert (await receive_json(ws))["settings"]["block_time"] == 0.2

    asyncio.run(main())
