"""The voice library REST API against a real aiohttp server on a socket, the real WORLD engine, real
GStreamer decoding and a real SQLite database: every validation case with its status and message,
persistence across app instances, no leftovers after failures, features computed once."""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from aiohttp import FormData, web
from aiohttp.test_utils import TestClient, TestServer

from conftest import write_wav
from vcstream.audio.types import Audio
from vcstream.cli import main as cli_main
from vcstream.engines.base import VoiceProfile
from vcstream.engines.world import WorldEngine
from vcstream.media import decode_file, encode_file
from vcstream.service.app import create_app
from vcstream.service.config import ServiceSettings
from vcstream.service.keys import VOICES_KEY
from vcstream.service.voices import VoiceNotFoundError

Client = TestClient[web.Request, web.Application]
SpeechMaker = Callable[..., tuple[np.ndarray, int]]
#: small enough that a 35 s wav (1.1 MB at 16 kHz) fits and a test can exceed it cheaply
UPLOAD_LIMIT = 1_500_000


class CountingWorldEngine(WorldEngine):
    """The real WORLD engine, counting how often it computes a voice's features."""

    def __init__(self) -> None:
        super().__init__()
        self.prepared = 0
        self._lock = threading.Lock()

    def prepare_voice(self, reference: Audio, sample_rate: int) -> VoiceProfile:
        with self._lock:
            self.prepared += 1
        return super().prepare_voice(reference, sample_rate)


def settings_for(data_dir: Path, **changes: Any) -> ServiceSettings:
    return ServiceSettings(port=0, data_dir=data_dir, max_upload_bytes=UPLOAD_LIMIT, **changes)


@asynccontextmanager
async def serving(settings: ServiceSettings, engine: WorldEngine | None = None) -> AsyncIterator[Client]:
    app = create_app(settings, engine or WorldEngine())
    async with TestClient(TestServer(app)) as client:
        for _ in range(200):  # warm-up runs in the background after start-up
            if (await client.get("/readyz")).status == 200:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the server did not become ready")
        yield client


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


def form(data: bytes | None, name: str | None = "Alice", filename: str = "voice.wav") -> FormData:
    fields = FormData(default_to_multipart=True)  # as a browser form with enctype multipart
    if name is not None:
        fields.add_field("name", name)
    if data is not None:
        fields.add_field("file", io.BytesIO(data), filename=filename, content_type="application/octet-stream")
    return fields


async def upload(
    client: Client, data: bytes, name: str = "Alice", filename: str = "voice.wav"
) -> dict[str, Any]:
    response = await client.post("/api/voices", data=form(data, name, filename))
    body: dict[str, Any] = await response.json()
    assert response.status == 201, body
    return body


async def expect_error(response: Any, status: int, code: str, message: str) -> None:
    body = await response.json()
    assert response.status == status, body
    assert body["error"] == code, body
    assert re.search(message, body["message"]), body


def stored_recordings(settings: ServiceSettings) -> list[str]:
    """Every recording the library holds: rows of ``voice_audio``, and files in the voices folder
    (where versions before schema revision 0002 kept them; nothing may appear there now)."""
    folder = settings.effective_voices_dir
    files = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    db = sa.create_engine(settings.effective_database_url)
    try:
        with db.connect() as connection:
            rows = connection.execute(sa.text("SELECT voice_id FROM voice_audio")).scalars().all()
    finally:
        db.dispose()
    return [*files, *(f"voice_audio:{voice_id}" for voice_id in sorted(rows))]


# -- the files ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech(flite_speech: SpeechMaker) -> tuple[np.ndarray, int]:
    return flite_speech("slt", None, 16000)


