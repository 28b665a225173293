"""The REST API under /api: the voice library, server information and its OpenAPI description.

Every error is JSON ``{"error": code, "message": text}`` (``json_errors`` middleware): domain
exceptions are mapped to statuses here, at the edge, and nothing reaches a client as an HTML page.
Uploads are streamed with a size cap and refused with 413 as soon as the cap is passed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import BodyPartReader, hdrs, web

from vcstream.audio.reference import MAX_SPEECH_S, MIN_SPEECH_S
from vcstream.errors import InvalidAudioError, VcstreamError
from vcstream.service.db.models import MAX_NAME_CHARS
from vcstream.service.health import STATE_KEY
from vcstream.service.keys import ENGINE_KEY, METRICS_KEY, SETTINGS_KEY, VOICES_KEY
from vcstream.service.voices import (
    EmptyUploadError,
    InvalidVoiceNameError,
    UnsupportedAudioError,
    UploadTooLargeError,
    VoiceNotFoundError,
)

log = logging.getLogger(__name__)

#: room for multipart boundaries, part headers and the name field on top of the file itself
MULTIPART_OVERHEAD = 64 * 1024
_CHUNK = 64 * 1024
_NAME_FIELD_LIMIT = 4 * MAX_NAME_CHARS + 64  # UTF-8 takes at most 4 bytes a character

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error answer decided in a handler (status, machine-readable code, sentence for people)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


#: domain exception -> (status, code); the first matching class wins (subclasses before bases)
DOMAIN_ERRORS: tuple[tuple[type[Exception], int, str], ...] = (
    (VoiceNotFoundError, 404, "voice_not_found"),
    (InvalidVoiceNameError, 400, "invalid_name"),
    (EmptyUploadError, 400, "empty_file"),
    (UploadTooLargeError, 413, "file_too_large"),
    (UnsupportedAudioError, 415, "unsupported_media_type"),
    (InvalidAudioError, 422, "invalid_audio"),
)


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status, headers=headers)


def _is_websocket(request: web.Request) -> bool:
    return request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into a JSON answer; WebSocket handlers keep their own error handling (a
    prepared WebSocket cannot be replaced by another response)."""
    if _is_websocket(request):
        return await handler(request)
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = (exc.reason or "error").lower().replace(" ", "_").replace("-", "_")
        headers = {k: v for k, v in exc.headers.items() if k not in (hdrs.CONTENT_TYPE, hdrs.CONTENT_LENGTH)}
        message = exc.text or exc.reason
        if message == f"{exc.status}: {exc.reason}":  # aiohttp's default text says nothing more
            message = f"{exc.reason}: {request.method} {request.path}"
        return error_response(exc.status, code, message, headers)
    except VcstreamError as exc:
        for kind, status, code in DOMAIN_ERRORS:
            if isinstance(exc, kind):
                return error_response(status, code, str(exc))
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, "internal_error", str(exc))
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, "internal_error", "internal server error (logged on the server)")


# -- voices -----------------------------------------------------------------------------------------


@dataclass
class _Upload:
    name: str | None = None
    data: bytes | None = None
    filename: str | None = None
    content_type: str | None = None


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413, "file_too_large", f"the upload exceeds the limit of {limit} bytes ({limit / 2**20:.1f} MiB)"
    )


async def _read_capped(part: BodyPartReader, limit: int, too_large: ApiError) -> bytes:
    """A part's bytes, raising ``too_large`` as soon as more than ``limit`` arrive."""
    data = bytearray()
    while chunk := await part.read_chunk(_CHUNK):
        if len(data) + len(chunk) > limit:
            raise too_large
        data += chunk
    return bytes(data)


async def _read_upload(request: web.Request, limit: int) -> _Upload:
    upload = _Upload()
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise ApiError(400, "bad_multipart", "nested multipart bodies are not supported")
            if part.name == "file":
                upload.data = await _read_capped(part, limit, _too_large(limit))
                upload.filename = part.filename
                upload.content_type = part.headers.get(hdrs.CONTENT_TYPE)
            elif part.name == "name":
                too_long = ApiError(
                    400, "invalid_name", f"the voice name is longer than {MAX_NAME_CHARS} characters"
                )
                raw = await _read_capped(part, _NAME_FIELD_LIMIT, too_long)
                try:
                    upload.name = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ApiError(400, "invalid_name", "the voice name is not valid UTF-8") from exc
            else:  # unknown fields are read and ignored, within the same overall bound
                await _read_capped(part, MULTIPART_OVERHEAD, _too_large(limit))
    except ValueError as exc:  # malformed multipart (boundary, headers)
        raise ApiError(400, "bad_multipart", f"the multipart body could not be parsed: {exc}") from exc
    return upload


