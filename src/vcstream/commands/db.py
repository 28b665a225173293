"""``vcstream db``: the database schema. ``upgrade`` brings it to this version's revision (the init
step before servers start on a shared PostgreSQL database; it also adopts a database made before
migrations); ``current`` prints the revision it is at; ``revision`` (for developers) writes the
migration for a model change. The database is the one ``vcstream serve`` would use:
``--database-url``/VCSTREAM_DATABASE_URL, else SQLite in ``--data-dir``/VCSTREAM_DATA_DIR.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from vcstream.errors import ConfigurationError
from vcstream.service.config import add_settings_arguments, settings_from_args

if TYPE_CHECKING:  # SQLAlchemy loads when a db command runs, not for every `vcstream` invocation
    import sqlalchemy as sa

#: the settings that name the database (and the folder older versions kept the recordings in)
_DATABASE_SETTINGS = ("data_dir", "database_url", "voices_dir")


def register(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    bench_sub: argparse._SubParsersAction,  # type: ignore[type-arg]
) -> None:
    parser = sub.add_parser(
        "db",
        help="database schema: upgrade it (before starting servers) or print its revision",
        description="The voice library's database schema (Alembic revisions shipped with vcstream).",
    )
    actions = parser.add_subparsers(dest="db_action", required=True)
    upgrade = actions.add_parser(
        "upgrade",
        help="bring the schema to this version's revision (no-op when it is there)",
        description="Migrate the database to the head revision in one transaction. On PostgreSQL run it "
        "once per release, before the servers start (they refuse a database that is behind). A database "
        "made before migrations is adopted if its tables are the expected ones. Recordings that older "
        "versions kept as files (--voices-dir) are moved into the database.",
    )
    upgrade.add_argument(
        "--forget-missing-recordings",
        action="store_true",
        help="delete the voices whose recording file is missing instead of stopping (they cannot be used)",
    )
    current = actions.add_parser("current", help="print the database's revision ('none' if it has none)")
    for action, func in ((upgrade, cmd_db_upgrade), (current, cmd_db_current)):
        add_settings_arguments(action, only=_DATABASE_SETTINGS)
        action.set_defaults(func=func)
    revision = actions.add_parser(
        "revision",
        help="developers: write the next migration for what the models changed (autogenerate)",
        description="Compare the models with the schema at head (a scratch SQLite database) and write "
        "the next revision into the package's migrations/versions. Review it, run ruff format on it, "
        "and commit it with the model change.",
    )
    revision.add_argument("--message", "-m", required=True, help="what the revision changes")
    revision.set_defaults(func=cmd_db_revision)


@contextmanager
def database_of(args: argparse.Namespace) -> Iterator[sa.Engine]:
    """The database the command's settings name; a database error is a ConfigurationError."""
    import sqlalchemy as sa

    from vcstream.service.db.connect import create_database_engine, shown_url

    url = settings_from_args(args).effective_database_url
    engine = create_database_engine(url)
    try:
        yield engine
    except sa.exc.OperationalError as exc:  # unreachable server, refused login, unwritable file
        raise ConfigurationError(f"cannot use the database {shown_url(url)}: {exc.orig or exc}") from exc
    finally:
        engine.dispose()


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from vcstream.service.db.connect import ensure_sqlite_folder, shown_url
    from vcstream.service.db.migrate import upgrade

    voices_dir = settings_from_args(args).effective_voices_dir
    with database_of(args) as engine:
        ensure_sqlite_folder(engine)
        result = upgrade(
            engine, voices_dir=voices_dir, forget_missing_recordings=args.forget_missing_recordings
        )
    shown = shown_url(engine.url)
    if result.adopted:
        print(f"{shown}: made before migrations, adopted at the baseline revision", file=sys.stderr)
    if result.before == result.after:
        print(f"{shown}: already at revision {result.after} (head)")
    else:
        print(f"{shown}: upgraded from {result.before or 'empty'} to revision {result.after} (head)")
    return 0


def cmd_db_current(args: argparse.Namespace) -> int:
    from vcstream.service.db.migrate import current_revision, head_revision

    with database_of(args) as engine, engine.connect() as connection:
        revision = current_revision(connection)
    print(revision or "none")
    head = head_revision()
    if revision != head:
        print(
            f"not at this version's head ({head}): if it is older, run `vcstream db upgrade`", file=sys.stderr
        )
    return 0


def cmd_db_revision(args: argparse.Namespace) -> int:
    from vcstream.service.db.migrate import new_revision

    print(new_revision(args.message))
    return 0