@pytest.fixture(scope="module")
def audio_files(speech: tuple[np.ndarray, int], tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The same speech as wav, flac, mp3, ogg/opus and webm/opus (as MediaRecorder records it)."""
    samples, rate = speech
    folder = tmp_path_factory.mktemp("uploads")
    files = {"wav": write_wav(folder / "s.wav", samples, rate)}
    for fmt in ("flac", "mp3", "ogg"):
        files[fmt] = encode_file(folder / f"s.{fmt}", samples, rate)
    webm = folder / "s.webm"
    subprocess.run(
        ["gst-launch-1.0", "-q", "filesrc", f"location={files['wav']}", "!", "wavparse", "!", "audioconvert",
         "!", "audioresample", "!", "opusenc", "!", "webmmux", "!", "filesink", f"location={webm}"],
        check=True,
        timeout=60,
    )  # fmt: skip
    files["webm"] = webm
    return {fmt: path.read_bytes() for fmt, path in files.items()}


def wav_bytes(tmp_path: Path, samples: np.ndarray, rate: int = 16000) -> bytes:
    return write_wav(tmp_path / "x.wav", samples, rate).read_bytes()


def nan_wav() -> bytes:
    """A 32-bit float WAV (format tag 3) holding NaNs, written by hand."""
    data = (0.3 * np.sin(np.arange(32000) * 0.05)).astype("<f4")
    data[1000:1100] = np.nan
    payload: bytes = data.tobytes()
    header = b"RIFF" + (36 + len(payload)).to_bytes(4, "little") + b"WAVEfmt "
    header += (16).to_bytes(4, "little") + (3).to_bytes(2, "little") + (1).to_bytes(2, "little")
    header += (16000).to_bytes(4, "little") + (64000).to_bytes(4, "little")
    header += (4).to_bytes(2, "little") + (32).to_bytes(2, "little")
    return header + b"data" + len(payload).to_bytes(4, "little") + payload


# -- the happy path ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "ogg", "webm"])
def test_upload_list_get_download_delete(
    fmt: str, audio_files: dict[str, bytes], speech: tuple[np.ndarray, int], tmp_path: Path
) -> None:
    settings = settings_for(tmp_path / "var")
    speech_s = speech[0].shape[0] / speech[1]

    async def scenario() -> None:
        async with serving(settings) as client:
            response = await client.post("/api/voices", data=form(audio_files[fmt], "Alice", f"alice.{fmt}"))
            voice = await response.json()
            assert response.status == 201, voice
            assert response.headers["Location"] == f"/api/voices/{voice['id']}"
            assert re.fullmatch(r"[0-9a-f]{32}", voice["id"])
            assert voice["name"] == "Alice" and voice["filename"] == f"alice.{fmt}"
            assert voice["notices"] == []
            # leading/trailing silence trimmed, the speech itself kept
            assert 0.6 * speech_s < voice["duration_s"] <= speech_s + 0.1

            listed = await (await client.get("/api/voices")).json()
            assert listed == {"voices": [voice]}
            fetched = await client.get(f"/api/voices/{voice['id']}")
            assert fetched.status == 200 and await fetched.json() == voice

            for url in (f"/api/voices/{voice['id']}/audio", f"/api/voices/{voice['id']}?audio=1"):
                audio = await client.get(url)
                assert audio.status == 200 and audio.content_type == "audio/wav"
                (tmp_path / "down.wav").write_bytes(await audio.read())
                decoded = decode_file(tmp_path / "down.wav", voice["sample_rate"])
                assert abs(decoded.shape[0] / voice["sample_rate"] - voice["duration_s"]) < 0.01

            deleted = await client.delete(f"/api/voices/{voice['id']}")
            assert deleted.status == 204
            await expect_error(
                await client.get(f"/api/voices/{voice['id']}"), 404, "voice_not_found", voice["id"]
            )
            assert await (await client.get("/api/voices")).json() == {"voices": []}
        assert stored_recordings(settings) == []

    run(scenario())


def test_long_reference_is_trimmed_to_30_s_with_a_notice(
    speech: tuple[np.ndarray, int], tmp_path: Path
) -> None:
    samples, rate = speech
    long = np.tile(samples, int(np.ceil(36 * rate / samples.shape[0])))[: 36 * rate]
    data = wav_bytes(tmp_path, long, rate)
    assert len(data) < UPLOAD_LIMIT

    async def scenario() -> None:
        async with serving(settings_for(tmp_path / "var")) as client:
            voice = await upload(client, data)
            assert voice["duration_s"] == pytest.approx(30.0, abs=0.01)
            assert len(voice["notices"]) == 1 and "only the first 30 s are used" in voice["notices"][0]
            again = await (await client.get(f"/api/voices/{voice['id']}")).json()
            assert again["notices"] == voice["notices"]

    run(scenario())


# -- validation --------------------------------------------------------------------------------------

Case = Callable[[Client, tuple[np.ndarray, int], Path], Awaitable[Any]]


async def post(client: Client, fields: FormData) -> Any:
    return await client.post("/api/voices", data=fields)


def speech_wav(tmp: Path, speech: tuple[np.ndarray, int]) -> bytes:
    return wav_bytes(tmp, speech[0], speech[1])


CASES: dict[str, tuple[Case, int, str, str]] = {
    "missing file field": (
        lambda c, s, t: post(c, form(None, "Alice")),
        400, "missing_file", "form field 'file'",
    ),
    "missing name": (
        lambda c, s, t: post(c, form(speech_wav(t, s), None)),
        400, "invalid_name", "voice name is required",
    ),
    "empty name": (
        lambda c, s, t: post(c, form(speech_wav(t, s), "   ")),
        400, "invalid_name", "voice name is required",
    ),
    "name too long": (
        lambda c, s, t: post(c, form(speech_wav(t, s), "x" * 101)),
        400, "invalid_name", "101 characters; at most 100",
    ),
    "not audio": (
        lambda c, s, t: post(c, form(b"just some text, not audio\n" * 200, filename="notes.txt")),
        415, "unsupported_media_type", "file 'notes.txt' is not audio",
    ),
    "empty file": (
        lambda c, s, t: post(c, form(b"", filename="empty.wav")),
        400, "empty_file", "file 'empty.wav' is empty",
    ),
    "silent": (
        lambda c, s, t: post(c, form(wav_bytes(t, np.zeros(3 * 16000, dtype=np.float32)))),
        422, "invalid_audio", "reference audio is silent",
    ),
    "under 1 s of sound": (
        lambda c, s, t: post(
            c, form(wav_bytes(t, np.concatenate([np.zeros(8000), s[0][8000:16000], np.zeros(16000)])))
        ),
        422, "invalid_audio", r"holds 0\.\d+ s of sound after trimming silence; at least 1 s needed",
    ),
    "NaN samples": (
        lambda c, s, t: post(c, form(nan_wav(), filename="nan.wav")),
        422, "invalid_audio", "file 'nan.wav' holds NaN or infinite samples",
    ),
    "not multipart": (
        lambda c, s, t: c.post("/api/voices", json={"name": "Alice"}),
        415, "not_multipart", "multipart/form-data",
    ),
    "oversize": (
        lambda c, s, t: post(c, form(bytes(UPLOAD_LIMIT + 1))),
        413, "file_too_large", f"exceeds the limit of {UPLOAD_LIMIT} bytes",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_invalid_upload_is_refused_and_leaves_nothing(
    case: str, speech: tuple[np.ndarray, int], tmp_path: Path
) -> None:
    send, status, code, message = CASES[case]
    settings = settings_for(tmp_path / "var")

    async def scenario() -> None:
        async with serving(settings) as client:
            await expect_error(await send(client, speech, tmp_path), status, code, message)
            assert await (await client.get("/api/voices")).json() == {"voices": []}
        assert stored_recordings(settings) == []

    run(scenario())


def test_oversize_stream_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """Chunked (no Content-Length): the answer comes once the cap is passed, not after the body."""
    boundary = "vcstream-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    chunk, chunks = bytes(64 * 1024), 3 * UPLOAD_LIMIT // (64 * 1024)
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        yield head
        for _ in range(chunks):
            sent += 1
            yield chunk
            await asyncio.sleep(0.01)
        yield f"\r\n--{boundary}--\r\n".encode()

    async def scenario() -> None:
        async with serving(settings_for(tmp_path / "var")) as client:
            headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
            response = await client.post("/api/voices", data=body(), headers=headers)
            sent_when_answered = sent
            await expect_error(response, 413, "file_too_large", "exceeds the limit")
            assert sent_when_answered < chunks * 2 // 3, (sent_when_answered, chunks)

    run(scenario())


def test_unknown_and_malformed_ids_are_404(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(settings_for(tmp_path / "var")) as client:
            missing = "0" * 32
            for method, url in (
                ("GET", f"/api/voices/{missing}"),
                ("GET", f"/api/voices/{missing}/audio"),
                ("GET", f"/api/voices/{missing}?audio=1"),
                ("DELETE", f"/api/voices/{missing}"),
                ("GET", "/api/voices/not-an-id"),
                ("GET", "/api/voices/..%2F..%2Fetc%2Fpasswd/audio"),
            ):
                response = await client.request(method, url)
                await expect_error(response, 404, "voice_not_found", "no voice with id")
            await expect_error(await client.get("/api/nothing"), 404, "not_found", "GET /api/nothing")
            await expect_error(await client.put("/api/voices"), 405, "method_not_allowed", "PUT /api/voices")

    run(scenario())


# -- persistence, failures and the feature cache -----------------------------------------------------


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_library_persists_across_apps_on_the_same_database(
    database: str, audio_files: dict[str, bytes], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if database == "sqlite":
        url = f"sqlite:///{tmp_path / 'shared' / 'voices.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
        assert cli_main(["db", "upgrade", "--database-url", url]) == 0  # servers there need an init step
    settings = settings_for(tmp_path / "first", database_url=url, voices_dir=tmp_path / "shared" / "voices")

    async def scenario() -> None:
        async with serving(settings) as client:
            voice = await upload(client, audio_files["flac"], "Bob", "bob.flac")
        async with serving(settings) as client:  # a new process would see the same
            assert await (await client.get("/api/voices")).json() == {"voices": [voice]}
            audio = await client.get(f"/api/voices/{voice['id']}/audio")
            assert audio.status == 200 and len(await audio.read()) > 44

    run(scenario())
    assert (tmp_path / "shared" / "voices.db").is_file() == (database == "sqlite")
    assert not (tmp_path / "first").exists()  # nothing under data_dir when both paths are given


def test_features_are_computed_once_per_voice(audio_files: dict[str, bytes], tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "var")

    async def scenario() -> None:
        engine = CountingWorldEngine()
        async with serving(settings, engine) as client:
            library = client.app[VOICES_KEY]
            before = engine.prepared
            voice = await upload(client, audio_files["wav"])
            assert engine.prepared == before + 1  # validated with the engine on upload, kept
            first, second = await library.profile(voice["id"]), await library.profile(voice["id"])
            assert first is second and engine.prepared == before + 1

        fresh = CountingWorldEngine()
        async with serving(settings, fresh) as client:  # a new process: computed on demand, once
            library = client.app[VOICES_KEY]
            before = fresh.prepared
            profiles = await asyncio.gather(*(library.profile(voice["id"]) for _ in range(4)))
            assert all(p is profiles[0] for p in profiles)
            assert fresh.prepared == before + 1
            assert profiles[0].engine == "world" and profiles[0].duration_s == pytest.approx(
                voice["duration_s"], abs=0.01
            )

            await client.delete(f"/api/voices/{voice['id']}")
            with pytest.raises(VoiceNotFoundError):
                await library.profile(voice["id"])

    run(scenario())


@pytest.mark.parametrize("broken", ["voices", "voice_audio"])
def test_database_failure_stores_neither_the_voice_nor_its_recording(
    broken: str, audio_files: dict[str, bytes], tmp_path: Path
) -> None:
    """The row and its recording go in one transaction: whichever insert fails, neither remains."""
    settings = settings_for(tmp_path / "var")
    kept = "voice_audio" if broken == "voices" else "voices"

    async def scenario() -> None:
        async with serving(settings) as client:
            # another client breaks the schema under the running server
            db = sa.create_engine(settings.effective_database_url)
            try:
                with db.begin() as connection:
                    connection.execute(sa.text(f"DROP TABLE {broken}"))
                response = await client.post("/api/voices", data=form(audio_files["wav"]))
                await expect_error(response, 500, "internal_error", "internal server error")
                with db.connect() as connection:
                    assert connection.execute(sa.text(f"SELECT count(*) FROM {kept}")).scalar_one() == 0
            finally:
                db.dispose()
        if broken == "voices":
            assert stored_recordings(settings) == []
        assert not settings.effective_voices_dir.exists()

    run(scenario())
