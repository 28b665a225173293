"""The voice library: reference recordings users upload, kept with their metadata in a database
(SQLAlchemy; SQLite by default, PostgreSQL for several replicas, which then share every voice), and
each voice's engine features computed on first use and kept per replica in a bounded LRU cache.

An upload is validated completely before anything is stored: its name must be one people can read
(``voice_names``: NFC, visible, no controls or bidi overrides) and unlike the owner's other voices'
after NFC and case folding (a unique index holds that across replicas), and it must decode
(GStreamer: wav, flac, mp3, ogg, webm/opus as browsers record...), pass ``prepare_reference``
(finite, not silent, 1 s of sound after trimming silence; beyond 30 s it is cut, with a notice) and
give the engine a voice. The trimmed reference is stored as a 16-bit 48 kHz WAV (engine-independent,
so a library recorded under the CPU engine serves Seed-VC unchanged later) in ``voice_audio``,
inserted with the voice's row in one transaction: both or neither. Listing reads only ``voices``.
Under a plan's voice limit that transaction holds the tenant's row from the count to the commit
(``TenantTurns``, as call admission does): replicas racing for the last place take turns.

A voice may be deleted through any replica, so every use checks its row first: a voice gone from the
database is refused (VoiceNotFoundError) and dropped from this replica's cache.

All blocking work runs on the runtime's pools, never on the event loop: database calls on
``VOICES_DB_POOL``, decoding and feature extraction on ``VOICES_WORK_POOL`` (a query must not wait
behind a 30 s decode); the profile cache is touched on the event loop thread only.
"""

from __future__ import annotations

import asyncio
import builtins
import io
import logging
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import IO, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from vcstream.audio.reference import MAX_SPEECH_S, MIN_SPEECH_S, Reference, prepare_reference
from vcstream.audio.wav import pcm16_wav, read_pcm16_wav
from vcstream.engines.base import Engine, VoiceProfile
from vcstream.errors import ConfigurationError, InvalidAudioError, MediaError, VcstreamError
from vcstream.media.files import decode_file
from vcstream.media.mainloop import Runtime
from vcstream.service.db.connect import create_database_engine, ensure_sqlite_folder, shown_url
from vcstream.service.db.migrate import prepare_for_serving
from vcstream.service.db.models import OPEN_LIBRARY_OWNER, VoiceAudio, VoiceRecord
from vcstream.service.keys import VOICES_DB_POOL, VOICES_WORK_POOL
from vcstream.service.profile_cache import ProfileCache, ProfileKey
from vcstream.service.tenancy.tenant_turns import TenantTurns
from vcstream.service.voice_names import InvalidVoiceNameError, name_key, normalise_name, shown_filename

log = logging.getLogger(__name__)

T = TypeVar("T")

#: rate of the stored recordings: WebRTC's and Opus's rate, above every engine's own
STORE_RATE = 48000
_ID = re.compile(r"^[0-9a-f]{32}$")


class _AnyOwner:
    """Internal reads after the owner was checked (a profile computed for a call)."""


_ANY_OWNER = _AnyOwner()
#: a tenant's id, None (the open server's library) or, internally, any owner
Owner = str | None | _AnyOwner


def _owned_by(owner: Owner) -> sa.ColumnElement[bool]:
    if isinstance(owner, _AnyOwner):
        return sa.true()
    column = VoiceRecord.tenant_id
    return column.is_(None) if owner is None else column == owner


def _owner_key(owner: str | None) -> str:
    """The owner as the names' unique index holds it (never NULL: see VoiceRecord.owner_key)."""
    return OPEN_LIBRARY_OWNER if owner is None else owner


#: bytes copied at a time from an upload's spool to the file the decoder reads
_COPY_CHUNK = 1 << 20


class VoiceNotFoundError(VcstreamError, LookupError):
    """No voice with that id (never existed, or deleted through any replica)."""


