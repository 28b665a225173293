"""Tenants and API keys in the service database: blocking calls (the CLI runs them directly, the
server in its database pool)."""

from __future__ import annotations

import secrets
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from vcstream.errors import VcstreamError
from vcstream.service.db.models import MAX_NAME_CHARS, ApiKeyRecord, TenantRecord
from vcstream.service.tenancy.api_keys import NewKey, new_key, parse_key, secret_matches
from vcstream.service.tenancy.plans import Plans


class TenantError(VcstreamError, ValueError):
    """A tenant or key that cannot be made or found (the message is for the operator)."""


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    plan: str
    created_at: datetime

    @classmethod
    def of(cls, record: TenantRecord) -> Tenant:
        created = record.created_at if record.created_at.tzinfo else record.created_at.replace(tzinfo=UTC)
        return cls(record.id, record.name, record.plan, created)


@dataclass(frozen=True)
class KeyInfo:
    id: str
    tenant_id: str
    created_at: datetime
    revoked: bool


class TenantStore:
    def __init__(self, database: sa.Engine, plans: Plans) -> None:
        self.plans = plans
        self._sessions = sessionmaker(database, expire_on_commit=False)

    # -- tenants ----------------------------------------------------------------------------------

    def create_tenant(self, name: str, plan: str | None = None) -> Tenant:
        clean = unicodedata.normalize("NFC", name.strip())
        if not clean or len(clean) > MAX_NAME_CHARS or not clean.isprintable():
            raise TenantError(f"a tenant name is 1-{MAX_NAME_CHARS} printable characters")
        chosen = self.plans.get(plan or self.plans.default).name
        record = TenantRecord(id=secrets.token_hex(16), name=clean, plan=chosen, created_at=datetime.now(UTC))
        with self._sessions() as session:
            if session.scalar(sa.select(TenantRecord.id).where(TenantRecord.name == clean)):
                raise TenantError(f"a tenant named {clean!r} exists")
            session.add(record)
            try:
                session.commit()
            except sa.exc.IntegrityError:  # created elsewhere since the check
                raise TenantError(f"a tenant named {clean!r} exists") from None
        return Tenant.of(record)

    def tenants(self) -> list[Tenant]:
        with self._sessions() as session:
            rows = session.scalars(sa.select(TenantRecord).order_by(TenantRecord.created_at, TenantRecord.id))
            return [Tenant.of(row) for row in rows]

    def tenant(self, name_or_id: str) -> Tenant:
        with self._sessions() as session:
            record = self._find(session, name_or_id)
            return Tenant.of(record)

    def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        with self._sessions() as session:
            record = session.get(TenantRecord, tenant_id)
            return None if record is None else Tenant.of(record)

    @staticmethod
    def _find(session: Session, name_or_id: str) -> TenantRecord:
        record = session.scalar(
            sa.select(TenantRecord).where(
                sa.or_(TenantRecord.name == name_or_id, TenantRecord.id == name_or_id)
            )
        )
        if record is None:
            raise TenantError(f"no tenant named {name_or_id!r}")
        return record

    # -- keys -------------------------------------------------------------------------------------

    def create_key(self, tenant: str) -> NewKey:
        """A new key for the tenant (by name or id); its ``key`` is shown once and never stored."""
        made = new_key()
        with self._sessions() as session:
            record = self._find(session, tenant)
            session.add(
                ApiKeyRecord(
                    id=made.id,
                    tenant_id=record.id,
                    secret_sha256=made.secret_sha256,
                    created_at=datetime.now(UTC),
                )
            )
            session.commit()
        return made

    def keys(self, tenant: str) -> list[KeyInfo]:
        with self._sessions() as session:
            record = self._find(session, tenant)
            rows = session.scalars(
                sa.select(ApiKeyRecord)
                .where(ApiKeyRecord.tenant_id == record.id)
                .order_by(ApiKeyRecord.created_at)
            )
            return [KeyInfo(r.id, r.tenant_id, r.created_at, r.revoked_at is not None) for r in rows]

    def revoke_key(self, key_id: str) -> None:
        with self._sessions() as session:
            record = session.get(ApiKeyRecord, key_id)
            if record is None:
                raise TenantError(f"no API key with id {key_id!r}")
            if record.revoked_at is None:
                record.revoked_at = datetime.now(UTC)
                session.commit()

    def authenticate(self, key: str) -> Tenant | None:
        """The tenant of a valid, unrevoked key; None for anything else (the caller says why not, in
        general terms: which part was wrong is not told)."""
        parsed = parse_key(key)
        if parsed is None:
            return None
        key_id, secret = parsed
        with self._sessions() as session:
            record = session.get(ApiKeyRecord, key_id)
            stored = None if record is None or record.revoked_at is not None else record.secret_sha256
            if not secret_matches(secret, stored):
                return None
            assert record is not None
            tenant = session.get(TenantRecord, record.tenant_id)
            return None if tenant is None else Tenant.of(tenant)
