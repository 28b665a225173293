"""The REST API under /api: the voice library, server information and its OpenAPI description.

Answers are built through the models of ``vcstream.service.schemas`` and each handler declares its
operation (``@operation``); the document at /api/openapi.json is generated from those at start-up.

Every error is JSON ``{"error": code, "message": text}`` (``json_errors`` middleware): domain
exceptions are mapped to statuses here, at the edge, and nothing reaches a client as an HTML page.
Uploads are streamed to a spooled temporary file with a size cap (``upload_form``) and refused with
413 as soon as the cap is passed; at most ``max_uploads`` run at once (``upload_slots``, else 503). A
client that goes away mid-request is logged in one line, not as the server's failure.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web
from pydantic import ValidationError

from vcstream.audio.reference import MAX_SPEECH_S, MIN_SPEECH_S
from vcstream.errors import InvalidAudioError, VcstreamError
from vcstream.service.health import STATE_KEY
from vcstream.service.keys import (
    ADMISSION_KEY,
    DEFAULTS_KEY,
    ENGINE_KEY,
    METRICS_KEY,
    SETTINGS_KEY,
    VOICES_KEY,
)
from vcstream.service.openapi import Media, build_document, error, operation, reply
from vcstream.service.schemas import (
    Capacity,
    ErrorBody,
    ReferenceSeconds,
    ServerInfo,
    Voice,
    VoiceList,
    VoicePath,
    VoiceQuery,
    VoiceUploadForm,
    json_reply,
)
from vcstream.service.tenant_api import principal_of, voice_limit
from vcstream.service.upload_form import (
    MAX_UPLOAD_PARTS,
    MULTIPART_OVERHEAD,
    UploadFormError,
    read_upload_form,
    too_large,
)
from vcstream.service.upload_slots import RETRY_AFTER_S, UPLOAD_SLOTS_KEY, UploadsBusyError, UploadSlots
from vcstream.service.voices import (
    EmptyUploadError,
    InvalidVoiceNameError,
    UnsupportedAudioError,
    UploadTooLargeError,
    VoiceLimitError,
    VoiceNameTakenError,
    VoiceNotFoundError,
)

log = logging.getLogger(__name__)

__all__ = [
    "DOMAIN_ERRORS",
    "MAX_UPLOAD_PARTS",
    "MULTIPART_OVERHEAD",
    "ApiError",
    "error_response",
    "json_errors",
    "setup",
]
#: the status of an answer to a client that went away (nginx's "client closed request"): nobody
#: receives it; the access log shows the request ended by the client, not failed by the server
CLIENT_GONE = 499

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error answer decided in a handler (status, machine-readable code, sentence for people)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


#: domain exception -> (status, code); the first matching class wins (subclasses before bases)
DOMAIN_ERRORS: tuple[tuple[type[Exception], int, str], ...] = (
    (VoiceNotFoundError, 404, "voice_not_found"),
    (VoiceLimitError, 403, "voice_limit"),
    (InvalidVoiceNameError, 400, "invalid_name"),
    (VoiceNameTakenError, 409, "name_taken"),
    (EmptyUploadError, 400, "empty_file"),
    (UploadTooLargeError, 413, "file_too_large"),
    (UnsupportedAudioError, 415, "unsupported_media_type"),
    (InvalidAudioError, 422, "invalid_audio"),
)


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return json_reply(ErrorBody(error=code, message=message), status, headers)


def _is_websocket(request: web.Request) -> bool:
    return request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"


def _client_gone(request: web.Request) -> bool:
    """Whether the request's connection is closed (the client left; its reads failed for that)."""
    transport = request.transport
    return transport is None or transport.is_closing()


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
    except UploadFormError as exc:
        response = error_response(400, exc.code, str(exc))
        if exc.body_broken:
            # aiohttp would read the rest of the body to keep the connection, fail on it again and log
            # that as its own error: the body is over as far as this server cares, and so is the
            # connection (the next bytes cannot be trusted to start a request)
            request.content.feed_eof()
            response.force_close()
        return response
    except UploadsBusyError as exc:
        return error_response(503, "too_many_uploads", str(exc), {hdrs.RETRY_AFTER: str(RETRY_AFTER_S)})
    except ConnectionResetError as exc:
        if not _client_gone(request):
            raise
        log.info("%s %s: the client went away before its request was read (%s)", request.method,
                 request.path, exc)  # fmt: skip
        return web.Response(status=CLIENT_GONE)
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


