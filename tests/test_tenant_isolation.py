"""Tenants of one server cannot see each other's voices: another tenant's voice is not listed and
answers 404 (never 403: ids do not leak) to fetching, downloading, deleting and calling; an access
token limited to some voices sees only those; the open library is invisible to tenants; API keys
and tokens, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from tenants_harness import tenant_keys
from test_service_api import SpeechMaker, form, serving, settings_for, wav_bytes


@pytest.fixture
def speech(flite_speech: SpeechMaker) -> tuple[np.ndarray, int]:
    return flite_speech("slt")


def keys(data_dir: Path, *tenants: str, database_url: str | None = None) -> list[str]:
    """Tenants on the unlimited plan, and an API key of each, in ``data_dir``'s database (or
    ``database_url``'s)."""
    return tenant_keys(data_dir, *tenants, plan="unlimited", database_url=database_url)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """None: the server's own SQLite file; else a PostgreSQL database of the test's own."""
    return None if request.param == "sqlite" else str(request.getfixturevalue("postgres_url"))


def test_tenants_see_only_their_own_voices(
    tmp_path: Path, speech: tuple[np.ndarray, int], database_url: str | None
) -> None:
    recording = wav_bytes(tmp_path, *speech)
    data = tmp_path / "var"
    acme_key, globex_key = keys(data, "Acme", "Globex", database_url=database_url)
    acme, globex = ({"Authorization": f"Bearer {key}"} for key in (acme_key, globex_key))

    async def scenario() -> None:
        settings = settings_for(data, auth="required", token_secret="s" * 40, database_url=database_url)
        async with serving(settings) as client:
            made = []
            for name in ("Clara", "Dora"):
                response = await client.post("/api/voices", data=form(recording, name), headers=acme)
                assert response.status == 201, await response.text()
                made.append((await response.json())["id"])
            clara, dora = made
            # the same name in another tenant's library is no collision
            theirs = await client.post("/api/voices", data=form(recording, "Clara"), headers=globex)
            assert theirs.status == 201
            globex_clara = (await theirs.json())["id"]

            listed = await (await client.get("/api/voices", headers=globex)).json()
            assert [v["id"] for v in listed["voices"]] == [globex_clara]
            for method, url in (
                ("get", f"/api/voices/{clara}"),
                ("get", f"/api/voices/{clara}?audio=1"),
                ("get", f"/api/voices/{clara}/audio"),
                ("delete", f"/api/voices/{clara}"),
            ):
                foreign = await client.request(method, url, headers=globex)
                unknown = await client.request(method, url.replace(clara, "0" * 32), headers=globex)
                assert foreign.status == unknown.status == 404, (method, url)
                # the same answer as for an id that does not exist (but for the id itself)
                assert (await foreign.json())["error"] == (await unknown.json())["error"] == "voice_not_found"
            assert (await client.get(f"/api/voices/{clara}", headers=acme)).status == 200  # still there

            # a token for one voice: sees and uses only that one, may not add or delete
            minted = await client.post("/api/tokens", json={"voices": [dora]}, headers=acme)
            token = {"Authorization": f"Bearer {(await minted.json())['token']}"}
            listed = await (await client.get("/api/voices", headers=token)).json()
            assert [v["id"] for v in listed["voices"]] == [dora]
            assert (await client.get(f"/api/voices/{clara}", headers=token)).status == 404
            assert (await client.get(f"/api/voices/{dora}/audio", headers=token)).status == 200
            assert (await client.delete(f"/api/voices/{dora}", headers=token)).status == 403

            # hello with that token lists one voice; an offer naming another tenant's voice is
            # told voice_not_found, as is one naming the tenant's voice the token does not allow
            async with client.ws_connect("/ws") as ws:
                await ws.send_str(json.dumps({"v": 1, "type": "hello", "token": token["Authorization"][7:]}))
                ready = await ws.receive_json(timeout=10)
                assert [v["id"] for v in ready["voices"]] == [dora], ready
                for voice in (globex_clara, clara):
                    await ws.send_str(json.dumps({"v": 1, "type": "voice", "voice": voice}))
                    refused = await ws.receive_json(timeout=10)
                    assert refused["code"] == "voice_not_found", refused

    asyncio.run(scenario())


def test_the_open_library_is_not_a_tenants(tmp_path: Path, speech: tuple[np.ndarray, int]) -> None:
    recording = wav_bytes(tmp_path, *speech)
    data = tmp_path / "var"

    async def scenario() -> None:
        async with serving(settings_for(data)) as client:  # --auth open: one local library
            response = await client.post("/api/voices", data=form(recording, "Local"))
            local = (await response.json())["id"]
        (key,) = keys(data, "Acme")
        settings = settings_for(data, auth="required", token_secret="s" * 40)
        async with serving(settings) as client:
            bearer = {"Authorization": f"Bearer {key}"}
            assert (await (await client.get("/api/voices", headers=bearer)).json())["voices"] == []
            assert (await client.get(f"/api/voices/{local}", headers=bearer)).status == 404
            assert (await client.get("/api/voices")).status == 401

    asyncio.run(scenario())
