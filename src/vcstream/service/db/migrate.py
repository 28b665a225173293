"""Schema revisions with Alembic, configured here rather than by an alembic.ini: where a database
stands (``current_revision``, ``head_revision``), bringing it to head (``upgrade``), and what a
server does at start-up (``prepare_for_serving``).

A database made before migrations (the voices table, no ``alembic_version``) is adopted: if its
tables match the baseline exactly it is stamped at the baseline revision, then upgraded; if they do
not, nothing is changed and the differences are reported.

Several replicas share one PostgreSQL database, so they must not race to migrate it: a server there
only checks the revision, and ``vcstream db upgrade`` (an init step) migrates, under an advisory lock
so that two such steps started together run one after the other. SQLite serves one process, which
upgrades its database itself.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from alembic.util.exc import CommandError

from vcstream.errors import ConfigurationError
from vcstream.service.db.baseline import BASELINE_METADATA, BASELINE_REVISION
from vcstream.service.db.connect import shown_url

log = logging.getLogger(__name__)

#: the migration scripts, as a package resource: found in a source tree and in an installed wheel
SCRIPT_LOCATION = "vcstream.service.db:migrations"
#: pg_advisory_xact_lock key held while migrating ("vcstream" in ASCII)
MIGRATION_LOCK_KEY = 0x7663737472656D61
UPGRADE_COMMAND = "vcstream db upgrade"


class SchemaBehindError(ConfigurationError):
    """The database's schema is older than this vcstream's; ``vcstream db upgrade`` brings it up."""


class UnknownSchemaError(ConfigurationError):
    """The database holds tables or a revision this vcstream cannot account for (a newer version
    migrated it, or the tables were made by hand); nothing was changed."""


class MissingRecordingsError(ConfigurationError):
    """Voices whose recording file is not in the voices folder the upgrade to revision 0002 was given
    (which moves the files into the database); nothing was changed."""

    def __init__(self, folder: Path | None, voice_ids: list[str]) -> None:
        self.folder = folder
        self.voice_ids = voice_ids
        where = f"in {folder}" if folder is not None else "(no voices folder was given)"
        more = len(voice_ids) - 10
        shown = ", ".join(voice_ids[:10]) + (f" and {more} more" if more > 0 else "")
        super().__init__(
            f"{len(voice_ids)} voice(s) have no recording file {where}: {shown}. The upgrade moves the "
            "recordings into the database and changed nothing. Point it at the folder the servers used "
            "(--voices-dir / VCSTREAM_VOICES_DIR, default <data dir>/voices), or pass "
            "--forget-missing-recordings to delete those voices (they cannot be used anyway)."
        )


@dataclass(frozen=True)
class UpgradeResult:
    #: revision before (None: empty database); the baseline for an adopted pre-migration database
    before: str | None
    #: whether a database made before migrations was stamped at the baseline
    adopted: bool
    after: str


def alembic_config(
    connection: sa.Connection | None = None,
    *,
    voices_dir: Path | None = None,
    forget_missing_recordings: bool = False,
) -> Config:
    """Alembic's configuration, pointed at the packaged scripts; ``env.py`` runs the revisions on
    ``connection``. Revision 0002 reads the recordings from ``voices_dir`` (see its script)."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.attributes["connection"] = connection
    config.attributes["voices_dir"] = voices_dir
    config.attributes["forget_missing_recordings"] = forget_missing_recordings
    return config


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    head = script_directory().get_current_head()
    if head is None:  # a packaging fault, not an operator's
        raise RuntimeError(f"no migration scripts found in {SCRIPT_LOCATION}")
    return head


def current_revision(connection: sa.Connection) -> str | None:
    """The revision stamped in the database; None when it has no ``alembic_version``."""
    return MigrationContext.configure(connection).get_current_revision()


def baseline_differences(connection: sa.Connection) -> list[str]:
    """How the database's baseline tables differ from the baseline schema (tables of its own that
    the baseline does not name are not compared)."""

    def baseline_only(name: str | None, kind: str, parent: Any) -> bool:
        return kind != "table" or name in BASELINE_METADATA.tables

    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "include_name": baseline_only}
    )
    return [_describe(diff) for diff in compare_metadata(context, BASELINE_METADATA)]


def _describe(diff: Any) -> str:
    """One line for an entry of Alembic's comparison (a tuple, or a list of column changes)."""
    change = diff[0] if isinstance(diff, list) else diff
    kind = change[0]
    if kind in ("add_table", "remove_table", "add_index", "remove_index"):
        return f"{kind} {change[1].name}"
    if kind in ("add_column", "remove_column"):
        return f"{kind} {change[2]}.{change[3].name}"
    if kind.startswith("modify_"):
        return f"{kind} {change[2]}.{change[3]}: {change[5]!r} in the database, {change[6]!r} expected"
    return repr(change)


def _has_baseline_tables(connection: sa.Connection) -> bool:
    present = set(sa.inspect(connection).get_table_names())
    return bool(present & set(BASELINE_METADATA.tables))


def _check_known(current: str | None, url: sa.URL) -> None:
    if current is not None and current not in {s.revision for s in script_directory().walk_revisions()}:
        raise UnknownSchemaError(
            f"the database {shown_url(url)} is at revision {current!r}, which this vcstream does not "
            "know: a newer version migrated it. Run that version (or a newer one)."
        )