_WAV = Media("audio/wav", {"type": "string", "contentMediaType": "audio/wav"})
_VOICE_NOT_FOUND = error("no voice with this id (error voice_not_found), or not one of the caller's")
#: with --auth required, every voice route needs a credential
_UNAUTHORIZED = error("unauthorized: no valid API key or access token (only with --auth required)")
_NOT_ALLOWED = "not_allowed: an access token minted without manage_voices"


def _owner(request: web.Request) -> str | None:
    """The voices' owner for this request: the caller's tenant (None on an open server)."""
    return principal_of(request).tenant_id


def _usable_voice_id(request: web.Request) -> str:
    """The path's voice id, if the caller's access token may use it (else: not found, as for any
    voice of another tenant)."""
    voice_id = _voice_id(request)
    if not principal_of(request).may_use(voice_id):
        raise VoiceNotFoundError(f"no voice with id {voice_id!r}")
    return voice_id


def _require_manage(request: web.Request, what: str) -> None:
    if not principal_of(request).may_manage_voices:
        raise ApiError(403, "not_allowed", f"this access token may not {what} (minted without manage_voices)")


@operation(
    "addVoice",
    f"Upload a reference recording ({MIN_SPEECH_S:g}-{MAX_SPEECH_S:g} s of speech after trimming silence)",
    {
        201: reply("stored (Location: its URL); notices say what was changed (trimmed to 30 s)", Voice),
        400: error(
            "missing_file, invalid_name (empty, invisible, control or bidi characters, U+FFFF...), "
            "empty_file, bad_multipart, bad_body (e.g. a Content-Encoding the body is not in), "
            "unnamed_part, duplicate_field (two 'file' or 'name' fields) or "
            f"too_many_parts (over {MAX_UPLOAD_PARTS} form fields)"
        ),
        401: _UNAUTHORIZED,
        403: error(f"{_NOT_ALLOWED}; voice_limit: the plan's voices are all used"),
        409: error("name_taken: a voice has this name (ignoring case and Unicode normalisation)"),
        413: error("file_too_large: above the server's upload limit (max_upload_bytes of /api/info)"),
        415: error("unsupported_media_type (not audio) or not_multipart"),
        422: error("invalid_audio: silent, under 1 s of sound, NaN/Inf samples, no audio"),
        503: error("too_many_uploads: the server's uploads in flight are all taken (see Retry-After)"),
    },
    body=("multipart/form-data", VoiceUploadForm),
)
async def upload_voice(request: web.Request) -> web.Response:
    library = request.app[VOICES_KEY]
    limit = library.max_upload_bytes
    _require_manage(request, "add voices")
    if request.content_type != "multipart/form-data":
        raise ApiError(
            415,
            "not_multipart",
            "send the reference as multipart/form-data with the fields 'file' (audio) and 'name'",
        )
    if request.content_length is not None and request.content_length > limit + MULTIPART_OVERHEAD:
        raise too_large(limit)  # refused before reading a byte of it
    async with request.app[UPLOAD_SLOTS_KEY].claim():  # before reading: a refused body is never read
        form = await read_upload_form(request, limit)
        try:
            if form.recording is None:
                raise ApiError(
                    400, "missing_file", "the form field 'file' (the reference recording) is missing"
                )
            info = await library.add(
                form.name,
                form.filename,
                form.content_type,
                form.recording,
                owner=_owner(request),
                max_voices=voice_limit(request),
            )
        finally:
            form.close()
    return json_reply(Voice.of(info), 201, headers={hdrs.LOCATION: f"/api/voices/{info.id}"})


@operation(
    "listVoices",
    "List the caller's voices, oldest first",
    {200: reply("the voices", VoiceList), 401: _UNAUTHORIZED},
)
async def list_voices(request: web.Request) -> web.Response:
    principal = principal_of(request)
    voices = await request.app[VOICES_KEY].list(principal.tenant_id)
    usable = [voice for voice in voices if principal.may_use(voice.id)]
    return json_reply(VoiceList(voices=[Voice.of(voice) for voice in usable]))


def _voice_id(request: web.Request) -> str:
    return VoicePath.model_validate(dict(request.match_info)).voice_id


@operation(
    "getVoice",
    "A voice's metadata, or its recording with ?audio=1",
    {
        200: reply("the voice (or with ?audio=1 its 16-bit WAV recording)", Voice, _WAV),
        400: error("invalid_query: audio is not a boolean"),
        401: _UNAUTHORIZED,
        404: _VOICE_NOT_FOUND,
    },
    path=VoicePath,
    query=VoiceQuery,
)
async def get_voice(request: web.Request) -> web.StreamResponse:
    try:
        query = VoiceQuery.model_validate(dict(request.query))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ApiError(400, "invalid_query", problems) from exc
    if query.audio:
        return await voice_audio(request)
    info = await request.app[VOICES_KEY].get(_usable_voice_id(request), _owner(request))
    return json_reply(Voice.of(info))


