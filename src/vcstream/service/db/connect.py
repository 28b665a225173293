"""Opening a database from its URL, and showing that URL in messages without its password."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from vcstream.errors import ConfigurationError


def shown_url(url: str | sa.URL) -> str:
    """A database URL for messages: never with its password."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "(unparsable URL)"


def create_database_engine(url: str) -> sa.Engine:
    """An engine for ``url``; a bad URL, an unknown dialect or a missing driver is a
    ConfigurationError. Nothing is connected yet."""
    try:
        # pool_pre_ping: a connection the database dropped while idle is replaced, not used
        return sa.create_engine(url, pool_pre_ping=True)
    except (sa.exc.ArgumentError, ImportError) as exc:
        raise ConfigurationError(f"database URL {shown_url(url)} cannot be used: {exc}") from exc


def ensure_sqlite_folder(engine: sa.Engine) -> None:
    """SQLite creates its file but not the folder it goes in."""
    url = engine.url
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
