"""The reference recordings move from the voices folder into the database (``voice_audio``), so that
replicas sharing the database share the voices; ``voices.audio_path`` goes.

Each voice's file is read from the folder ``vcstream db upgrade`` names (``--voices-dir``, default
``<data dir>/voices``). Every file is checked before anything changes: if one is missing the upgrade
stops and names them all (a wrong or unmounted folder must not cost the voices), unless the operator
chose to forget those voices (``--forget-missing-recordings``). The files are left in place; nothing
reads them afterwards.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import context, op

from vcstream.service.db.migrate import MissingRecordingsError

revision = "0002"
down_revision: str | None = "0001"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None

_voices = sa.table("voices", sa.column("id", sa.String), sa.column("audio_path", sa.String))


def upgrade() -> None:
    bind = op.get_bind()
    attributes = context.config.attributes
    folder: Path | None = attributes.get("voices_dir")
    forget_missing: bool = attributes.get("forget_missing_recordings", False)

    files: dict[str, Path] = {}
    missing: list[str] = []
    for voice_id, audio_path in bind.execute(sa.select(_voices.c.id, _voices.c.audio_path).order_by("id")):
        # the stored name is relative to the folder; only its last part is trusted, as the server did
        file = folder / Path(audio_path).name if folder is not None else None
        if file is not None and file.is_file():
            files[voice_id] = file
        else:
            missing.append(voice_id)
    if missing and not forget_missing:  # checked before any change: SQLite commits DDL as it goes
        raise MissingRecordingsError(folder, missing)

    voice_audio = op.create_table(
        "voice_audio",
        sa.Column(
            "voice_id",
            sa.String(32),
            sa.ForeignKey("voices.id", name="fk_voice_audio_voice_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("wav", sa.LargeBinary(), nullable=False),
    )
    for voice_id, file in files.items():  # one file in memory at a time (at most ~3 MB each)
        bind.execute(sa.insert(voice_audio).values(voice_id=voice_id, wav=file.read_bytes()))
    if missing:
        bind.execute(sa.delete(_voices).where(_voices.c.id.in_(missing)))
    with op.batch_alter_table("voices") as batch:
        batch.drop_column("audio_path")


def downgrade() -> None:
    raise NotImplementedError(
        "revision 0002 moved the recordings into the database; going back would need them written out "
        "as files again, which vcstream does not do: restore a backup taken before the upgrade instead"
    )
