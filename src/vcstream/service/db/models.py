"""The tables, as SQLAlchemy declarative models. Every change here needs a migration in
``migrations/versions`` (tests/test_db_migrations.py fails while the two differ)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

MAX_NAME_CHARS = 100


class Base(DeclarativeBase):
    pass


class VoiceRecord(Base):
    __tablename__ = "voices"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(MAX_NAME_CHARS))
    filename: Mapped[str | None] = mapped_column(sa.String(255))
    content_type: Mapped[str | None] = mapped_column(sa.String(255))
    duration_s: Mapped[float] = mapped_column(sa.Float)
    sample_rate: Mapped[int] = mapped_column(sa.Integer)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), index=True)
    notices: Mapped[list[str]] = mapped_column(sa.JSON)


class VoiceAudio(Base):
    """A voice's stored reference (16-bit 48 kHz mono WAV), in the database so that every replica
    sharing it can use the voice; a table of its own so that listing voices never loads audio."""

    __tablename__ = "voice_audio"

    voice_id: Mapped[str] = mapped_column(
        sa.String(32),
        sa.ForeignKey("voices.id", name="fk_voice_audio_voice_id", ondelete="CASCADE"),
        primary_key=True,
    )
    wav: Mapped[bytes] = mapped_column(sa.LargeBinary)