def upgrade(
    engine: sa.Engine, *, voices_dir: Path | None = None, forget_missing_recordings: bool = False
) -> UpgradeResult:
    """Bring the database to the head revision (adopting a pre-migration database first), in one
    transaction where DDL is transactional (PostgreSQL; SQLite commits each DDL statement). Raises
    UnknownSchemaError without changing anything when the database holds a revision or tables this
    vcstream cannot account for. ``voices_dir``: the folder of recordings kept as files before
    revision 0002, which moves them into the database (MissingRecordingsError, nothing changed, when
    a voice's file is not there, unless ``forget_missing_recordings`` deletes those voices)."""
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # a second upgrade started meanwhile waits here, then finds the work done
            connection.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
        before = current_revision(connection)
        _check_known(before, engine.url)
        adopted = before is None and _has_baseline_tables(connection)
        config = alembic_config(
            connection, voices_dir=voices_dir, forget_missing_recordings=forget_missing_recordings
        )
        if adopted:
            differences = baseline_differences(connection)
            if differences:
                raise UnknownSchemaError(
                    f"the database {shown_url(engine.url)} has no migration revision and its tables "
                    "are not the schema vcstream made before migrations, so it was left unchanged: "
                    + "; ".join(differences)
                )
            command.stamp(config, BASELINE_REVISION)
            before = BASELINE_REVISION
            log.info(
                "database %s made before migrations: adopted at revision %s", shown_url(engine.url), before
            )
        try:
            command.upgrade(config, "head")
        except CommandError as exc:
            raise UnknownSchemaError(f"cannot upgrade the database {shown_url(engine.url)}: {exc}") from exc
        after = current_revision(connection)
    if after is None:  # only possible with broken migration scripts
        raise RuntimeError("the upgrade left no revision in the database")
    if after != before:
        log.info("database %s upgraded from %s to %s", shown_url(engine.url), before or "empty", after)
    return UpgradeResult(before=before, adopted=adopted, after=after)


def require_head(engine: sa.Engine) -> str:
    """The database's revision if it is the head; SchemaBehindError (naming ``vcstream db upgrade``)
    when it is older, empty or made before migrations; UnknownSchemaError when it is newer."""
    with engine.connect() as connection:
        current = current_revision(connection)
    _check_known(current, engine.url)
    head = head_revision()
    if current != head:
        stands = f"at revision {current}" if current else "without a migration revision (empty, or older)"
        raise SchemaBehindError(
            f"the database {shown_url(engine.url)} is {stands}; this server needs revision {head}. "
            f"Run `{UPGRADE_COMMAND}` with the same database URL (VCSTREAM_DATABASE_URL or "
            "--database-url) once, before starting the servers."
        )
    return current


def new_revision(
    message: str, *, versions_dir: Path | None = None, target_metadata: sa.MetaData | None = None
) -> Path:
    """Write the next revision (``r0002_<slug>.py``...) with what the models (or ``target_metadata``)
    changed since head, found by autogenerate against a scratch SQLite database at head. For developers
    in a source checkout (``versions_dir`` defaults to the package's); review the script before
    committing it."""
    package_versions = Path(script_directory().versions)
    target_dir = versions_dir or package_versions
    with tempfile.TemporaryDirectory(prefix="vcstream-revision-") as scratch:
        engine = sa.create_engine(f"sqlite:///{Path(scratch) / 'head.db'}")
        try:
            upgrade(engine)
            with engine.begin() as connection:
                config = alembic_config(connection)
                config.set_main_option("file_template", "r%%(rev)s_%%(slug)s")
                config.set_main_option("path_separator", "os")
                config.set_main_option(
                    "version_locations",
                    os.pathsep.join(dict.fromkeys((str(package_versions), str(target_dir)))),
                )
                if target_metadata is not None:
                    config.attributes["target_metadata"] = target_metadata
                script = command.revision(
                    config,
                    message,
                    autogenerate=True,
                    rev_id=f"{int(head_revision()) + 1:04d}",
                    version_path=str(target_dir),
                    process_revision_directives=_nothing_when_unchanged,
                )
        finally:
            engine.dispose()
    if not script:
        raise ConfigurationError("the models match the head revision: there is nothing to migrate")
    if not isinstance(script, Script):  # one head, one script: anything else is a fault here
        raise RuntimeError(f"alembic wrote {script!r} instead of one revision")
    return Path(script.path)


def _nothing_when_unchanged(context: MigrationContext, revision: Any, directives: list[Any]) -> None:
    """An empty revision is never wanted: write none."""
    if directives[0].upgrade_ops.is_empty():
        directives.clear()


def prepare_for_serving(engine: sa.Engine, voices_dir: Path | None = None) -> str:
    """At server start-up: an SQLite database (one process) is upgraded in place (recordings of older
    versions are taken from ``voices_dir``); any other must already be at head, since replicas
    sharing it must not race to migrate. Returns the revision."""
    if engine.dialect.name == "sqlite":
        return upgrade(engine, voices_dir=voices_dir).after
    return require_head(engine)
