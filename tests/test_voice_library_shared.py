"""Replicas sharing one voice library: two service apps (each a real aiohttp server on a socket with
the real WORLD engine) on one real PostgreSQL database and different data folders, as two pods with
no shared disk. A voice uploaded through one is listed, downloaded and used (the signalling ``voice``
message, which computes the engine's features as a call's offer does) through the other; deleted
through the second, the first refuses it at its next use and drops it from its cache. Each replica's
feature cache holds at most VCSTREAM_VOICE_CACHE_SIZE voices, least recently used dropped first."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import FormData, web
from aiohttp.test_utils import TestClient, TestServer

from conftest import Speech, write_wav
from vcstream.audio.types import Audio
from vcstream.cli import main as cli_main
from vcstream.engines.base import VoiceProfile
from vcstream.engines.world import WorldEngine
from vcstream.service.app import create_app
from vcstream.service.config import ServiceSettings
from vcstream.service.keys import VOICES_KEY
from vcstream.service.profile_cache import ProfileCache

Client = TestClient[web.Request, web.Application]


class CountingWorldEngine(WorldEngine):
    """The real WORLD engine, counting the voices whose features it computed."""

    def __init__(self) -> None:
        super().__init__()
        self.prepared: list[float] = []  # the reference durations, in order
        self._lock = threading.Lock()

    def prepare_voice(self, reference: Audio, sample_rate: int) -> VoiceProfile:
        with self._lock:
            self.prepared.append(reference.shape[0] / sample_rate)
        return super().prepare_voice(reference, sample_rate)


@pytest.fixture
def shared_database(postgres_url: str) -> str:
    assert cli_main(["db", "upgrade", "--database-url", postgres_url]) == 0  # the init step, once
    return postgres_url


@pytest.fixture(scope="module")
def voice_files(flite_speech: Speech, tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """Three speakers as WAV uploads."""
    folder = tmp_path_factory.mktemp("voices")
    files = []
    for speaker in ("slt", "rms", "awb"):
        samples, rate = flite_speech(speaker, None, 16000)
        files.append(write_wav(folder / f"{speaker}.wav", samples, rate).read_bytes())
    return files


@asynccontextmanager
async def replica(
    data_dir: Path, database_url: str, engine: WorldEngine | None = None, **settings: Any
) -> AsyncIterator[Client]:
    """One replica: its own data folder (nothing shared on disk), the shared database."""
    config = ServiceSettings(port=0, data_dir=data_dir, database_url=database_url, **settings)
    async with TestClient(TestServer(create_app(config, engine or WorldEngine()))) as client:
        for _ in range(200):  # warm-up runs in the background after start-up
            if (await client.get("/readyz")).status == 200:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the replica did not become ready")
        yield client


async def upload(client: Client, data: bytes, name: str) -> dict[str, Any]:
    fields = FormData(default_to_multipart=True)
    fields.add_field("name", name)
    fields.add_field("file", data, filename=f"{name}.wav", content_type="audio/wav")
    response = await client.post("/api/voices", data=fields)
    body: dict[str, Any] = await response.json()
    assert response.status == 201, body
    return body


@asynccontextmanager
async def signalling(client: Client) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A signalling connection past ``hello``."""
    async with client.ws_connect("/ws") as ws:
        await ws.send_str(json.dumps({"v": 1, "type": "hello"}))
        ready = await ws.receive_json(timeout=10)
        assert ready["type"] == "ready", ready
        yield ws


async def use_voice(ws: aiohttp.ClientWebSocketResponse, voice_id: str) -> dict[str, Any]:
    """Choose a voice (the replica computes or reuses its features); the reply: ``voice`` or ``error``."""
    await ws.send_str(json.dumps({"v": 1, "type": "voice", "voice": voice_id}))
    reply: dict[str, Any] = await ws.receive_json(timeout=30)
    return reply


def cached_voices(client: Client) -> list[str]:
    cache: ProfileCache = client.app[VOICES_KEY].profile_cache
    return [voice_id for voice_id, _ in cache.ordered_keys()]


