"""Voice names are unique per owner in the database (revision 0004's unique index), not only by the
library's own check: two libraries (two app instances, as two replicas) on one database, SQLite and
PostgreSQL, each pass the check for the same name (NFC and case folded) before either inserts; the
index lets one insert through and the other upload gets the same VoiceNameTakenError (409) as the
check gives. The open library (no tenant) and a tenant's library are each held, and do not collide."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from conftest import Speech, write_wav
from tenants_harness import only_tenant
from vcstream.engines.passthrough import PassthroughEngine
from vcstream.media.mainloop import Runtime
from vcstream.service.app import POOLS
from vcstream.service.db.models import VoiceRecord
from vcstream.service.voices import VoiceLibrary, VoiceNameTakenError

#: one name spelled two ways: NFC lower case, and upper case with a combining diaeresis
SPELLINGS = ("Zoë", "ZOE\u0308")
#: how long a library waits at the barrier for the other (a failure, not a hang, if it never comes)
MEET_WITHIN_S = 30.0


class CheckedTogether(VoiceLibrary):
    """A library whose first name check of an upload waits until the other library's has run too:
    both pass the check before either inserts, the interleaving of two replicas at the same instant."""

    def __init__(self, *args: object, barrier: threading.Barrier, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._barrier = barrier
        self._met = threading.Event()

    def _refuse_taken(self, session: Session, name: str, owner: str | None) -> None:  # type: ignore[override]
        super()._refuse_taken(session, name, owner)
        if not self._met.is_set():
            self._met.set()
            self._barrier.wait(MEET_WITHIN_S)


def stored_names(url: str) -> list[tuple[str | None, str]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.select(VoiceRecord.tenant_id, VoiceRecord.name))
            return sorted(((tenant, name) for tenant, name in rows), key=lambda r: (r[0] or "", r[1]))
    finally:
        engine.dispose()


def test_two_libraries_storing_one_name_at_once_store_it_once(
    database_url: str, tmp_path: Path, flite_speech: Speech
) -> None:
    # the schema as the migrations make it, and a tenant
    tenant = only_tenant(database_url, tmp_path / "operator")
    recording = write_wav(tmp_path / "slt.wav", *flite_speech("slt", None, 16000)).read_bytes()

    async def race(owner: str | None) -> list[BaseException | object]:
        runtime = Runtime.start(POOLS)
        barrier = threading.Barrier(2)
        libraries = [
            CheckedTogether(
                database_url, tmp_path / f"voices-{n}", PassthroughEngine(), runtime, barrier=barrier
            )
            for n in range(2)
        ]
        try:
            for library in libraries:
                await library.open()
            return await asyncio.gather(
                *(
                    library.add(name, "slt.wav", "audio/wav", recording, owner=owner)
                    for library, name in zip(libraries, SPELLINGS, strict=True)
                ),
                return_exceptions=True,
            )
        finally:
            for library in libraries:
                await library.close()
            await runtime.close()

    for owner in (None, tenant):
        outcomes = asyncio.run(race(owner))
        refused = [o for o in outcomes if isinstance(o, BaseException)]
        print(f"\nowner {owner or 'open library'}: {[type(o).__name__ for o in outcomes]}")
        assert len(refused) == 1 and isinstance(refused[0], VoiceNameTakenError), outcomes
        assert "exists already" in str(refused[0])
    names = stored_names(database_url)
    assert len(names) == 2 and {tenant_id for tenant_id, _ in names} == {None, tenant}, names
    assert {name for _, name in names} <= {"Zoë", "ZOË"}, names  # stored in NFC

    # without the library's check, the database alone refuses the name
    engine = sa.create_engine(database_url)
    try:
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
            (row,) = connection.execute(
                sa.select(VoiceRecord).where(VoiceRecord.tenant_id.is_(None))
            ).mappings()
            connection.execute(sa.insert(VoiceRecord), {**row, "id": "f" * 32, "name": "zoë"})
    finally:
        engine.dispose()
