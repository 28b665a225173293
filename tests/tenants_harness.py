"""Tenants and API keys made the way an operator makes them (``TenantStore``, what ``vcstream tenants
create`` and ``vcstream keys create`` run), in a data folder's SQLite database, before a server starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from vcstream.service.db.migrate import upgrade
from vcstream.service.db.models import TenantRecord
from vcstream.service.tenancy.plans import BUILT_IN, load_plans
from vcstream.service.tenancy.store import TenantStore

#: signs the access tokens of test servers (a test value, not a secret)
TOKEN_SECRET = "test-token-secret-" + "k" * 30


def tenant_keys(
    data_dir: Path,
    *names: str,
    plan: str | None = None,
    plans: dict[str, Any] | None = None,
    database_url: str | None = None,
) -> list[str]:
    """Tenants ``names`` on ``plan`` (default: the plans' default) and an API key of each, in
    ``data_dir``'s SQLite database or ``database_url``'s (made and brought to head if need be).
    ``plans``: written to ``data_dir/plans.json`` and used (give the server ``plans_file`` too); else
    the built-in plans."""
    data_dir.mkdir(parents=True, exist_ok=True)
    chosen = BUILT_IN
    if plans is not None:
        (data_dir / "plans.json").write_text(json.dumps(plans))
        chosen = load_plans(data_dir / "plans.json")
    database = sa.create_engine(database_url or f"sqlite:///{data_dir / 'vcstream.db'}")
    try:
        upgrade(database)
        store = TenantStore(database, chosen)
        keys = []
        for name in names:
            store.create_tenant(name, plan)
            keys.append(store.create_key(name).key)
        return keys
    finally:
        database.dispose()


def only_tenant(database_url: str, data_dir: Path, name: str = "Acme") -> str:
    """A database brought to head holding one tenant, ``name`` (with a key, as ``tenant_keys`` makes
    it): its id."""
    tenant_keys(data_dir, name, database_url=database_url)
    database = sa.create_engine(database_url)
    try:
        with database.connect() as connection:
            tenant = connection.scalar(sa.select(TenantRecord.id).where(TenantRecord.name == name))
    finally:
        database.dispose()
    assert tenant is not None, f"tenant {name} was not stored"
    return str(tenant)
