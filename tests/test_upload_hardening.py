"""Uploads and names as an outsider found them (issue 10): each input from the report, sent to a real
aiohttp server on a socket (real WORLD engine, GStreamer decoding, SQLite), answered as a client error
that names the problem, with nothing stored; a client leaving mid-upload is one log line, not a
server failure; uploads beyond ``max_uploads`` wait briefly, then get 503 with Retry-After."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from test_connection_guard import Running, guarded
from test_service_api import (
    Client,
    expect_error,
    form,
    serving,
    settings_for,
    speech_wav,
    stored_recordings,
    upload,
)
from vcstream.service.upload_slots import RETRY_AFTER_S, UPLOAD_SLOTS_KEY, UPLOAD_WAIT_S
from vcstream.service.voice_names import InvalidVoiceNameError, name_key, normalise_name, shown_filename
from waiting import wait_until_async

BOUNDARY = "vcstream-hardening"
MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


@pytest.fixture(scope="module")
def speech(flite_speech: Callable[..., tuple[np.ndarray, int]]) -> tuple[np.ndarray, int]:
    return flite_speech("slt", None, 16000)


def part(headers: str, body: bytes) -> bytes:
    return f"--{BOUNDARY}\r\n{headers}\r\n\r\n".encode() + body + b"\r\n"


def multipart(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def name_part(name: str) -> bytes:
    return part('Content-Disposition: form-data; name="name"', name.encode())


def file_part(data: bytes, filename: str = "voice.wav") -> bytes:
    disposition = f'Content-Disposition: form-data; name="file"; filename="{filename}"'
    return part(f"{disposition}\r\nContent-Type: audio/wav", data)


async def refused_and_nothing_stored(
    client: Client, body: bytes, status: int, code: str, message: str, **headers: str
) -> None:
    response = await client.post("/api/voices", data=body, headers={**MULTIPART, **headers})
    await expect_error(response, status, code, message)
    assert await (await client.get("/api/voices")).json() == {"voices": []}


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [(r.levelname, r.getMessage()) for r in bad]


# -- the multipart body ------------------------------------------------------------------------------


def test_a_part_header_line_over_8190_bytes_is_a_client_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    long_line = "X-Pad: " + "a" * (8191 - len("X-Pad: "))
    assert len(long_line) == 8191
    body = multipart(
        name_part("Alice"), part(f'Content-Disposition: form-data; name="file"\r\n{long_line}', b"x")
    )

    async def scenario() -> None:
        async with serving(settings_for(tmp_path / "var")) as client:
            await refused_and_nothing_stored(client, body, 400, "bad_multipart", "more than 8190 bytes")

    asyncio.run(scenario())
    no_errors_logged(caplog)


def test_content_encoding_gzip_on_a_plain_body_is_a_client_error(
    speech: tuple[np.ndarray, int],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    body = multipart(name_part("Alice"), file_part(speech_wav(tmp_path, speech)))

    async def scenario() -> None:
        async with serving(settings_for(tmp_path / "var")) as client:
            await refused_and_nothing_stored(
                client, body, 400, "bad_body", r"Content-Encoding: gzip", **{"Content-Encoding": "gzip"}
            )
            # the same body without the false header is a good upload
            response = await client.post("/api/voices", data=body, headers=MULTIPART)
            assert response.status == 201, await response.text()

    asyncio.run(scenario())
    no_errors_logged(caplog)


def test_two_file_parts_are_refused_naming_the_field(speech: tuple[np.ndarray, int], tmp_path: Path) -> None:
    wav = speech_wav(tmp_path, speech)
    body = multipart(name_part("Alice"), file_part(wav, "first.wav"), file_part(wav, "second.wav"))

    async def scenario() -> None:
        async with serving(settings_for(tmp_path / "var")) as client:
            await refused_and_nothing_stored(client, body, 400, "duplicate_field", "'file' is sent twice")
            twice_named = multipart(name_part("Alice"), name_part("Bob"), file_part(wav))
            await refused_and_nothing_stored(
                client, twice_named, 400, "duplicate_field", "'name' is sent twice"
            )

    asyncio.run(scenario())


def test_a_part_without_a_name_is_a_400_not_a_413(speech: tuple[np.ndarray, int], tmp_path: Path) -> None:
    # the recording itself, sent without a field name: larger than an unknown field may be
    wav = speech_wav(tmp_path, speech)
    assert len(wav) > 64 * 1024
    body = multipart(name_part("Alice"), part('Content-Disposition: form-data; filename="v.wav"', wav))

    async def scenario() -> None:
        async with serving(settings_for(tmp_path / "var")) as client:
            await refused_and_nothing_stored(client, body, 400, "unnamed_part", "form field 2 has no name")

    asyncio.run(scenario())


# -- names -------------------------------------------------------------------------------------------

REFUSED_NAMES = {
    "zero-width only": ("\u200b\u200b", "U\\+200B \\(ZERO WIDTH SPACE\\)"),
    "BOM only": ("\ufeff", "U\\+FEFF \\(ZERO WIDTH NO-BREAK SPACE\\)"),
    "joiners only": ("\u200d\u200c", "no visible character"),
    "RTL override": ("evil\u202eexe.wav", "U\\+202E \\(RIGHT-TO-LEFT OVERRIDE\\): it is a bidirectional"),
    "U+FFFF": ("voice\uffff", "U\\+FFFF \\(unnamed\\): it is an unassigned code point or noncharacter"),
    "control": ("a\tb", "U\\+0009 .*control character"),
}


@pytest.mark.parametrize("case", REFUSED_NAMES)
def test_names_that_hide_what_they_show_are_refused(
    case: str,
    speech: tuple[np.ndarray, int],
    tmp_path: Path,
) -> None:
    name, message = REFUSED_NAMES[case]
    settings = settings_for(tmp_path / "var")

    async def scenario() -> None:
        async with serving(settings) as client:
            body = multipart(name_part(name), file_part(speech_wav(tmp_path, speech)))
            await refused_and_nothing_stored(client, body, 400, "invalid_name", message)
        assert stored_recordings(settings) == []

    asyncio.run(scenario())


def test_names_equal_after_nfc_and_case_folding_collide(
    speech: tuple[np.ndarray, int], tmp_path: Path
) -> None:
    wav = speech_wav(tmp_path, speech)
    composed, decomposed = "Zo\u00eb", "Zoe\u0308"
    assert composed != decomposed and unicodedata.normalize("NFC", decomposed) == composed

    async def scenario() -> None:
        async with serving(settings_for(tmp_path / "var")) as client:
            first = await upload(client, wav, decomposed)
            assert first["name"] == composed  # stored in NFC
            for same in (composed, decomposed, "ZO\u00cb", " zoe\u0308 "):
                response = await client.post("/api/voices", data=form(wav, same))
                await expect_error(response, 409, "name_taken", "a voice named 'Zoë' exists already")
            assert [v["id"] for v in (await (await client.get("/api/voices")).json())["voices"]] == [
                first["id"]
            ]
            assert (await upload(client, wav, "Zoe"))["name"] == "Zoe"  # a different name

    asyncio.run(scenario())


#: ways a client names the file, and the name stored (None: the header itself is refused)
FILENAME_HEADERS = {
    "NUL and RTL override, percent-encoded (RFC 5987)": (
        "filename*=UTF-8''al%00ice%E2%80%AEwav.exe",
        "alicewav.exe",
    ),
    "RTL override, raw UTF-8": ('filename="al\u202eicewav.exe"', "alicewav.exe"),
    "NUL, raw": ('filename="al\x00ice.wav"', None),  # aiohttp's header parser refuses it
}


@pytest.mark.parametrize("how", FILENAME_HEADERS)
def test_nul_and_bidi_controls_never_reach_the_stored_filename(
    how: str, speech: tuple[np.ndarray, int], tmp_path: Path
) -> None:
    header, stored = FILENAME_HEADERS[how]
    wav = speech_wav(tmp_path, speech)
    disposition = f'Content-Disposition: form-data; name="file"; {header}'
    body = multipart(name_part("Alice"), part(f"{disposition}\r\nContent-Type: audio/wav", wav))

    async def scenario() -> None:
        async with serving(settings_for(tmp_path / "var")) as client:
            if stored is None:
                await refused_and_nothing_stored(client, body, 400, "bad_multipart", "could not be parsed")
                return
            response = await client.post("/api/voices", data=body, headers=MULTIPART)
            voice = await response.json()
            assert (response.status, voice["filename"]) == (201, stored), voice
            (listed,) = (await (await client.get("/api/voices")).json())["voices"]
            assert listed["filename"] == stored

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "name",
    [
        "Alice",
        "Zo\u00eb",
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian, with a zero-width non-joiner
        "\U0001f469\u200d\U0001f52c voice",  # an emoji ZWJ sequence
        "\u5c71\u7530\u3000\u82b1\u5b50",  # Japanese, with an ideographic space
        "\u05e9\u05dc\u05d5\u05dd",  # Hebrew: right-to-left text is fine, only the controls are not
    ],
)
def test_names_people_write_are_kept(name: str) -> None:
    assert normalise_name(name) == unicodedata.normalize("NFC", name)


def test_name_key_and_shown_filename() -> None:
    assert name_key("Stra\u00dfe") == name_key("STRASSE")  # full case folding, not lower()
    assert shown_filename("C:\\Users\\a\\voice\u202e.wav") == "voice.wav"
    assert shown_filename("\x00\u202e") is None
    with pytest.raises(InvalidVoiceNameError, match="at most 100"):
        normalise_name("e\u0301" * 101)  # 101 characters after NFC (202 before)
    assert normalise_name("e\u0301" * 100) == "\u00e9" * 100


# -- clients that leave, and how many uploads run at once -------------------------------------------


async def _start_upload(port: int, name: str, wav: bytes) -> asyncio.StreamWriter:
    """An upload sent up to half its recording over a raw connection, the rest never sent."""
    body = multipart(name_part(name), file_part(wav))
    head = (
        f"POST /api/voices HTTP/1.1\r\nHost: x\r\nContent-Type: {MULTIPART['Content-Type']}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + body[: len(body) // 2])
    await writer.drain()
    del reader  # the answer is never read: the server sees the client leave
    return writer


async def _voices(server: Running) -> list[dict[str, Any]]:
    status, text = await server.get("/api/voices")
    assert status == 200, text
    voices: list[dict[str, Any]] = json.loads(text)["voices"]
    return voices


# served as `vcstream serve` serves (app_runner, GuardedSite): aiohttp's test server cancels a
# handler whose client left, the real one lets the handler's reads fail
def test_a_client_leaving_mid_upload_is_one_info_line(
    speech: tuple[np.ndarray, int],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    wav = speech_wav(tmp_path, speech)

    def gone_lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "the client went away" in r.getMessage()]

    async def scenario() -> None:
        async with guarded(tmp_path) as server:
            slots = server.app[UPLOAD_SLOTS_KEY]
            writer = await _start_upload(server.port, "Alice", wav)
            await wait_until_async(lambda: slots.in_flight == 1, 10, "the server is reading the upload")
            writer.close()
            await wait_until_async(gone_lines, 10, "the departure logged")
            await wait_until_async(lambda: slots.in_flight == 0, 10, "the upload's slot freed")
            assert (await server.get("/healthz"))[0] == 200
            assert await _voices(server) == []

    asyncio.run(scenario())
    (line,) = gone_lines()
    assert line.levelno == logging.INFO and line.exc_info is None
    assert line.getMessage().startswith("POST /api/voices: the client went away"), line.getMessage()
    assert not [r for r in caplog.records if '" 500 ' in r.getMessage()]  # the access log has no 500
    no_errors_logged(caplog)


def test_uploads_beyond_the_limit_wait_then_get_503(
    speech: tuple[np.ndarray, int],
    tmp_path: Path,
) -> None:
    wav = speech_wav(tmp_path, speech)

    async def post(http: aiohttp.ClientSession, url: str, name: str) -> tuple[int, dict[str, Any], str]:
        async with http.post(url, data=form(wav, name)) as response:
            return response.status, await response.json(), response.headers.get("Retry-After", "")

    async def scenario() -> None:
        async with guarded(tmp_path, max_uploads=1) as server, aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{server.port}/api/voices"
            slots = server.app[UPLOAD_SLOTS_KEY]
            holder = await _start_upload(server.port, "Alice", wav)
            await wait_until_async(lambda: slots.in_flight == 1, 10, "the first upload holds the slot")

            started = time.monotonic()
            status, body, retry_after = await post(http, url, "Bob")
            waited = time.monotonic() - started
            assert (status, body["error"], retry_after) == (503, "too_many_uploads", str(RETRY_AFTER_S)), body
            assert "handling 1 uploads already" in body["message"], body
            assert UPLOAD_WAIT_S <= waited < UPLOAD_WAIT_S + 5, waited

            # one that arrives while the slot is taken, and frees within the wait, is served
            waiting = asyncio.create_task(post(http, url, "Carol"))
            await wait_until_async(lambda: slots.waiting == 1, 10, "the third upload waits for the slot")
            holder.close()  # the first client gives up: its slot frees at once
            status, body, _ = await waiting
            assert status == 201, body
            assert [v["name"] for v in await _voices(server)] == ["Carol"]
            assert (slots.refused, slots.in_flight, slots.waiting) == (1, 0, 0)

    asyncio.run(scenario())
