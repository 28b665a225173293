"""A plan's voice limit holds across replicas: two libraries (as two replicas) on one database,
PostgreSQL and SQLite, upload a voice each for a tenant with one place left in its plan, and each
counts the tenant's voices before either stores one. Holding the tenant's row from the count to the
commit (as call admission does) makes the second wait for the first and count its voice: exactly one
upload is stored and the other is refused with VoiceLimitError (the API's 403 ``voice_limit``)."""

from __future__ import annotations

import asyncio
import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from conftest import Speech, write_wav
from tenants_harness import only_tenant
from vcstream.engines.passthrough import PassthroughEngine
from vcstream.media.mainloop import Runtime
from vcstream.service.app import POOLS
from vcstream.service.db.models import VoiceRecord
from vcstream.service.voices import VoiceInfo, VoiceLibrary, VoiceLimitError
from waiting import wait_until

#: the plan's voices: one is stored before the race, so the race is for the last place
MAX_VOICES = 2
#: how long a library waits for the other to catch up (a failure, not a hang, if it never does)
MEET_WITHIN_S = 30.0


@dataclass
class Progress:
    """Where one library's upload has got to."""

    #: it asked for its turn at the tenant's row (it waits there while the other holds it)
    queued: threading.Event = field(default_factory=threading.Event)
    #: it counted the tenant's voices
    counted: threading.Event = field(default_factory=threading.Event)


class CountedTogether(VoiceLibrary):
    """A library whose upload, once it has counted the tenant's voices, waits until the other
    library's has counted them too, or has come to wait for its turn at the tenant's row: without
    that turn both count the last place free before either stores a voice, the interleaving of two
    replicas at the same instant."""

    def __init__(self, *args: object, mine: Progress, other: Progress, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._mine, self._other = mine, other

    def _limited_transaction(self, owner: str | None) -> AbstractContextManager[Session]:
        self._mine.queued.set()
        return super()._limited_transaction(owner)

    def _refuse_over_limit(self, session: Session, owner: str | None, max_voices: int) -> None:  # type: ignore[override]
        super()._refuse_over_limit(session, owner, max_voices)
        self._mine.counted.set()
        wait_until(
            lambda: self._other.counted.is_set() or self._other.queued.is_set(),
            MEET_WITHIN_S,
            "the other library counted the voices or waited for its turn",
        )


def voices_of(url: str, tenant: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return sorted(
                connection.scalars(sa.select(VoiceRecord.name).where(VoiceRecord.tenant_id == tenant))
            )
    finally:
        engine.dispose()


def test_two_libraries_racing_for_the_last_voice_place_store_one_voice(
    database_url: str, tmp_path: Path, flite_speech: Speech
) -> None:
    tenant = only_tenant(database_url, tmp_path / "operator")
    recording = write_wav(tmp_path / "slt.wav", *flite_speech("slt", None, 16000)).read_bytes()

    async def race() -> list[BaseException | VoiceInfo]:
        runtime = Runtime.start(POOLS)
        first = VoiceLibrary(database_url, tmp_path / "voices-0", PassthroughEngine(), runtime)
        progress = (Progress(), Progress())
        libraries = [
            CountedTogether(
                database_url, tmp_path / f"voices-{n}", PassthroughEngine(), runtime, mine=mine, other=other
            )
            for n, (mine, other) in enumerate((progress, progress[::-1]))
        ]
        try:
            for library in (first, *libraries):
                await library.open()
            await first.add("earlier", "slt.wav", "audio/wav", recording, owner=tenant, max_voices=MAX_VOICES)
            return await asyncio.gather(
                *(
                    library.add(name, "slt.wav", "audio/wav", recording, owner=tenant, max_voices=MAX_VOICES)
                    for library, name in zip(libraries, ("left", "right"), strict=True)
                ),
                return_exceptions=True,
            )
        finally:
            for library in (first, *libraries):
                await library.close()
            await runtime.close()

    outcomes = asyncio.run(race())
    print(f"\noutcomes: {[type(o).__name__ for o in outcomes]}")
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(refused) == 1 and isinstance(refused[0], VoiceLimitError), outcomes
    assert f"the plan allows {MAX_VOICES} voice(s)" in str(refused[0])
    (stored,) = [o for o in outcomes if isinstance(o, VoiceInfo)]
    assert voices_of(database_url, tenant) == sorted(["earlier", stored.name])
