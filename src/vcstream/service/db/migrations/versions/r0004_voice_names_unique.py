"""Voice names become unique per owner in the database, not only in the service's own check: two
replicas storing one name in the same instant both passed that check. ``voices.name_key`` holds the
name as names are compared (NFC, case folded: ``voice_names.name_key``) and ``voices.owner_key`` the
owner (the tenant's id, or "" for the open library: a unique index treats NULLs as all different);
a unique index covers the two.

Names stored before may already collide (two replicas, or names stored before they were NFC): the
earliest voice of each name keeps it (by ``created_at``, then id) and each later one is renamed
"Name (2)", "Name (3)"... with a suffix no voice of that owner uses; every rename is logged. The
downgrade drops the columns and the index and keeps the new names.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import logging
import unicodedata
from collections import defaultdict

import sqlalchemy as sa
from alembic import op

from vcstream.service.db.models import MAX_NAME_CHARS, MAX_NAME_KEY_CHARS, OPEN_LIBRARY_OWNER
from vcstream.service.voice_names import name_key

revision = "0004"
down_revision: str | None = "0003"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None

log = logging.getLogger("vcstream.service.db.migrations.r0004")

_voices = sa.table(
    "voices",
    sa.column("id", sa.String),
    sa.column("name", sa.String),
    sa.column("tenant_id", sa.String),
    sa.column("created_at", sa.DateTime),
    sa.column("name_key", sa.String),
    sa.column("owner_key", sa.String),
)


def upgrade() -> None:
    with op.batch_alter_table("voices") as batch:
        batch.add_column(sa.Column("name_key", sa.String(length=MAX_NAME_KEY_CHARS), nullable=True))
        batch.add_column(sa.Column("owner_key", sa.String(length=32), nullable=True))

    bind = op.get_bind()
    rows = bind.execute(
        sa.select(_voices.c.id, _voices.c.name, _voices.c.tenant_id).order_by(
            _voices.c.created_at, _voices.c.id
        )
    ).all()
    # every stored name's key, so that a rename never takes a name some voice already has
    used: dict[str, set[str]] = defaultdict(set)
    for _, name, tenant_id in rows:
        used[tenant_id or OPEN_LIBRARY_OWNER].add(name_key(name))
    kept: dict[str, set[str]] = defaultdict(set)
    for voice_id, name, tenant_id in rows:
        owner = tenant_id or OPEN_LIBRARY_OWNER
        new_name, key = name, name_key(name)
        if key in kept[owner]:  # an earlier voice of this owner has the name
            new_name = _free_name(name, used[owner])
            key = name_key(new_name)
            used[owner].add(key)
            log.warning(
                "voice %s of %s: renamed %r to %r (an earlier voice has that name)",
                voice_id,
                f"tenant {tenant_id}" if tenant_id else "the open library",
                name,
                new_name,
            )
        kept[owner].add(key)
        bind.execute(
            sa.update(_voices)
            .where(_voices.c.id == voice_id)
            .values(name=new_name, name_key=key, owner_key=owner)
        )

    with op.batch_alter_table("voices") as batch:
        batch.alter_column("name_key", existing_type=sa.String(length=MAX_NAME_KEY_CHARS), nullable=False)
        batch.alter_column("owner_key", existing_type=sa.String(length=32), nullable=False)
        batch.create_index("uq_voices_owner_name_key", ["owner_key", "name_key"], unique=True)


def _free_name(name: str, used: set[str]) -> str:
    """``name`` (in NFC, as names are stored now) with the first suffix " (2)", " (3)"... whose key
    no voice uses, the name cut so the whole fits the column."""
    name = unicodedata.normalize("NFC", name)
    number = 2
    while True:
        suffix = f" ({number})"
        candidate = name[: MAX_NAME_CHARS - len(suffix)].rstrip() + suffix
        if name_key(candidate) not in used:
            return candidate
        number += 1


def downgrade() -> None:
    with op.batch_alter_table("voices") as batch:
        batch.drop_index("uq_voices_owner_name_key")
        batch.drop_column("owner_key")
        batch.drop_column("name_key")
