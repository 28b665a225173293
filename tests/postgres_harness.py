"""A throwaway PostgreSQL cluster (scripts/setup.sh installs the server and the psycopg driver) and
databases of their own on it: used by the tests (conftest's fixtures) and by tests/local_cluster.py."""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa


class PostgresMissing(RuntimeError):
    """No PostgreSQL server binaries or no psycopg driver on this machine."""


@contextmanager
def running_postgres() -> Iterator[str]:
    """Yields the URL of the ``postgres`` database of a fresh cluster on a free port; the cluster
    and its folder are gone afterwards."""
    # Debian keeps the server binaries off PATH, under /usr/lib/postgresql/<version>/bin.
    pg_ctl = shutil.which("pg_ctl") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))), None)
    if pg_ctl is None or importlib.util.find_spec("psycopg") is None:
        raise PostgresMissing("PostgreSQL (pg_ctl) or the psycopg driver is missing: run scripts/setup.sh")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # initdb refuses root
    folder = Path(tempfile.mkdtemp(prefix="vcstream-pg-"))
    if as_user:
        shutil.chown(folder, "postgres")
    data = folder / "data"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def pg(tool: str, *args: str) -> None:
        command = [*as_user, str(Path(pg_ctl).resolve().parent / tool), *args]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    pg("initdb", "-A", "trust", "-U", "vc", "-D", str(data))
    # -l: the server's output goes to a file, not to the pipe this process would wait on
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    pg("pg_ctl", "-D", str(data), "-l", str(folder / "log"), "-o", options, "-w", "start")
    try:
        yield f"postgresql+psycopg://vc@127.0.0.1:{port}/postgres"
    finally:
        pg("pg_ctl", "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def created_database(cluster_url: str, prefix: str = "test") -> Iterator[str]:
    """An empty database of its own on the cluster at ``cluster_url``, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(cluster_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield sa.make_url(cluster_url).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
