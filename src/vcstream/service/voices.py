"""The voice library: reference recordings users upload, their metadata in a database (SQLAlchemy;
SQLite by default, PostgreSQL for several instances), the recordings as files, and each voice's engine
features computed once per process.

An upload is validated completely before anything is stored: it must decode (GStreamer: wav, flac,
mp3, ogg, webm/opus as browsers record...), pass ``prepare_reference`` (finite, not silent, 1 s of
sound after trimming silence; beyond 30 s it is cut, with a notice) and give the engine a voice. The
trimmed reference is stored as a 16-bit 48 kHz WAV (engine-independent, so a library recorded under the
CPU engine serves Seed-VC unchanged later), written atomically, then the row is inserted; if the
insert fails the file is removed. Nothing half-stored remains.

All blocking work runs on the runtime's pools, never on the event loop: database calls on
``VOICES_DB_POOL``, decoding and feature extraction on ``VOICES_WORK_POOL`` (a query must not wait
behind a 30 s decode); the feature cache is touched on the event loop thread only.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
import re
import tempfile
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from vcstream.audio.reference import MAX_SPEECH_S, MIN_SPEECH_S, Reference, prepare_reference
from vcstream.engines.base import Engine, VoiceProfile
from vcstream.errors import ConfigurationError, InvalidAudioError, MediaError, VcstreamError
from vcstream.media.files import decode_file, encode_file
from vcstream.media.mainloop import Runtime
from vcstream.service.db.connect import create_database_engine, ensure_sqlite_folder, shown_url
from vcstream.service.db.migrate import prepare_for_serving
from vcstream.service.db.models import MAX_NAME_CHARS, VoiceRecord
from vcstream.service.keys import VOICES_DB_POOL, VOICES_WORK_POOL

log = logging.getLogger(__name__)

T = TypeVar("T")

#: rate of the stored recordings: WebRTC's and Opus's rate, above every engine's own
STORE_RATE = 48000
_ID = re.compile(r"^[0-9a-f]{32}$")


class VoiceNotFoundError(VcstreamError, LookupError):
    """No voice with that id (never existed, deleted, or its recording is gone)."""


class InvalidVoiceNameError(VcstreamError, ValueError):
    """The voice name is missing, empty, too long or holds control characters."""


class EmptyUploadError(InvalidAudioError):
    """The uploaded file has no bytes."""


class UploadTooLargeError(InvalidAudioError):
    """The upload is larger than the configured limit."""


class UnsupportedAudioError(InvalidAudioError):
    """The upload is not audio in any format the server can decode."""


@dataclass(frozen=True)
class VoiceInfo:
    id: str
    name: str
    filename: str | None
    content_type: str | None
    #: seconds of the stored (trimmed) reference
    duration_s: float
    sample_rate: int
    created_at: datetime
    #: what was changed on upload (e.g. trimmed to 30 s), for the client to show
    notices: tuple[str, ...]

    @classmethod
    def of(cls, record: VoiceRecord) -> VoiceInfo:
        created = record.created_at
        if created.tzinfo is None:  # SQLite keeps no zone; rows are written in UTC
            created = created.replace(tzinfo=UTC)
        return cls(
            id=record.id,
            name=record.name,
            filename=record.filename,
            content_type=record.content_type,
            duration_s=record.duration_s,
            sample_rate=record.sample_rate,
            created_at=created,
            notices=tuple(record.notices or ()),
        )


def validate_name(name: str | None) -> str:
    clean = (name or "").strip()
    if not clean:
        raise InvalidVoiceNameError("a voice name is required (form field 'name', not empty)")
    if len(clean) > MAX_NAME_CHARS:
        raise InvalidVoiceNameError(f"the voice name has {len(clean)} characters; at most {MAX_NAME_CHARS}")
    if any(unicodedata.category(char) == "Cc" for char in clean):
        raise InvalidVoiceNameError("the voice name must not contain control characters")
    return clean


def _client_filename(filename: str | None) -> str | None:
    """The base name a client sent (browsers may send paths), for display only."""
    if not filename:
        return None
    return re.split(r"[\\/]", filename)[-1][:255] or None


def _described(filename: str | None) -> str:
    return f"file {filename!r}" if filename else "the uploaded file"


class VoiceLibrary:
    """Voices by id: ``add`` (validate, store), ``list``, ``get``, ``delete``, ``audio_path``, and
    ``profile`` (the engine's features for a voice, computed once and cached per voice and engine).

    Call ``open`` before use (creates the folder; brings an SQLite database's schema up to date, and
    refuses any other database whose schema is behind) and ``close`` at the end, before ``runtime``
    closes: its ``VOICES_DB_POOL`` and ``VOICES_WORK_POOL`` run the blocking work.
    """

    def __init__(
        self,
        database_url: str,
        voices_dir: Path,
        engine: Engine,
        runtime: Runtime,
        *,
        max_upload_bytes: int = 10 << 20,
    ) -> None:
        self.database_url = database_url
        self.voices_dir = Path(voices_dir)
        self.engine = engine
        self.runtime = runtime
        self.max_upload_bytes = max_upload_bytes
        self._db = create_database_engine(database_url)
        self._sessions = sessionmaker(self._db, expire_on_commit=False)
        self._profiles: dict[tuple[str, str], VoiceProfile] = {}
        self._computing: dict[tuple[str, str], asyncio.Future[VoiceProfile]] = {}

    # -- lifecycle --------------------------------------------------------------------------------

    async def open(self) -> None:
        await self._in(VOICES_DB_POOL, self._open_blocking)

    def _open_blocking(self) -> None:
        self.voices_dir.mkdir(parents=True, exist_ok=True)
        ensure_sqlite_folder(self._db)
        try:
            revision = prepare_for_serving(self._db)  # upgrades SQLite; elsewhere, refuses if behind
        except sa.exc.OperationalError as exc:
            raise ConfigurationError(
                f"cannot open the database {shown_url(self.database_url)}: {exc}"
            ) from exc
        log.info(
            "voice library: %s at schema revision %s, recordings in %s",
            shown_url(self._db.url),
            revision,
            self.voices_dir,
        )

    async def close(self) -> None:
        await self._in(VOICES_DB_POOL, self._db.dispose)  # closes the pooled connections
        self._profiles.clear()

    # -- queries ----------------------------------------------------------------------------------

    async def list(self) -> builtins.list[VoiceInfo]:
        def query() -> builtins.list[VoiceInfo]:
            with self._sessions() as session:
                rows = session.scalars(
                    sa.select(VoiceRecord).order_by(VoiceRecord.created_at, VoiceRecord.id)
                )
                return [VoiceInfo.of(row) for row in rows]

        return await self._in(VOICES_DB_POOL, query)

    async def get(self, voice_id: str) -> VoiceInfo:
        return VoiceInfo.of(await self._in(VOICES_DB_POOL, self._record, voice_id))

    def _record(self, voice_id: str) -> VoiceRecord:
        record = None
        if _ID.match(voice_id):
            with self._sessions() as session:
                record = session.get(VoiceRecord, voice_id)
        if record is None:
            raise VoiceNotFoundError(f"no voice with id {voice_id!r}")
        return record

    async def audio_path(self, voice_id: str) -> Path:
        """The stored 16-bit WAV of a voice."""
        record = await self._in(VOICES_DB_POOL, self._record, voice_id)
        path = self._file(record)
        if not path.is_file():
            log.error("recording of voice %s is missing: %s", voice_id, path)
            raise VoiceNotFoundError(f"the recording of voice {voice_id!r} is missing on the server")
        return path

    def _file(self, record: VoiceRecord) -> Path:
        return self.voices_dir / Path(record.audio_path).name

    # -- changes ----------------------------------------------------------------------------------

    async def add(
        self, name: str | None, filename: str | None, content_type: str | None, data: bytes
    ) -> VoiceInfo:
        """Validate and store an uploaded reference. Raises InvalidVoiceNameError, EmptyUploadError,
        UploadTooLargeError, UnsupportedAudioError (not audio) or InvalidAudioError (audio that
        cannot serve as a voice: silent, too short, NaN...). The returned ``notices`` say what was
        changed (trimmed to 30 s)."""
        clean_name = validate_name(name)
        shown_name = _client_filename(filename)
        if not data:
            raise EmptyUploadError(f"{_described(shown_name)} is empty")
        if len(data) > self.max_upload_bytes:
            raise UploadTooLargeError(
                f"{_described(shown_name)} has {len(data)} bytes; the limit is {self.max_upload_bytes}"
            )
        content = (content_type or "")[:255] or None
        info, profile = await self._in(
            VOICES_WORK_POOL, self._add_blocking, clean_name, shown_name, content, data
        )
        self._profiles[(info.id, self.engine.name)] = profile
        log.info("voice %s %r added: %.1f s from %s", info.id, info.name, info.duration_s, shown_name)
        return info

    def _add_blocking(
        self, name: str, filename: str | None, content_type: str | None, data: bytes
    ) -> tuple[VoiceInfo, VoiceProfile]:
        reference = self._decode_upload(filename, data)
        # the engine's verdict too (e.g. no voiced speech) before anything is stored
        profile = self.engine.prepare_voice(reference.samples, reference.sample_rate)
        voice_id = uuid.uuid4().hex
        target = self.voices_dir / f"{voice_id}.wav"
        encode_file(target, reference.samples, reference.sample_rate, "wav")  # atomic: complete or absent
        record = VoiceRecord(
            id=voice_id,
            name=name,
            filename=filename,
            content_type=content_type,
            duration_s=reference.duration_s,
            sample_rate=reference.sample_rate,
            created_at=datetime.now(UTC),
            notices=list(reference.notices),
            audio_path=target.name,
        )
        try:
            with self._sessions.begin() as session:
                session.add(record)
        except BaseException:
            target.unlink(missing_ok=True)  # no file without its row
            raise
        return VoiceInfo.of(record), profile

    def _decode_upload(self, filename: str | None, data: bytes) -> Reference:
        described = _described(filename)
        # decode_file reads files; the temporary one lives outside the voices folder
        handle, temp_name = tempfile.mkstemp(prefix="vcstream-upload-")
        temp = Path(temp_name)
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            samples = decode_file(temp, STORE_RATE)
        except InvalidAudioError as exc:
            raise self._client_error(exc, temp, described) from exc
        except MediaError as exc:
            log.warning("decoding an upload failed: %s", exc)
            raise InvalidAudioError(f"{described} could not be decoded: {exc}") from exc
        finally:
            temp.unlink(missing_ok=True)
        return prepare_reference(samples, STORE_RATE, MIN_SPEECH_S, MAX_SPEECH_S)

    @staticmethod
    def _client_error(exc: InvalidAudioError, temp: Path, described: str) -> InvalidAudioError:
        """decode_file's message, about the client's file rather than the server's temporary one."""
        message = str(exc)
        if "could not be decoded as audio" in message:
            log.info("upload is not audio: %s", message)
            return UnsupportedAudioError(
                f"{described} is not audio in a format the server can decode "
                "(wav, flac, mp3, ogg/vorbis, ogg/opus, webm/opus and others)"
            )
        return InvalidAudioError(message.replace(f"audio file {str(temp)!r}", described))

    async def delete(self, voice_id: str) -> None:
        """Remove a voice: its row, then its recording and cached features."""

        def remove() -> Path:
            with self._sessions.begin() as session:
                record = session.get(VoiceRecord, voice_id) if _ID.match(voice_id) else None
                if record is None:
                    raise VoiceNotFoundError(f"no voice with id {voice_id!r}")
                path = self._file(record)
                session.delete(record)
            # the row is gone first: nobody is handed a voice whose file is being removed
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.error("voice %s deleted but its recording %s remains: %s", voice_id, path, exc)
            return path

        await self._in(VOICES_DB_POOL, remove)
        for key in [k for k in (*self._profiles, *self._computing) if k[0] == voice_id]:
            self._profiles.pop(key, None)
            self._computing.pop(key, None)
        log.info("voice %s deleted", voice_id)

    # -- engine features --------------------------------------------------------------------------

    async def profile(self, voice_id: str, engine: Engine | None = None) -> VoiceProfile:
        """An engine's features for a voice (default: the library's engine; another one is the
        overflow engine of a full server), computed once (in a worker thread) and cached per (voice,
        engine); concurrent calls for one voice share one computation. Raises VoiceNotFoundError if
        the voice is not (or no longer) in the library."""
        # the row is checked on every call: another instance sharing the database may have deleted it
        record = await self._in(VOICES_DB_POOL, self._record, voice_id)
        engine = engine or self.engine
        key = (voice_id, engine.name)
        cached = self._profiles.get(key)
        if cached is not None:
            return cached
        pending = self._computing.get(key)
        if pending is None:
            pending = self._in(VOICES_WORK_POOL, self._compute_profile, record, engine)
            self._computing[key] = pending
            pending.add_done_callback(partial(self._profile_done, key))
        # shielded: one caller giving up must not cancel the computation the others wait for
        return await asyncio.shield(pending)

    def _compute_profile(self, record: VoiceRecord, engine: Engine) -> VoiceProfile:
        path = self._file(record)
        if not path.is_file():
            log.error("recording of voice %s is missing: %s", record.id, path)
            raise VoiceNotFoundError(f"the recording of voice {record.id!r} is missing on the server")
        samples = decode_file(path, record.sample_rate)
        return engine.prepare_voice(samples, record.sample_rate)

    def _profile_done(self, key: tuple[str, str], future: asyncio.Future[VoiceProfile]) -> None:
        if self._computing.get(key) is not future:
            return  # deleted meanwhile: do not cache
        del self._computing[key]
        if not future.cancelled() and future.exception() is None:
            self._profiles[key] = future.result()

    # -- plumbing ---------------------------------------------------------------------------------

    def _in(self, pool: str, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        return self.runtime.run_blocking(pool, fn, *args)
