"""The HTTP API's bodies, queries and path parameters as pydantic models.

Handlers build every JSON answer through these models (``json_reply``) and parse queries with them;
``vcstream.service.openapi`` describes the same models, so the document and the answers cannot differ.
Response models forbid extra fields: their JSON Schema then says exactly what a client receives.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from vcstream.service.db.models import MAX_NAME_CHARS
from vcstream.service.voices import VoiceInfo

#: the ids the library issues (uuid4 hex)
VOICE_ID_PATTERN = r"^[0-9a-f]{32}$"


class Body(BaseModel):
    """A JSON body the server sends: exactly these fields, always all of them (defaults included)."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_serialization_defaults_required=True)


def json_reply(body: Body, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=body.model_dump_json(), status=status, headers=headers, content_type="application/json"
    )


# -- errors ------------------------------------------------------------------------------------------


class ErrorBody(Body):
    """Every error answer (HTTP status >= 400) of every route."""

    error: str = Field(description="machine-readable code, e.g. voice_not_found")
    message: str = Field(description="what was wrong, for people")


# -- health ------------------------------------------------------------------------------------------


class Alive(Body):
    status: Literal["ok"] = "ok"


class Ready(Body):
    status: Literal["ready"] = "ready"


# -- voices ------------------------------------------------------------------------------------------

#: ISO 8601 with the offset written as +00:00 (``datetime.isoformat``), as the API always answered
IsoDateTime = Annotated[
    datetime,
    PlainSerializer(datetime.isoformat, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}, mode="serialization"),
]


class Voice(Body):
    """A voice of the library: its stored reference recording and what upload changed about it."""

    id: str = Field(pattern=VOICE_ID_PATTERN)
    name: str
    filename: str | None = Field(description="the uploaded file's name, as the client sent it")
    content_type: str | None = Field(description="the uploaded file's type, as the client sent it")
    duration_s: float = Field(description="seconds of the stored, trimmed reference")
    sample_rate: int
    created_at: IsoDateTime
    notices: list[str] = Field(description="what was changed on upload (e.g. trimmed to 30 s)")

    @classmethod
    def of(cls, voice: VoiceInfo) -> Voice:
        return cls(
            id=voice.id,
            name=voice.name,
            filename=voice.filename,
            content_type=voice.content_type,
            duration_s=round(voice.duration_s, 3),
            sample_rate=voice.sample_rate,
            created_at=voice.created_at,
            notices=list(voice.notices),
        )


class VoiceList(Body):
    voices: list[Voice] = Field(description="oldest first")


class VoicePath(BaseModel):
    """Path parameters of the routes of one voice."""

    voice_id: str = Field(
        description="the voice's id (32 lowercase hex digits); any other value names no voice (404)"
    )


class VoiceQuery(BaseModel):
    """Query of GET /api/voices/{voice_id}."""

    model_config = ConfigDict(extra="ignore")

    audio: bool = Field(
        default=False,
        description="true (also 1, yes, on): answer with the recording (audio/wav) instead of the metadata",
    )


class VoiceUploadForm(BaseModel):
    """The multipart/form-data fields of POST /api/voices. The handler reads them as a stream with a
    size cap (``upload_form.read_upload_form``); the library validates the name with its own messages."""

    file: bytes = Field(
        description="the reference recording: wav, flac, mp3, ogg (vorbis/opus), webm/opus...",
        json_schema_extra={"contentMediaType": "application/octet-stream"},
    )
    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS, description="shown in the voice list")


# -- server ------------------------------------------------------------------------------------------


class ReferenceSeconds(Body):
    min: float = Field(description="seconds of speech a reference needs at least (after trimming)")
    max: float = Field(description="seconds kept of a longer reference")


class Capacity(Body):
    """Sessions an engine takes at once, and how that figure was reached."""

    engine: str
    device: str
    role: str = Field(description="primary, or overflow: takes new sessions once the primary is full")
    max_sessions: int
    active_sessions: int
    source: str = Field(description="probe (measured at start-up), file (vcstream bench capacity), operator")
    detail: str = Field(description="what bounds it, in words")
    note: str = Field(description="what people are told about a call on this engine")


class ServerInfo(Body):
    """Engine in use, capacity and upload limits."""

    engine: str = Field(description="seedvc, world or passthrough")
    engine_note: str = Field(description="why this engine runs (fallbacks say so)")
    cpu_fallback: bool = Field(description="the CPU engine stands in for Seed-VC")
    device: str
    sample_rate: int
    block_time_s: float = Field(description="seconds of audio per block that new sessions get by default")
    max_sessions: int = Field(description="places on every engine together (0 until measured)")
    active_sessions: int
    capacity: list[Capacity] = Field(description="per engine: the primary, then any overflow engine")
    ready: bool
    draining: bool
    max_upload_bytes: int
    reference_seconds: ReferenceSeconds
    auth: str = Field(
        description="open (no credentials) or required (an API key or access token on voice routes and hello)"
    )