async def upload_voice(request: web.Request) -> web.Response:
    library = request.app[VOICES_KEY]
    limit = library.max_upload_bytes
    if request.content_type != "multipart/form-data":
        raise ApiError(
            415,
            "not_multipart",
            "send the reference as multipart/form-data with the fields 'file' (audio) and 'name'",
        )
    if request.content_length is not None and request.content_length > limit + MULTIPART_OVERHEAD:
        raise _too_large(limit)  # refused before reading a byte of it
    upload = await _read_upload(request, limit)
    if upload.data is None:
        raise ApiError(400, "missing_file", "the form field 'file' (the reference recording) is missing")
    info = await library.add(upload.name, upload.filename, upload.content_type, upload.data)
    return web.json_response(info.to_json(), status=201, headers={hdrs.LOCATION: f"/api/voices/{info.id}"})


async def list_voices(request: web.Request) -> web.Response:
    voices = await request.app[VOICES_KEY].list()
    return web.json_response({"voices": [voice.to_json() for voice in voices]})


async def get_voice(request: web.Request) -> web.StreamResponse:
    if request.query.get("audio", "").lower() in ("1", "true", "yes"):
        return await voice_audio(request)
    info = await request.app[VOICES_KEY].get(request.match_info["voice_id"])
    return web.json_response(info.to_json())


async def voice_audio(request: web.Request) -> web.StreamResponse:
    voice_id = request.match_info["voice_id"]
    path = await request.app[VOICES_KEY].audio_path(voice_id)
    headers = {hdrs.CONTENT_TYPE: "audio/wav", hdrs.CONTENT_DISPOSITION: f'inline; filename="{voice_id}.wav"'}
    return web.FileResponse(path, headers=headers)


async def delete_voice(request: web.Request) -> web.Response:
    await request.app[VOICES_KEY].delete(request.match_info["voice_id"])
    return web.Response(status=204)


# -- server -----------------------------------------------------------------------------------------


async def info(request: web.Request) -> web.Response:
    app = request.app
    settings, state, engine = app[SETTINGS_KEY], app[STATE_KEY], app[ENGINE_KEY]
    described = engine.describe()
    return web.json_response(
        {
            "engine": engine.name,
            "engine_note": state.engine_note,
            "cpu_fallback": state.cpu_fallback,
            "device": str(described.get("device", "cpu")),
            "sample_rate": engine.sample_rate,
            "block_time_s": settings.block_time,
            "max_sessions": state.max_sessions,
            "active_sessions": app[METRICS_KEY].active_sessions,
            "ready": state.not_ready_reason() is None,
            "draining": state.draining,
            "max_upload_bytes": settings.max_upload_bytes,
            "reference_seconds": {"min": MIN_SPEECH_S, "max": MAX_SPEECH_S},
        }
    )


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


def setup(app: web.Application) -> None:
    router = app.router
    router.add_post("/api/voices", upload_voice)
    router.add_get("/api/voices", list_voices)
    router.add_get("/api/voices/{voice_id}", get_voice)
    router.add_delete("/api/voices/{voice_id}", delete_voice)
    router.add_get("/api/voices/{voice_id}/audio", voice_audio)
    router.add_get("/api/info", info)
    router.add_get("/api/openapi.json", openapi)


# -- OpenAPI ----------------------------------------------------------------------------------------


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