def test_a_voice_uploaded_through_one_replica_is_used_and_deleted_through_another(
    shared_database: str, voice_files: list[bytes], tmp_path: Path
) -> None:
    async def scenario() -> None:
        engine_b = CountingWorldEngine()
        async with (
            replica(tmp_path / "a", shared_database) as a,
            replica(tmp_path / "b", shared_database, engine_b) as b,
        ):
            voice = await upload(a, voice_files[0], "Alice")
            assert cached_voices(a) == [voice["id"]]  # validated with the engine on upload, kept

            assert await (await b.get("/api/voices")).json() == {"voices": [voice]}
            assert await (await b.get(f"/api/voices/{voice['id']}")).json() == voice
            audio_a = await (await a.get(f"/api/voices/{voice['id']}/audio")).read()
            audio_b = await b.get(f"/api/voices/{voice['id']}/audio")
            assert audio_b.status == 200 and audio_b.content_type == "audio/wav"
            assert await audio_b.read() == audio_a and audio_a[:4] == b"RIFF"

            before = len(engine_b.prepared)
            async with signalling(b) as ws_b, signalling(a) as ws_a:
                assert await use_voice(ws_b, voice["id"]) == {
                    "v": 1, "type": "voice", "voice": voice["id"], "name": "Alice"
                }  # fmt: skip
                assert await use_voice(ws_b, voice["id"]) == {
                    "v": 1, "type": "voice", "voice": voice["id"], "name": "Alice"
                }  # fmt: skip
                # B read the recording from the database and computed the features once
                assert engine_b.prepared[before:] == [pytest.approx(voice["duration_s"], abs=0.01)]
                assert cached_voices(b) == [voice["id"]]
                assert (await use_voice(ws_a, voice["id"]))["type"] == "voice"

                assert (await b.delete(f"/api/voices/{voice['id']}")).status == 204
                assert cached_voices(b) == []
                assert cached_voices(a) == [voice["id"]]  # A has not been told, and need not be:

                refused = await use_voice(ws_a, voice["id"])  # its next use asks the database
                assert (refused["type"], refused["code"], refused["fatal"]) == (
                    "error", "voice_not_found", False
                )  # fmt: skip
                assert voice["id"] in refused["message"]
                assert cached_voices(a) == []
                assert (await use_voice(ws_b, voice["id"]))["code"] == "voice_not_found"
            for client in (a, b):
                assert (await client.get(f"/api/voices/{voice['id']}")).status == 404
                assert (await client.get(f"/api/voices/{voice['id']}/audio")).status == 404
                assert await (await client.get("/api/voices")).json() == {"voices": []}
        assert not (tmp_path / "a" / "voices").exists() and not (tmp_path / "b" / "voices").exists()

    asyncio.run(scenario())


def test_each_replicas_cache_is_bounded_least_recently_used_first(
    shared_database: str, voice_files: list[bytes], tmp_path: Path
) -> None:
    async def scenario() -> None:
        engine_b = CountingWorldEngine()
        async with (
            replica(tmp_path / "a", shared_database, voice_cache_size=2) as a,
            replica(tmp_path / "b", shared_database, engine_b, voice_cache_size=2) as b,
        ):
            ids = [(await upload(a, data, f"voice{n}"))["id"] for n, data in enumerate(voice_files)]
            assert cached_voices(a) == ids[1:]  # three uploads, room for two

            warm_up = len(engine_b.prepared)  # the engine's own warm-up voice

            def computed() -> int:
                return len(engine_b.prepared) - warm_up

            async with signalling(b) as ws:
                for voice_id in ids:
                    assert (await use_voice(ws, voice_id))["type"] == "voice"
                assert computed() == 3 and cached_voices(b) == ids[1:]

                assert (await use_voice(ws, ids[1]))["type"] == "voice"  # a hit, now most recent
                assert computed() == 3 and cached_voices(b) == [ids[2], ids[1]]

                assert (await use_voice(ws, ids[0]))["type"] == "voice"  # dropped before: computed again
                assert computed() == 4 and cached_voices(b) == [ids[1], ids[0]]

    asyncio.run(scenario())


def test_profile_cache_keeps_the_most_recently_used() -> None:
    profile = VoiceProfile("world", 16000, 1.0, features=np.zeros(1))
    cache = ProfileCache(2)
    cache.put(("a", "world"), profile)
    cache.put(("a", "passthrough"), profile)
    assert cache.get(("a", "world")) is profile  # now the most recent
    cache.put(("b", "world"), profile)
    assert cache.ordered_keys() == [("a", "world"), ("b", "world")]
    cache.forget_voice("a")
    assert cache.ordered_keys() == [("b", "world")] and cache.get(("a", "world")) is None
    with pytest.raises(ValueError, match="at least one"):
        ProfileCache(0)