@operation(
    "getVoiceAudio",
    "The stored recording (trimmed reference, 16-bit WAV, 48 kHz mono)",
    {200: reply("the recording", _WAV), 401: _UNAUTHORIZED, 404: _VOICE_NOT_FOUND},
    path=VoicePath,
)
async def voice_audio(request: web.Request) -> web.StreamResponse:
    voice_id = _usable_voice_id(request)
    wav = await request.app[VOICES_KEY].audio(voice_id, _owner(request))
    headers = {hdrs.CONTENT_DISPOSITION: f'inline; filename="{voice_id}.wav"'}
    return web.Response(body=wav, content_type="audio/wav", headers=headers)


@operation(
    "deleteVoice",
    "Delete a voice and its recording",
    {204: reply("deleted"), 401: _UNAUTHORIZED, 403: error(_NOT_ALLOWED), 404: _VOICE_NOT_FOUND},
    path=VoicePath,
)
async def delete_voice(request: web.Request) -> web.Response:
    _require_manage(request, "delete voices")
    await request.app[VOICES_KEY].delete(_usable_voice_id(request), _owner(request))
    return web.Response(status=204)


# -- server -----------------------------------------------------------------------------------------


@operation(
    "getInfo",
    "Engine in use (with a note when the CPU engine stands in for Seed-VC), capacity",
    {200: reply("server information", ServerInfo)},
)
async def info(request: web.Request) -> web.Response:
    app = request.app
    settings, state, engine = app[SETTINGS_KEY], app[STATE_KEY], app[ENGINE_KEY]
    admission = app[ADMISSION_KEY]
    described = engine.describe()
    return json_reply(
        ServerInfo(
            engine=engine.name,
            engine_note=admission.primary.note,
            cpu_fallback=admission.primary.cpu_fallback,
            device=str(described.get("device", "cpu")),
            sample_rate=engine.sample_rate,
            block_time_s=app[DEFAULTS_KEY].block_time,
            max_sessions=admission.places,
            active_sessions=app[METRICS_KEY].active_sessions,
            capacity=[
                Capacity(
                    engine=slot.engine.name,
                    device=slot.engine.device,
                    role=slot.role,
                    max_sessions=slot.places,
                    active_sessions=slot.active,
                    source=slot.capacity.source if slot.capacity else "unmeasured",
                    detail=slot.capacity.detail if slot.capacity else "measured once the engine is warm",
                    note=slot.note,
                )
                for slot in admission.slots
            ],
            ready=state.not_ready_reason() is None,
            draining=state.draining,
            max_upload_bytes=settings.max_upload_bytes,
            reference_seconds=ReferenceSeconds(min=MIN_SPEECH_S, max=MAX_SPEECH_S),
            auth=settings.auth,
        )
    )


OPENAPI_KEY: web.AppKey[dict[str, Any]] = web.AppKey("openapi")
OPENAPI_INFO = {
    "title": "vcstream",
    "version": "0.1.0",
    "description": "Real-time zero-shot voice conversion: voice library, server state, health, signalling.",
    "license": {"name": "GPL-3.0-or-later", "identifier": "GPL-3.0-or-later"},
}


@operation(
    "getOpenApi",
    "This document",
    {200: reply("OpenAPI 3.1 document", Media("application/json", {"type": "object"}))},
)
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI_KEY])


async def _build_openapi(app: web.Application) -> None:
    """Generated once every route is registered; an undocumented route stops start-up here."""
    app[OPENAPI_KEY] = build_document(app, OPENAPI_INFO)


def setup(app: web.Application) -> None:
    app[UPLOAD_SLOTS_KEY] = UploadSlots(app[SETTINGS_KEY].max_uploads)
    router = app.router
    router.add_post("/api/voices", upload_voice)
    router.add_get("/api/voices", list_voices)
    router.add_get("/api/voices/{voice_id}", get_voice)
    router.add_delete("/api/voices/{voice_id}", delete_voice)
    router.add_get("/api/voices/{voice_id}/audio", voice_audio)
    router.add_get("/api/info", info)
    router.add_get("/api/openapi.json", openapi)
    app.on_startup.append(_build_openapi)