__all__ = [
    "EmptyUploadError",
    "InvalidVoiceNameError",
    "UnsupportedAudioError",
    "UploadTooLargeError",
    "VoiceInfo",
    "VoiceLibrary",
    "VoiceNameTakenError",
    "VoiceNotFoundError",
]


class VoiceLimitError(VcstreamError):
    """The owner's plan allows no more voices."""


class VoiceNameTakenError(VcstreamError):
    """Another voice has this name (compared after NFC and case folding)."""


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


def _described(filename: str | None) -> str:
    return f"file {filename!r}" if filename else "the uploaded file"


class VoiceLibrary:
    """Voices by id: ``add`` (validate, store), ``list``, ``get``, ``delete``, ``audio`` (the stored
    WAV), and ``profile`` (the engine's features for a voice, computed on first use and kept in this
    replica's LRU cache of ``profile_cache_size`` entries, one per voice and engine).

    Call ``open`` before use (brings an SQLite database's schema up to date, moving the recordings of
    older versions from ``voices_dir`` into it; refuses any other database whose schema is behind) and
    ``close`` at the end, before ``runtime`` closes: its ``VOICES_DB_POOL`` and ``VOICES_WORK_POOL``
    run the blocking work. Nothing else reads ``voices_dir``.
    """

    def __init__(
        self,
        database_url: str,
        voices_dir: Path,
        engine: Engine,
        runtime: Runtime,
        *,
        max_upload_bytes: int = 10 << 20,
        profile_cache_size: int = 64,
    ) -> None:
        self.database_url = database_url
        self.voices_dir = Path(voices_dir)
        self.engine = engine
        self.runtime = runtime
        self.max_upload_bytes = max_upload_bytes
        self._db = create_database_engine(database_url)
        self._sessions = sessionmaker(self._db, expire_on_commit=False)
        self._turns = TenantTurns(self._db)
        self._profiles = ProfileCache(profile_cache_size)
        self._computing: dict[ProfileKey, asyncio.Future[VoiceProfile]] = {}
        #: the name check and the insert of one process's uploads in turn (replicas: see _insert)
        self._naming = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------------------

    async def open(self) -> None:
        await self._in(VOICES_DB_POOL, self._open_blocking)

    def _open_blocking(self) -> None:
        ensure_sqlite_folder(self._db)
        try:
            # upgrades SQLite; elsewhere, refuses if behind
            revision = prepare_for_serving(self._db, self.voices_dir)
        except sa.exc.OperationalError as exc:
            raise ConfigurationError(
                f"cannot open the database {shown_url(self.database_url)}: {exc}"
            ) from exc
        log.info(
            "voice library: %s at schema revision %s, features of up to %d voices cached",
            shown_url(self._db.url),
            revision,
            self._profiles.max_entries,
        )

    async def close(self) -> None:
        await self._in(VOICES_DB_POOL, self._db.dispose)  # closes the pooled connections
        self._profiles.clear()

    # -- queries ----------------------------------------------------------------------------------

    # Every voice belongs to an owner: a tenant's id, or None for the library of an --auth open
    # server. A voice of another owner does not exist for a caller (VoiceNotFoundError, a 404): ids
    # of other tenants' voices must not be confirmed by a different answer.

    async def list(self, owner: str | None = None) -> builtins.list[VoiceInfo]:
        def query() -> builtins.list[VoiceInfo]:
            with self._sessions() as session:
                rows = session.scalars(
                    sa.select(VoiceRecord)
                    .where(_owned_by(owner))
                    .order_by(VoiceRecord.created_at, VoiceRecord.id)
                )
                return [VoiceInfo.of(row) for row in rows]

        return await self._in(VOICES_DB_POOL, query)

    async def get(self, voice_id: str, owner: str | None = None) -> VoiceInfo:
        return VoiceInfo.of(await self._current_record(voice_id, owner))

    async def _current_record(self, voice_id: str, owner: str | None) -> VoiceRecord:
        """The voice's row; a voice gone from the database (deleted through any replica) is also
        dropped from this replica's cache."""
        try:
            return await self._in(VOICES_DB_POOL, self._record, voice_id, owner)
        except VoiceNotFoundError:
            self._forget(voice_id)  # harmless if it is only another owner's: refilled on its next use
            raise

    def _record(self, voice_id: str, owner: Owner) -> VoiceRecord:
        record = None
        if _ID.match(voice_id):
            with self._sessions() as session:
                record = session.scalar(
                    sa.select(VoiceRecord).where(VoiceRecord.id == voice_id, _owned_by(owner))
                )
        if record is None:
            raise VoiceNotFoundError(f"no voice with id {voice_id!r}")
        return record

    async def audio(self, voice_id: str, owner: str | None = None) -> bytes:
        """The stored 16-bit 48 kHz WAV of a voice."""
        return await self._in(VOICES_DB_POOL, self._wav, voice_id, owner)

    def _wav(self, voice_id: str, owner: Owner) -> bytes:
        wav = None
        if _ID.match(voice_id):
            with self._sessions() as session:
                wav = session.scalar(
                    sa.select(VoiceAudio.wav)
                    .join(VoiceRecord, VoiceRecord.id == VoiceAudio.voice_id)
                    .where(VoiceAudio.voice_id == voice_id, _owned_by(owner))
                )
        if wav is None:
            raise VoiceNotFoundError(f"no voice with id {voice_id!r}")
        return wav

    @property
    def profile_cache(self) -> ProfileCache:
        """This replica's cached features (read it on the event loop thread only)."""
        return self._profiles

    # -- changes ----------------------------------------------------------------------------------

    async def add(
        self,
        name: str | None,
        filename: str | None,
        content_type: str | None,
        recording: bytes | IO[bytes],
        owner: str | None = None,
        max_voices: int | None = None,
    ) -> VoiceInfo:
        """Validate and store an uploaded reference (``recording``: its bytes, or a readable,
        seekable file of them, read in chunks on a worker thread). Raises InvalidVoiceNameError,
        VoiceNameTakenError, EmptyUploadError, UploadTooLargeError, UnsupportedAudioError (not audio)
        or InvalidAudioError (audio that cannot serve as a voice: silent, too short, NaN...). The
        returned ``notices`` say what was changed (trimmed to 30 s). ``max_voices``: the owner's plan
        allows at most this many (VoiceLimitError beyond)."""
        clean_name = normalise_name(name)
        shown_name = shown_filename(filename)
        source = io.BytesIO(recording) if isinstance(recording, bytes) else recording
        size = source.seek(0, io.SEEK_END)
        source.seek(0)
        if not size:
            raise EmptyUploadError(f"{_described(shown_name)} is empty")
        if size > self.max_upload_bytes:
            raise UploadTooLargeError(
                f"{_described(shown_name)} has {size} bytes; the limit is {self.max_upload_bytes}"
            )
        content = (content_type or "")[:255] or None
        info, profile = await self._in(
            VOICES_WORK_POOL, self._add_blocking, clean_name, shown_name, content, source, owner, max_voices
        )
        self._profiles.put((info.id, self.engine.name), profile)
        log.info("voice %s %r added: %.1f s from %s", info.id, info.name, info.duration_s, shown_name)
        return info

    @staticmethod
    def _refuse_taken(session: Session, name: str, owner: str | None) -> None:
        # by the stored key: NFC and case folding are not portable SQL
        taken = session.scalar(
            sa.select(VoiceRecord.name).where(
                VoiceRecord.owner_key == _owner_key(owner), VoiceRecord.name_key == name_key(name)
            )
        )
        if taken is not None:
            raise VoiceNameTakenError(
                f"a voice named {taken!r} exists already (names are compared ignoring case and "
                "Unicode normalisation); choose another name or delete that voice"
            )

    def _add_blocking(
        self,
        name: str,
        filename: str | None,
        content_type: str | None,
        recording: IO[bytes],
        owner: str | None,
        max_voices: int | None,
    ) -> tuple[VoiceInfo, VoiceProfile]:
        reference = self._decode_upload(filename, recording)
        # the engine's verdict too (e.g. no voiced speech) before anything is stored
        profile = self.engine.prepare_voice(reference.samples, reference.sample_rate)
        voice_id = uuid.uuid4().hex
        wav = pcm16_wav(reference.samples, reference.sample_rate)
        record = VoiceRecord(
            id=voice_id,
            name=name,
            filename=filename,
            content_type=content_type,
            duration_s=reference.duration_s,
            sample_rate=reference.sample_rate,
            created_at=datetime.now(UTC),
            notices=list(reference.notices),
            tenant_id=owner,
            name_key=name_key(name),
            owner_key=_owner_key(owner),
        )
        self._insert(record, wav, max_voices)
        return VoiceInfo.of(record), profile

    def _insert(self, record: VoiceRecord, wav: bytes, max_voices: int | None) -> None:
        """The row and its audio in one transaction, or neither, if no voice has the name. Checked
        here, after the recording passed (what is wrong with the file is said first), under a lock
        that orders this process's uploads; another replica inserting the name in the same instant
        passes the check too, and the database's unique index refuses the later insert."""
        try:
            self._insert_checked(record, wav, max_voices)
        except sa.exc.IntegrityError:
            with self._sessions() as session:  # the same answer as the check's, if that was the cause
                try:
                    self._refuse_taken(session, record.name, record.tenant_id)
                except VoiceNameTakenError:
                    log.info("voice name %r: stored by another writer in the same instant", record.name)
                    raise
            raise

    def _insert_checked(self, record: VoiceRecord, wav: bytes, max_voices: int | None) -> None:
        transaction = self._unlimited_transaction if max_voices is None else self._limited_transaction
        with self._naming, transaction(record.tenant_id) as session:
            self._refuse_taken(session, record.name, record.tenant_id)
            if max_voices is not None:
                self._refuse_over_limit(session, record.tenant_id, max_voices)
            session.add(record)
            session.flush()  # the row first: the audio's foreign key names it
            session.add(VoiceAudio(voice_id=record.id, wav=wav))

    def _limited_transaction(self, owner: str | None) -> AbstractContextManager[Session]:
        """For an upload under a plan's limit: the owner's voices are counted and the new one stored
        while the tenant's row is held, so replicas adding voices for one tenant take turns and the
        second counts the first's voice (its count alone would let each store one past the limit)."""
        return self._turns.transaction(owner)

    def _unlimited_transaction(self, owner: str | None) -> AbstractContextManager[Session]:
        return self._sessions.begin()

    @staticmethod
    def _refuse_over_limit(session: Session, owner: str | None, max_voices: int) -> None:
        stored = session.scalar(sa.select(sa.func.count()).select_from(VoiceRecord).where(_owned_by(owner)))
        if (stored or 0) >= max_voices:
            raise VoiceLimitError(f"the plan allows {max_voices} voice(s); delete one to add another")

    def _decode_upload(self, filename: str | None, recording: IO[bytes]) -> Reference:
        described = _described(filename)
        # decode_file reads files by name: the upload is copied to one, a chunk at a time
        handle, temp_name = tempfile.mkstemp(prefix="vcstream-upload-")
        temp = Path(temp_name)
        try:
            with os.fdopen(handle, "wb") as out:
                recording.seek(0)
                shutil.copyfileobj(recording, out, _COPY_CHUNK)
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

    async def delete(self, voice_id: str, owner: str | None = None) -> None:
        """Remove a voice: its row and recording (one transaction), then this replica's cached
        features. Other replicas drop theirs when they next try to use it."""

        def remove() -> None:
            if not _ID.match(voice_id):
                raise VoiceNotFoundError(f"no voice with id {voice_id!r}")
            with self._sessions.begin() as session:
                # explicitly, not only by ON DELETE CASCADE: SQLite enforces foreign keys only on request
                session.execute(sa.delete(VoiceAudio).where(VoiceAudio.voice_id == voice_id))
                if (
                    session.scalar(
                        sa.select(VoiceRecord.id).where(VoiceRecord.id == voice_id, _owned_by(owner))
                    )
                    is None
                ):
                    raise VoiceNotFoundError(f"no voice with id {voice_id!r}")
                session.execute(sa.delete(VoiceAudio).where(VoiceAudio.voice_id == voice_id))
                removed = session.execute(sa.delete(VoiceRecord).where(VoiceRecord.id == voice_id))
                if removed.rowcount == 0:  # type: ignore[attr-defined]
                    raise VoiceNotFoundError(f"no voice with id {voice_id!r}")

        await self._in(VOICES_DB_POOL, remove)
        self._forget(voice_id)
        log.info("voice %s deleted", voice_id)

    def _forget(self, voice_id: str) -> None:
        """Drop the voice's cached and pending features (a computation still running is not cached)."""
        self._profiles.forget_voice(voice_id)
        for key in [k for k in self._computing if k[0] == voice_id]:
            del self._computing[key]

    # -- engine features --------------------------------------------------------------------------

    async def profile(
        self, voice_id: str, engine: Engine | None = None, owner: str | None = None
    ) -> VoiceProfile:
        """An engine's features for a voice (default: the library's engine; another one is the
        overflow engine of a full server), computed on first use (its recording read from the
        database, the work in a worker thread) and cached per (voice, engine); concurrent calls for
        one voice share one computation. Raises VoiceNotFoundError if the voice is not (or no longer)
        in the database, and then drops it from this replica's cache."""
        _, profile = await self.voice_for_call(voice_id, engine, owner)
        return profile

    async def voice_for_call(
        self, voice_id: str, engine: Engine | None = None, owner: str | None = None
    ) -> tuple[VoiceInfo, VoiceProfile]:
        """The voice's record and its engine features (see ``profile``), the row read once."""
        # the row is checked on every use: another replica sharing the database may have deleted it
        info = VoiceInfo.of(await self._current_record(voice_id, owner))
        return info, await self._features(voice_id, engine or self.engine)

    async def _features(self, voice_id: str, engine: Engine) -> VoiceProfile:
        key = (voice_id, engine.name)
        cached = self._profiles.get(key)
        if cached is not None:
            return cached
        pending = self._computing.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._compute_profile(voice_id, engine))
            self._computing[key] = pending
            pending.add_done_callback(partial(self._profile_done, key))
        # shielded: one caller giving up must not cancel the computation the others wait for
        return await asyncio.shield(pending)

    async def _compute_profile(self, voice_id: str, engine: Engine) -> VoiceProfile:
        wav = await self._in(VOICES_DB_POOL, self._wav, voice_id, _ANY_OWNER)  # checked by the caller
        return await self._in(VOICES_WORK_POOL, self._profile_of, wav, engine)

    @staticmethod
    def _profile_of(wav: bytes, engine: Engine) -> VoiceProfile:
        samples, rate = read_pcm16_wav(wav)
        return engine.prepare_voice(samples, rate)

    def _profile_done(self, key: ProfileKey, future: asyncio.Future[VoiceProfile]) -> None:
        failure = None if future.cancelled() else future.exception()  # retrieved: never "unhandled"
        if self._computing.get(key) is not future:
            return  # deleted meanwhile: do not cache
        del self._computing[key]
        if isinstance(failure, VoiceNotFoundError):  # deleted between the check and the read
            self._forget(key[0])
        elif failure is None and not future.cancelled():
            self._profiles.put(key, future.result())

    # -- plumbing ---------------------------------------------------------------------------------

    def _in(self, pool: str, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        return self.runtime.run_blocking(pool, fn, *args)
