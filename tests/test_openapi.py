"""The generated OpenAPI document against the real application: valid OpenAPI 3.1, every route of the
router described (and nothing else), and real answers of a running server (WORLD engine, GStreamer
decoding, SQLite) valid against the schema documented for their status, for every documented status."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import ClientResponse, hdrs, web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_urldispatcher import StaticResource
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi

from tenants_harness import TOKEN_SECRET, tenant_keys
from test_service_api import UPLOAD_LIMIT, SpeechMaker, form, run, serving, settings_for, wav_bytes
from vcstream.engines.world import WorldEngine
from vcstream.service.app import create_app, drain
from vcstream.service.openapi import UndocumentedRouteError, operation, reply
from vcstream.service.schemas import VoicePath
from vcstream.service.signalling.registry import CONNECT_BURST
from vcstream.service.upload_slots import UPLOAD_SLOTS_KEY

Client = TestClient[web.Request, web.Application]
#: documented answers this test cannot provoke, and why
UNREACHED = {("get", "/", "404"): "the browser client is part of every checkout"}


async def fetch_document(client: Client) -> dict[str, Any]:
    response = await client.get("/api/openapi.json")
    assert response.status == 200
    document: dict[str, Any] = json.loads(await response.text())
    return document


def documented_path(resource: Any) -> str:
    """The path a route has in the document: aiohttp's static folder serves files below its prefix."""
    if isinstance(resource, StaticResource):
        return f"{resource.canonical}/{{filename}}"
    return str(resource.canonical)


def test_document_is_valid_openapi_and_describes_exactly_the_routes(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(settings_for(tmp_path / "var")) as client:
            document = await fetch_document(client)
            routes = [route for route in client.app.router.routes() if route.method != hdrs.METH_HEAD]
            registered = {(route.method.lower(), documented_path(route.resource)) for route in routes}
            heads = {documented_path(r.resource) for r in client.app.router.routes() if r.method == "HEAD"}

        validate_openapi(document)  # raises on anything not OpenAPI 3.1
        assert document["openapi"] == "3.1.0"
        documented = {(method, path) for path, item in document["paths"].items() for method in item}
        assert registered == documented
        assert heads <= {path for method, path in documented if method == "get"}  # HEAD only beside GET
        for expected in ("/ws", "/healthz", "/readyz", "/metrics", "/", "/api/voices/{voice_id}/audio"):
            assert ("get", expected) in documented
        for path, item in document["paths"].items():  # path parameters: exactly those of the template
            for described in item.values():
                names = [p["name"] for p in described.get("parameters", []) if p["in"] == "path"]
                assert sorted(names) == sorted(n.strip("{}") for n in path.split("/") if n.startswith("{"))
        assert "Client -> server" in document["paths"]["/ws"]["get"]["description"]
        upload = document["paths"]["/api/voices"]["post"]["requestBody"]["content"]["multipart/form-data"]
        form_schema = document["components"]["schemas"][upload["schema"]["$ref"].rsplit("/", 1)[1]]
        assert set(form_schema["required"]) == {"file", "name"}

    run(scenario())


class ResponseChecker:
    """Validates answers against the document and records which documented statuses were seen."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.seen: set[tuple[str, str, str]] = set()

    async def check(self, method: str, path: str, response: ClientResponse) -> Any:
        """The answer's JSON body (bytes for other media), after validating it."""
        status = str(response.status)
        responses = self.document["paths"][path][method]["responses"]
        assert status in responses, (method, path, status, await response.text())
        self.seen.add((method, path, status))
        content = responses[status].get("content")
        if response.status == 101:  # the connection now belongs to the WebSocket
            assert content is None
            response.close()
            return None
        body = await response.read()
        if content is None:
            assert body == b"", (method, path, status)
            return body
        media = response.content_type
        assert media in content or "*/*" in content, (method, path, status, media, list(content))
        if media != "application/json":
            return body
        instance = json.loads(body)
        schema = {**content[media]["schema"], "components": self.document["components"]}
        Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER).validate(instance)
        return instance

    def unseen(self) -> set[tuple[str, str, str]]:
        documented = {
            (method, path, status)
            for path, item in self.document["paths"].items()
            for method, described in item.items()
            for status in described["responses"]
        }
        return documented - self.seen - set(UNREACHED)