_VOICE_ID = {
    "name": "voice_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
}
_NOT_FOUND = _error("no voice with this id (error voice_not_found)")
_TEXT = {"text/plain": {"schema": {"type": "string"}}}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "vcstream",
        "version": "0.1.0",
        "description": "Real-time zero-shot voice conversion: voice library, server state, health.",
        "license": {"name": "GPL-3.0-or-later", "identifier": "GPL-3.0-or-later"},
    },
    "paths": {
        "/api/voices": {
            "get": {
                "summary": "List the voices of the library, oldest first",
                "operationId": "listVoices",
                "responses": {"200": _json("the voices", "VoiceList")},
            },
            "post": {
                "summary": "Upload a reference recording (1-30 s of speech after trimming silence)",
                "operationId": "addVoice",
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["file", "name"],
                                "properties": {
                                    "file": {
                                        "type": "string",
                                        "contentMediaType": "application/octet-stream",
                                        "description": "wav, flac, mp3, ogg (vorbis/opus), webm/opus...",
                                    },
                                    "name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME_CHARS},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "201": _json("stored; notices say what was changed (trimmed to 30 s)", "Voice"),
                    "400": _error("missing_file, invalid_name, empty_file or bad_multipart"),
                    "413": _error("file_too_large: above the server's upload limit"),
                    "415": _error("unsupported_media_type (not audio) or not_multipart"),
                    "422": _error("invalid_audio: silent, under 1 s of sound, NaN/Inf samples, no audio"),
                },
            },
        },
        "/api/voices/{voice_id}": {
            "parameters": [_VOICE_ID],
            "get": {
                "summary": "A voice's metadata, or its recording with ?audio=1",
                "operationId": "getVoice",
                "parameters": [
                    {
                        "name": "audio",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["1"]},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "the voice (or with ?audio=1 its 16-bit WAV recording)",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Voice"}},
                            "audio/wav": {"schema": {"type": "string", "contentMediaType": "audio/wav"}},
                        },
                    },
                    "404": _NOT_FOUND,
                },
            },
            "delete": {
                "summary": "Delete a voice and its recording",
                "operationId": "deleteVoice",
                "responses": {"204": {"description": "deleted"}, "404": _NOT_FOUND},
            },
        },
        "/api/voices/{voice_id}/audio": {
            "parameters": [_VOICE_ID],
            "get": {
                "summary": "The stored recording (trimmed reference, 16-bit WAV, 48 kHz mono)",
                "operationId": "getVoiceAudio",
                "responses": {
                    "200": {
                        "description": "the recording",
                        "content": {
                            "audio/wav": {"schema": {"type": "string", "contentMediaType": "audio/wav"}}
                        },
                    },
                    "404": _NOT_FOUND,
                },
            },
        },
        "/api/info": {
            "get": {
                "summary": "Engine in use (with a note when the CPU engine stands in for Seed-VC), capacity",
                "operationId": "getInfo",
                "responses": {"200": _json("server information", "Info")},
            }
        },
        "/api/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "getOpenApi",
                "responses": {
                    "200": {"description": "OpenAPI 3.1 document", "content": {"application/json": {}}}
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness: the process answers",
                "operationId": "healthz",
                "responses": {"200": _json("alive", "Status")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: engine loaded and warm, not draining",
                "operationId": "readyz",
                "responses": {
                    "200": _json("ready for sessions", "Status"),
                    "503": _error("not_ready: warming up, warm-up failed, or shutting down"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text exposition format)",
                "operationId": "metrics",
                "responses": {"200": {"description": "metrics", "content": _TEXT}},
            }
        },
    },
    "components": {
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error", "message"],
                "properties": {
                    "error": {"type": "string", "description": "machine-readable code"},
                    "message": {"type": "string", "description": "what was wrong, for people"},
                },
            },
            "Voice": {
                "type": "object",
                "required": ["id", "name", "duration_s", "sample_rate", "created_at", "notices"],
                "properties": {
                    "id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                    "name": {"type": "string"},
                    "filename": {"type": ["string", "null"]},
                    "content_type": {"type": ["string", "null"]},
                    "duration_s": {
                        "type": "number",
                        "description": "seconds of the stored, trimmed reference",
                    },
                    "sample_rate": {"type": "integer"},
                    "created_at": {"type": "string", "format": "date-time"},
                    "notices": {"type": "array", "items": {"type": "string"}},
                },
            },
            "VoiceList": {
                "type": "object",
                "required": ["voices"],
                "properties": {"voices": {"type": "array", "items": {"$ref": "#/components/schemas/Voice"}}},
            },
            "Info": {
                "type": "object",
                "properties": {
                    "engine": {"type": "string", "enum": ["seedvc", "world", "passthrough"]},
                    "engine_note": {"type": "string"},
                    "cpu_fallback": {"type": "boolean"},
                    "device": {"type": "string"},
                    "sample_rate": {"type": "integer"},
                    "block_time_s": {"type": ["number", "null"]},
                    "max_sessions": {"type": "integer"},
                    "active_sessions": {"type": "integer"},
                    "ready": {"type": "boolean"},
                    "draining": {"type": "boolean"},
                    "max_upload_bytes": {"type": "integer"},
                    "reference_seconds": {
                        "type": "object",
                        "properties": {"min": {"type": "number"}, "max": {"type": "number"}},
                    },
                },
            },
            "Status": {"type": "object", "properties": {"status": {"type": "string"}}},
        }
    },
}
