"""The schema as ``create_all`` made it before the service had migrations: what the first revision
creates, and what a database without an ``alembic_version`` table must match to be adopted at that
revision. Frozen: never edit it (change the models and add a revision instead)."""

from __future__ import annotations

import sqlalchemy as sa

BASELINE_REVISION = "0001"

BASELINE_METADATA = sa.MetaData()

sa.Table(
    "voices",
    BASELINE_METADATA,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("filename", sa.String(255), nullable=True),
    sa.Column("content_type", sa.String(255), nullable=True),
    sa.Column("duration_s", sa.Float, nullable=False),
    sa.Column("sample_rate", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("notices", sa.JSON, nullable=False),
    sa.Column("audio_path", sa.String(255), nullable=False),
)
