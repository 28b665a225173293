"""Transactions that read and change what a tenant's plan limits (its running calls, its voices),
taken one at a time per tenant by every replica sharing the database: each holds the tenant's row
(``SELECT ... FOR UPDATE``) from its count to its commit, so of two replicas racing for the tenant's
last place the second waits and then counts the first's row.

SQLite serves one process and ignores FOR UPDATE: there a lock orders that process's transactions
(every user's, not one's: a test may run two "replicas" in one process)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from vcstream.service.db.models import TenantRecord

_ONE_PROCESS = threading.Lock()


class TenantTurns:
    """Per-tenant turns on one database: call admission and voice uploads under a plan's limits."""

    def __init__(self, database: sa.Engine) -> None:
        self._sessions = sessionmaker(database, expire_on_commit=False)
        # other databases order the transactions by the tenant's row lock, across replicas
        self._one_process: AbstractContextManager[object] = (
            _ONE_PROCESS if database.dialect.name == "sqlite" else nullcontext()
        )

    @contextmanager
    def transaction(self, tenant_id: str | None) -> Iterator[Session]:
        """A transaction holding ``tenant_id``'s row until it ends (None: the open server, no row
        to hold); committed when the block ends, rolled back on an exception."""
        with self._one_process, self._sessions.begin() as session:
            if tenant_id is not None:
                session.execute(
                    sa.select(TenantRecord.id).where(TenantRecord.id == tenant_id).with_for_update()
                )
            yield session
