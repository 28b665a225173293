"""The tables, as SQLAlchemy declarative models. Every change here needs a migration in
``migrations/versions`` (tests/test_db_migrations.py fails while the two differ)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

MAX_NAME_CHARS = 100
#: a name's comparison key (NFC, case folded): folding may turn one character into three ("ΐ")
MAX_NAME_KEY_CHARS = 3 * MAX_NAME_CHARS
#: the owner key of the open library (a server with --auth open), whose voices have no tenant
OPEN_LIBRARY_OWNER = ""


class Base(DeclarativeBase):
    pass


class VoiceRecord(Base):
    """A voice's metadata. Its name is unique per owner after NFC and case folding, in the database
    (the unique index over ``owner_key`` and ``name_key``), so replicas storing one name at the same
    instant cannot both succeed."""

    __tablename__ = "voices"
    __table_args__ = (sa.Index("uq_voices_owner_name_key", "owner_key", "name_key", unique=True),)

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(MAX_NAME_CHARS))
    filename: Mapped[str | None] = mapped_column(sa.String(255))
    content_type: Mapped[str | None] = mapped_column(sa.String(255))
    duration_s: Mapped[float] = mapped_column(sa.Float)
    sample_rate: Mapped[int] = mapped_column(sa.Integer)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), index=True)
    notices: Mapped[list[str]] = mapped_column(sa.JSON)
    #: the tenant that owns it; None on a server with --auth open (one local library)
    tenant_id: Mapped[str | None] = mapped_column(
        sa.String(32), sa.ForeignKey("tenants.id", name="fk_voices_tenant_id", ondelete="CASCADE"), index=True
    )
    #: the name as names are compared (``voice_names.name_key``)
    name_key: Mapped[str] = mapped_column(sa.String(MAX_NAME_KEY_CHARS))
    #: ``tenant_id``, or OPEN_LIBRARY_OWNER: never NULL, because a unique index treats NULLs as all
    #: different (PostgreSQL and SQLite alike), which would leave the open library's names unchecked
    owner_key: Mapped[str] = mapped_column(sa.String(32))


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


class TenantRecord(Base):
    """A customer: its calls, voices and usage are its own. The plan is a name from the configured plans
    (vcstream.service.tenancy.plans), so limits change with the configuration, not with a migration."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(MAX_NAME_CHARS), unique=True)
    plan: Mapped[str] = mapped_column(sa.String(40))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


class ApiKeyRecord(Base):
    """An API key: its public id and the SHA-256 of its secret (the secret is shown once, never stored)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(sa.String(24), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        sa.String(32),
        sa.ForeignKey("tenants.id", name="fk_api_keys_tenant_id", ondelete="CASCADE"),
        index=True,
    )
    secret_sha256: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))


class CallUsageRecord(Base):
    """One call's metered time: written every few seconds while it runs (a crashed replica loses at most
    that much) and at its end. A running call's ``updated_at`` is also its heartbeat: the concurrent-call
    limit counts only calls written to recently, so the calls of a replica that died stop counting."""

    __tablename__ = "call_usage"
    __table_args__ = (sa.Index("ix_call_usage_tenant_started", "tenant_id", "started_at"),)

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    #: None for the calls of a server with --auth open
    tenant_id: Mapped[str | None] = mapped_column(
        sa.String(32), sa.ForeignKey("tenants.id", name="fk_call_usage_tenant_id", ondelete="CASCADE")
    )
    plan: Mapped[str | None] = mapped_column(sa.String(40))
    engine: Mapped[str] = mapped_column(sa.String(40))
    replica: Mapped[str] = mapped_column(sa.String(255))
    started_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    converted_s: Mapped[float] = mapped_column(sa.Float)
    end_reason: Mapped[str | None] = mapped_column(sa.String(64))
