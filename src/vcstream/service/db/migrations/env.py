"""Alembic's environment: runs the revisions on the connection that ``vcstream.service.db.migrate``
opened (and locked), inside its transaction."""

from __future__ import annotations

from alembic import context

from vcstream.service.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError(
        "vcstream's migrations run on a live connection through `vcstream db upgrade` "
        "(vcstream.service.db.migrate), not from the alembic command line or as SQL scripts"
    )

context.configure(
    connection=connection,
    # the models; a test hands other metadata to prove the drift check can fail
    target_metadata=context.config.attributes.get("target_metadata", Base.metadata),
    # SQLite alters tables by copying them: later revisions that change columns need batch mode
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
