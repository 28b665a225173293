"""Health, readiness, draining, metrics, the OpenAPI document, settings from the environment and
flags, engine choice, and `vcstream serve` itself: real aiohttp servers on sockets, real engines."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from vcstream.audio.types import Audio
from vcstream.cli import build_parser
from vcstream.engines.base import Engine, EngineSession, VoiceProfile
from vcstream.engines.passthrough import PassthroughEngine, PassthroughSession
from vcstream.engines.settings import SessionSettings
from vcstream.errors import ConfigurationError, ModelUnavailableError
from vcstream.service.app import create_app, drain
from vcstream.service.config import ServiceSettings, byte_size, settings_from_args
from vcstream.service.engine_loader import load_engine
from vcstream.service.health import session_refusal
from vcstream.service.keys import ADMISSION_KEY, METRICS_KEY
from vcstream.service.metrics import ServiceMetrics
from waiting import wait_until, wait_until_async

Client = TestClient[web.Request, web.Application]


class GatedSession(PassthroughSession):
    """A passthrough session whose blocks wait for a gate (a warm-up that takes as long as we say)."""

    def __init__(self, gate: threading.Event, fail: bool) -> None:
        super().__init__(22050, 0.1)
        self.gate, self.fail = gate, fail

    def process(self, block: Audio) -> Audio:
        if self.fail:
            raise RuntimeError("the accelerator fell over")
        self.gate.wait(10)
        return super().process(block)


class GatedEngine(PassthroughEngine):
    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.gate, self.fail = threading.Event(), fail

    def open_session(self, voice: VoiceProfile, settings: SessionSettings | None = None) -> EngineSession:
        return GatedSession(self.gate, self.fail)


@asynccontextmanager
async def serving(tmp_path: Path, engine: Engine, **changes: Any) -> AsyncIterator[Client]:
    settings = ServiceSettings(port=0, data_dir=tmp_path / "var", **changes)
    async with TestClient(TestServer(create_app(settings, engine))) as client:
        yield client


async def until_status(client: Client, url: str, status: int, timeout_s: float = 10.0) -> Any:
    """The JSON body of the first answer of ``url`` with ``status``."""

    async def answer() -> tuple[int, Any]:
        response = await client.get(url)
        return response.status, await response.json()

    async def body_with_status() -> Any:
        got, body = await answer()
        return (body,) if got == status else None  # a tuple: an empty body counts as an answer too

    found = await wait_until_async(body_with_status, timeout_s, f"{url} answered {status}", state=answer)
    return found[0]


def _answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except urllib.error.HTTPError:  # 503 while warming up
        return False


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


# -- health and readiness ----------------------------------------------------------------------------


def test_readyz_follows_warm_up_and_draining(tmp_path: Path) -> None:
    engine = GatedEngine()

    async def scenario() -> None:
        async with serving(tmp_path, engine) as client:
            app = client.app
            health = await client.get("/healthz")
            assert health.status == 200 and await health.json() == {"status": "ok"}
            not_ready = await client.get("/readyz")
            assert not_ready.status == 503
            assert await not_ready.json() == {"error": "not_ready", "message": "the engine is warming up"}
            assert session_refusal(app) == ("not_ready", "the engine is warming up")
            assert (await (await client.get("/api/info")).json())["ready"] is False

            engine.gate.set()
            assert await until_status(client, "/readyz", 200) == {"status": "ready"}
            assert session_refusal(app) is None

            assert await drain(app, grace_s=0) is True
            body = await until_status(client, "/readyz", 503)
            assert body["error"] == "not_ready" and "shutting down" in body["message"]
            assert session_refusal(app) == ("draining", "the server is shutting down; try again shortly")
            assert (await client.get("/healthz")).status == 200  # alive while draining

    run(scenario())


def test_failed_warm_up_keeps_the_server_unready_and_says_why(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, GatedEngine(fail=True)) as client:

            async def failure_reported() -> Any:
                response = await client.get("/readyz")
                body = await response.json()
                return body if response.status == 503 and "warm-up failed" in body["message"] else None

            body = await wait_until_async(failure_reported, 10, "/readyz reported the warm-up failure")
            assert body["message"] == "engine warm-up failed: RuntimeError: the accelerator fell over"

    run(scenario())


def test_drain_waits_for_running_sessions_and_max_sessions_refuses(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, PassthroughEngine(), max_sessions=2) as client:
            app = client.app
            await until_status(client, "/readyz", 200)
            metrics, admission = app[METRICS_KEY], app[ADMISSION_KEY]
            for _ in range(2):
                assert admission.take(admission.primary)
                metrics.session_started()
            assert session_refusal(app) == ("full", "all 2 session places are taken; try again later")
            assert not admission.take(admission.primary)
            info = await (await client.get("/api/info")).json()
            assert info["max_sessions"] == 2 and info["active_sessions"] == 2
            assert info["capacity"][0]["source"] == "operator"

            draining = asyncio.create_task(drain(app, grace_s=10))
            await asyncio.sleep(0.3)  # time in which a drain that did not wait would have finished
            assert not draining.done()
            assert (await client.get("/readyz")).status == 503
            # sessions end on their own threads
            for _ in range(2):
                threading.Thread(target=metrics.session_ended).start()
            assert await asyncio.wait_for(draining, 2) is True

            assert await drain(app, grace_s=0) is True
            metrics.session_started()
            started = time.monotonic()
            assert await drain(app, grace_s=0.3) is False  # grace over, one still running
            assert 0.25 < time.monotonic() - started < 2

    run(scenario())


def test_info_names_the_engine(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, PassthroughEngine(), block_time=0.2) as client:
            await until_status(client, "/readyz", 200)  # warm, and its capacity measured
            info = await (await client.get("/api/info")).json()
            assert info["engine"] == "passthrough" and info["sample_rate"] == 22050
            assert info["cpu_fallback"] is False and "no conversion" in info["engine_note"]
            assert info["block_time_s"] == 0.2
            # measured at start-up: passthrough costs nothing, the media path bounds it
            (capacity,) = info["capacity"]
            assert capacity["source"] == "probe" and "the CPU" in capacity["detail"]
            assert info["max_sessions"] == capacity["max_sessions"] >= 1
            assert info["max_upload_bytes"] == 10 << 20
            assert info["reference_seconds"] == {"min": 1.0, "max": 30.0}

    run(scenario())


# -- metrics -----------------------------------------------------------------------------------------


def samples_of(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_metrics_endpoint_exposes_the_domain_events(tmp_path: Path) -> None:
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    async def scenario() -> None:
        async with serving(tmp_path, PassthroughEngine()) as client:
            metrics = client.app[METRICS_KEY]
            metrics.session_started()
            metrics.session_started()
            metrics.session_ended()
            metrics.session_failed("ICE")
            metrics.session_failed("engine error!")
            metrics.observe_inference(0.012)
            metrics.observe_inference(0.030)
            metrics.blocks_late(3)
            metrics.blocks_dropped(2)
            metrics.observe_latency(0.25)
            metrics.bytes_in(1000)
            metrics.bytes_out(640)

            response = await client.get("/metrics")
            assert response.status == 200 and response.content_type == "text/plain"
            values.update(samples_of(await response.text()))

    run(scenario())

    assert values[("vcstream_active_sessions", ())] == 1
    assert values[("vcstream_sessions_started_total", ())] == 2
    assert values[("vcstream_sessions_ended_total", ())] == 1
    assert values[("vcstream_sessions_failed_total", (("reason", "ice"),))] == 1
    assert values[("vcstream_sessions_failed_total", (("reason", "engine_error_"),))] == 1
    assert values[("vcstream_block_inference_seconds_count", ())] == 2
    assert values[("vcstream_block_inference_seconds_sum", ())] == pytest.approx(0.042)
    assert values[("vcstream_block_inference_seconds_bucket", (("le", "0.02"),))] == 1
    assert values[("vcstream_blocks_late_total", ())] == 3
    assert values[("vcstream_blocks_dropped_total", ())] == 2
    assert values[("vcstream_end_to_end_latency_seconds_count", ())] == 1
    assert values[("vcstream_received_bytes_total", ())] == 1000
    assert values[("vcstream_sent_bytes_total", ())] == 640
    engine = (("cpu_fallback", "0"), ("device", "cpu"), ("engine", "passthrough"))
    assert values[("vcstream_engine_info", engine)] == 1


def test_metrics_instances_are_independent() -> None:
    first, second = ServiceMetrics(), ServiceMetrics()
    first.session_started()
    second.session_ended()  # unmatched: stays at zero
    assert (first.active_sessions, second.active_sessions) == (1, 0)
    assert b"vcstream_active_sessions 1.0" in first.render()
    assert b"vcstream_active_sessions 0.0" in second.render()


# -- OpenAPI -----------------------------------------------------------------------------------------


#: the API's paths (the browser page and its static files are checked in test_openapi.py)
API_PATHS = r"^/(api/|healthz$|readyz$|metrics$|ws$)"


def test_openapi_lists_every_route_with_responses(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, PassthroughEngine()) as client:
            response = await client.get("/api/openapi.json")
            assert response.status == 200
            document = json.loads(await response.text())
            routes = {
                (route.method.lower(), route.resource.canonical)
                for route in client.app.router.routes()
                if route.resource is not None
                and route.method != "HEAD"
                and re.match(API_PATHS, route.resource.canonical)
            }

        assert document["openapi"].startswith("3.1")
        documented = {
            (method, path)
            for path, item in document["paths"].items()
            for method in item
            if method in ("get", "post", "put", "delete", "patch") and re.match(API_PATHS, path)
        }
        assert routes == documented
        for method, path in documented:
            operation = document["paths"][path][method]
            assert operation["responses"], (method, path)
            for status in operation["responses"]:
                assert re.fullmatch(r"[1-5]\d\d", status)
        text = json.dumps(document)
        for ref in re.findall(r'"#/components/schemas/(\w+)"', text):
            assert ref in document["components"]["schemas"]

    run(scenario())


# -- settings ----------------------------------------------------------------------------------------


def test_settings_from_the_environment() -> None:
    env = {
        "VCSTREAM_HOST": "127.0.0.1",
        "VCSTREAM_PORT": "9001",
        "VCSTREAM_ENGINE": "world",
        "VCSTREAM_DATA_DIR": "/srv/vc",
        "VCSTREAM_MAX_UPLOAD_BYTES": "2M",
        "VCSTREAM_MAX_SESSIONS": "3",
        "VCSTREAM_BLOCK_TIME": "0.2",
        "VCSTREAM_STUN_URLS": "stun:stun.example.org:3478, stun:other.example.org",
        "VCSTREAM_TURN_URLS": "turns:turn.example.org:5349",
        "VCSTREAM_TURN_SECRET": "s3cret",
        "VCSTREAM_LOG_LEVEL": "debug",
        "VCSTREAM_DATABASE_URL": "",  # empty counts as unset
        "VCSTREAM_VOICE_CACHE_SIZE": "8",
        "VCSTREAM_LIVE_QUALITY": "0",
    }
    settings = ServiceSettings.from_env(env)
    assert (settings.host, settings.port, settings.engine) == ("127.0.0.1", 9001, "world")
    assert settings.max_upload_bytes == 2 << 20 and settings.max_sessions == 3 and settings.block_time == 0.2
    assert settings.stun_urls == ("stun:stun.example.org:3478", "stun:other.example.org")
    assert settings.turn_urls == ("turns:turn.example.org:5349",) and settings.turn_secret == "s3cret"
    assert settings.log_level == "DEBUG"
    assert settings.effective_database_url == "sqlite:////srv/vc/vcstream.db"
    assert settings.effective_voices_dir == Path("/srv/vc/voices")
    assert settings.voice_cache_size == 8
    assert settings.live_quality is False
    assert "s3cret" not in repr(settings)

    defaults = ServiceSettings.from_env({})
    assert (defaults.host, defaults.port, defaults.engine, defaults.webrtc_latency_ms) == (
        "0.0.0.0",
        8080,
        "auto",
        20,
    )
    assert defaults.stun_urls == () and defaults.turn_secret is None and defaults.turn_ttl_s == 86400
    assert defaults.max_upload_bytes == 10 << 20 and defaults.data_dir == Path("var")
    assert defaults.voice_cache_size == 64
    assert defaults.live_quality is True


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VCSTREAM_PORT": "eighty"}, "VCSTREAM_PORT='eighty' is invalid"),
        ({"VCSTREAM_PORT": "70000"}, "port 70000 is not 0-65535"),
        ({"VCSTREAM_ENGINE": "magic"}, "engine 'magic' is not one of auto, seedvc, world, passthrough"),
        ({"VCSTREAM_MAX_UPLOAD_BYTES": "lots"}, "is not a size"),
        ({"VCSTREAM_TURN_URLS": "turn:t.example.org"}, "turn_urls need turn_secret"),
        ({"VCSTREAM_STUN_URLS": "http://x"}, "must start with stun:"),
        ({"VCSTREAM_TLS_CERT": "/c.pem"}, "tls_cert and tls_key go together"),
        ({"VCSTREAM_VOICE_CACHE_SIZE": "0"}, "voice_cache_size must be at least 1, got 0"),
        ({"VCSTREAM_LIVE_QUALITY": "maybe"}, "VCSTREAM_LIVE_QUALITY='maybe' is invalid"),
    ],
)
def test_bad_settings_name_the_problem(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        ServiceSettings.from_env(env)


def test_flags_override_the_environment() -> None:
    env = {"VCSTREAM_PORT": "9001", "VCSTREAM_HOST": "127.0.0.1", "VCSTREAM_MAX_UPLOAD_BYTES": "1M"}
    args = build_parser().parse_args(
        ["serve", "--port", "9100", "--max-upload-bytes", "3M", "--engine", "world"]
    )
    settings = settings_from_args(args, env)
    assert (settings.port, settings.host, settings.engine) == (9100, "127.0.0.1", "world")
    assert settings.max_upload_bytes == 3 << 20
    with pytest.raises(SystemExit):  # secrets stay off the command line
        build_parser().parse_args(["serve", "--turn-secret", "x"])


def test_every_setting_has_a_documented_variable_and_flag(capsys: pytest.CaptureFixture[str]) -> None:
    doc = ServiceSettings.__doc__ or ""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    help_text = capsys.readouterr().out
    for spec in fields(ServiceSettings):
        assert spec.metadata["env"] in doc, spec.name
        assert spec.metadata["env"] == "VCSTREAM_" + spec.name.upper()
        if spec.metadata["flag"]:  # secrets have no flag (they would show in ps)
            assert "--" + spec.name.replace("_", "-") in help_text, spec.name


def test_byte_sizes() -> None:
    assert [byte_size(v) for v in ("1048576", "512k", "10M", "10MiB", "1g", "1.5M")] == [
        1 << 20, 512 << 10, 10 << 20, 10 << 20, 1 << 30, 3 << 19
    ]  # fmt: skip


# -- engine choice -----------------------------------------------------------------------------------


def test_auto_takes_the_cpu_engine_and_says_why(tmp_path: Path) -> None:
    settings = ServiceSettings(engine="auto", device="cpu", model_cache=tmp_path / "empty-cache")
    result = load_engine(settings)
    assert result.engine.name == "world" and result.cpu_fallback
    assert result.engine_note.startswith("CPU engine (WORLD): the CPU device was requested")
    assert "Seed-VC weights not found in" in result.engine_note
    assert result.engine_note.endswith("quality is lower than Seed-VC")


def test_explicit_seedvc_without_weights_fails_instead_of_random_weights(tmp_path: Path) -> None:
    settings = ServiceSettings(engine="seedvc", device="cpu", model_cache=tmp_path / "empty-cache")
    with pytest.raises(ModelUnavailableError, match="Seed-VC weights missing"):
        load_engine(settings)


# -- the command -------------------------------------------------------------------------------------


def test_serve_command_answers_and_drains_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "VCSTREAM_DATA_DIR": str(tmp_path / "var"), "VCSTREAM_SHUTDOWN_GRACE_S": "5"}
    command = [sys.executable, "-m", "vcstream.cli", "serve", "--host", "127.0.0.1", "--port", "0"]
    server = subprocess.Popen(
        [*command, "--engine", "world"], env=env, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        assert server.stderr is not None
        lines: list[str] = []
        port = None
        deadline = time.monotonic() + 60
        while not any("engine: " in line for line in lines) and time.monotonic() < deadline:
            line = server.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
            match = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", line)
            port = int(match.group(1)) if match else port
        assert port is not None, "".join(lines)
        assert any("engine: CPU engine (WORLD), chosen explicitly" in line for line in lines), lines
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as response:
            assert json.load(response) == {"status": "ok"}
        wait_until(lambda: _answers_200(f"{base}/readyz"), 10, "the server became ready")
        with urllib.request.urlopen(f"{base}/api/info", timeout=5) as response:
            assert json.load(response)["engine"] == "world"
        server.send_signal(signal.SIGTERM)
        _, rest = server.communicate(timeout=20)
        assert server.returncode == 0, rest
        assert "SIGTERM received: draining" in rest and "stopped" in rest
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