@pytest.fixture(scope="module")
def speech(flite_speech: SpeechMaker) -> tuple[np.ndarray, int]:
    return flite_speech("slt", None, 16000)


def test_every_documented_answer_matches_its_schema(speech: tuple[np.ndarray, int], tmp_path: Path) -> None:
    speech_wav = wav_bytes(tmp_path, *speech)
    silent_wav = wav_bytes(tmp_path, np.zeros(3 * 16000, dtype=np.float32))
    unknown = "0" * 32

    async def scenario() -> ResponseChecker:
        async with serving(settings_for(tmp_path / "var", max_uploads=1)) as client:
            checker = ResponseChecker(await fetch_document(client))
            check = checker.check

            await check("get", "/api/openapi.json", await client.get("/api/openapi.json"))
            assert await check("get", "/healthz", await client.get("/healthz")) == {"status": "ok"}
            assert await check("get", "/readyz", await client.get("/readyz")) == {"status": "ready"}
            info = await check("get", "/api/info", await client.get("/api/info"))
            assert info["engine"] == "world" and info["ready"] is True

            voices = "/api/voices"
            voice = await check("post", voices, await client.post(voices, data=form(speech_wav)))
            for data, code in (
                (form(None), "missing_file"),
                (form(bytes(UPLOAD_LIMIT + 1)), "file_too_large"),
                (form(b"no audio here\n" * 100, filename="notes.txt"), "unsupported_media_type"),
                (form(silent_wav), "invalid_audio"),
            ):
                assert (await check("post", voices, await client.post(voices, data=data)))["error"] == code
            not_multipart = await check("post", voices, await client.post(voices, json={"name": "A"}))
            assert not_multipart["error"] == "not_multipart"
            taken = await check("post", voices, await client.post(voices, data=form(speech_wav)))
            assert taken["error"] == "name_taken"
            async with client.app[UPLOAD_SLOTS_KEY].claim():  # the only slot held: the next waits, then 503
                busy = await check("post", voices, await client.post(voices, data=form(speech_wav, "B")))
                assert busy["error"] == "too_many_uploads"
            assert await check("get", voices, await client.get(voices)) == {"voices": [voice]}

            one, audio = "/api/voices/{voice_id}", "/api/voices/{voice_id}/audio"
            assert await check("get", one, await client.get(f"{voices}/{voice['id']}")) == voice
            wav = await check("get", one, await client.get(f"{voices}/{voice['id']}?audio=1"))
            assert wav[:4] == b"RIFF"
            bad_query = await check("get", one, await client.get(f"{voices}/{voice['id']}?audio=maybe"))
            assert bad_query["error"] == "invalid_query" and "audio" in bad_query["message"]
            assert (await check("get", one, await client.get(f"{voices}/{unknown}")))["error"] == (
                "voice_not_found"
            )
            assert (await check("get", audio, await client.get(f"{voices}/{voice['id']}/audio")))[
                :4
            ] == b"RIFF"
            await check("get", audio, await client.get(f"{voices}/{unknown}/audio"))
            await check("delete", one, await client.delete(f"{voices}/{voice['id']}"))
            await check("delete", one, await client.delete(f"{voices}/{voice['id']}"))

            assert b"vcstream_active_sessions" in await check("get", "/metrics", await client.get("/metrics"))
            assert b"<html" in (await check("get", "/", await client.get("/"))).lower()
            static = "/static/{filename}"
            await check("get", static, await client.get("/static/app.js"))
            await check("get", static, await client.get("/static/no-such-file.js"))

            not_upgrade = await check("get", "/ws", await client.get("/ws"))
            assert not_upgrade["error"] == "bad_request"
            key = base64.b64encode(os.urandom(16)).decode()
            upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"}
            await check("get", "/ws", await client.get("/ws", headers={**upgrade, "Sec-WebSocket-Key": key}))
            for _ in range(int(CONNECT_BURST) + 5):  # one address asking again and again: refused
                response = await client.get("/ws", headers={**upgrade, "Sec-WebSocket-Key": key})
                if response.status == 429:
                    break
                response.close()
            assert (await check("get", "/ws", response))["error"] == "too_many_connections"
            hijack = {**upgrade, "Sec-WebSocket-Key": key, "Origin": "https://evil.example"}
            foreign = await check("get", "/ws", await client.get("/ws", headers=hijack))
            assert foreign["error"] == "origin_not_allowed"

            tokens_path, usage_path = "/api/tokens", "/api/usage"
            refused = await check("post", tokens_path, await client.post(tokens_path, json={}))
            assert refused["error"] == "api_key_required"  # an open server has no keys
            await drain(client.app, grace_s=0)
            assert (await check("get", "/readyz", await client.get("/readyz")))["error"] == "not_ready"

        # the tenant routes of a paid service (auth required)
        one_voice = {"plans": {"free": {"concurrent_calls": 1, "monthly_minutes": 10, "voices": 1}}}
        (key,) = tenant_keys(tmp_path / "paid", "Acme", plans=one_voice)
        paid = settings_for(
            tmp_path / "paid",
            auth="required",
            token_secret=TOKEN_SECRET,
            plans_file=tmp_path / "paid" / "plans.json",
        )
        async with serving(paid) as client:
            bearer = {"Authorization": f"Bearer {key}"}
            assert (await check("get", usage_path, await client.get(usage_path)))["error"] == "unauthorized"
            made = await check("post", tokens_path, await client.post(tokens_path, json={}, headers=bearer))
            bad = await client.post(tokens_path, json={"ttl_s": 10**6}, headers=bearer)
            assert (await check("post", tokens_path, bad))["error"] == "invalid_request"
            as_token = {"Authorization": f"Bearer {made['token']}"}
            by_token = await client.post(tokens_path, json={}, headers=as_token)
            assert (await check("post", tokens_path, by_token))["error"] == "api_key_required"
            wrong = await client.post(tokens_path, json={}, headers={"Authorization": "Bearer vcsk_nope"})
            assert (await check("post", tokens_path, wrong))["error"] == "unauthorized"
            month = await check("get", usage_path, await client.get(usage_path, headers=as_token))
            assert month["calls"] == 0 and month["allowance_minutes"] == 10
            csv_usage = await client.get(f"{usage_path}?format=csv", headers=bearer)
            assert (await check("get", usage_path, csv_usage)).startswith(b"day,calls,converted_s")
            bad_month = await client.get(f"{usage_path}?month=2026-13", headers=bearer)
            assert (await check("get", usage_path, bad_month))["error"] == "invalid_query"

            # the voice routes of a tenant: a credential, the plan's voices, a token's rights
            own = await check(
                "post", voices, await client.post(voices, data=form(speech_wav), headers=bearer)
            )
            one_of_them = f"{voices}/{own['id']}"
            for method, template, url in (
                ("post", voices, voices),
                ("get", voices, voices),
                ("get", one, one_of_them),
                ("get", audio, f"{one_of_them}/audio"),
                ("delete", one, one_of_them),
            ):
                refused = await check(method, template, await client.request(method, url))
                assert refused["error"] == "unauthorized", (method, url)
            second = await client.post(voices, data=form(speech_wav, name="Bob"), headers=bearer)
            assert (await check("post", voices, second))["error"] == "voice_limit"  # the plan's one voice
            not_managing = await client.post(voices, data=form(speech_wav, name="Bob"), headers=as_token)
            assert (await check("post", voices, not_managing))["error"] == "not_allowed"
            not_deleting = await client.delete(one_of_them, headers=as_token)
            assert (await check("delete", one, not_deleting))["error"] == "not_allowed"
        return checker

    assert asyncio.run(scenario()).unseen() == set()


# -- a route that does not fit the document stops start-up --------------------------------------------


async def undocumented(request: web.Request) -> web.Response:
    return web.Response(text="?")


@operation("misdeclared", "Path parameters that are not the route's", {200: reply("?")}, path=VoicePath)
async def misdeclared(request: web.Request) -> web.Response:
    return web.Response(text="?")


@pytest.mark.parametrize(
    ("path", "handler", "message"),
    [
        ("/api/extra", undocumented, "GET /api/extra: the handler has no @operation"),
        (
            "/api/things/{thing_id}",
            misdeclared,
            r"path parameters \['thing_id'\] are declared as \['voice_id'\]",
        ),
    ],
)
def test_a_route_the_document_cannot_describe_stops_start_up(
    path: str, handler: Any, message: str, tmp_path: Path
) -> None:
    app = create_app(settings_for(tmp_path / "var"), WorldEngine())
    app.router.add_get(path, handler)

    async def scenario() -> None:
        with pytest.raises(UndocumentedRouteError, match=message):
            async with TestClient(TestServer(app)):
                pass

    run(scenario())
