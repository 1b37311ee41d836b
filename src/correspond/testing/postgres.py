"""PostgreSQL for tests: a given server, or a private throw-away cluster.

``CORRESPOND_TEST_POSTGRES_URL`` (e.g. ``postgresql://postgres@127.0.0.1:5432/postgres``) names a
server to use; otherwise :func:`postgres_server` runs ``initdb`` from ``/usr/lib/postgresql/*/bin``
into a temporary folder and starts ``postgres`` on a free loopback port with trust
authentication, as the ``postgres`` system user when running as root (initdb refuses root).
Each test then gets a fresh database with a unique name (:func:`temporary_database`), dropped
afterwards; ``migrated=True`` copies it from a template migrated once per process and server
(``CREATE DATABASE ... TEMPLATE``: ~0.3 s where creating and migrating one takes ~1.2 s).
Failures raise: a PostgreSQL test never skips silently.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

__all__ = [
    "ENV_URL",
    "PostgresServer",
    "PostgresUnavailable",
    "find_pg_bin",
    "migrated_template",
    "postgres_server",
    "temporary_database",
]

ENV_URL = "CORRESPOND_TEST_POSTGRES_URL"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL could be had for the tests (the message says why and how to fix it)."""


@dataclass(frozen=True, slots=True)
class PostgresServer:
    """A reachable server; ``admin_url`` connects to a maintenance database as a superuser."""

    admin_url: str

    def url_for(self, database: str) -> str:
        """A SQLAlchemy URL (psycopg 3) for ``database`` on this server."""
        url = make_url(self.admin_url).set(drivername="postgresql+psycopg", database=database)
        return url.render_as_string(hide_password=False)

    def _conninfo(self) -> str:
        url = make_url(self.admin_url).set(drivername="postgresql")
        return url.render_as_string(hide_password=False)

    def create_database(self, prefix: str = "correspond_test", template: str | None = None) -> str:
        """Create a database with a unique name, empty or a copy of ``template``; return its
        name."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            statement = sql.SQL("{} TEMPLATE {}").format(statement, sql.Identifier(template))
        with psycopg.connect(self._conninfo(), autocommit=True) as conn:
            conn.execute(statement)
        return name

    def drop_database(self, name: str) -> None:
        """Drop ``name``, disconnecting anyone still attached (PostgreSQL 13+)."""
        with psycopg.connect(self._conninfo(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def find_pg_bin() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with initdb, or PATH's."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise PostgresUnavailable(
        f"PostgreSQL server binaries not found (install postgresql, or set {ENV_URL})"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as(user: str | None, argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]


@contextlib.contextmanager
def _private_cluster() -> Iterator[PostgresServer]:
    pg_bin = find_pg_bin()
    run_user: str | None = None
    if os.geteuid() == 0:
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise PostgresUnavailable(
                "running as root and no 'postgres' user exists to run initdb as"
            ) from exc
        run_user = "postgres"
    base = Path(tempfile.mkdtemp(prefix="correspond-pg-"))
    try:
        if run_user is not None:
            os.chown(base, entry.pw_uid, entry.pw_gid)
        data = base / "data"
        init = _run_as(
            run_user,
            [
                str(pg_bin / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )
        if init.returncode != 0:
            raise PostgresUnavailable(
                f"initdb failed: {init.stderr.strip() or init.stdout.strip()}"
            )
        port = _free_port()
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={base} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        start = _run_as(
            run_user,
            [
                str(pg_bin / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(base / "log"),
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
        if start.returncode != 0:
            log = (base / "log").read_text(errors="replace") if (base / "log").exists() else ""
            raise PostgresUnavailable(
                f"postgres did not start: {start.stderr.strip()} {log[-2000:]}"
            )
        try:
            server = PostgresServer(f"postgresql://postgres@127.0.0.1:{port}/postgres")
            _wait_ready(server)
            yield server
        finally:
            _run_as(
                run_user, [str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _wait_ready(server: PostgresServer, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(server._conninfo(), connect_timeout=5) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.Error as exc:
            last = exc
            time.sleep(0.2)
    raise PostgresUnavailable(f"PostgreSQL at {server.admin_url} does not answer: {last}")


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """The server named by ``CORRESPOND_TEST_POSTGRES_URL``, else a private cluster."""
    url = os.environ.get(ENV_URL)
    if url:
        server = PostgresServer(url)
        _wait_ready(server, timeout=10.0)
        yield server
        return
    with _private_cluster() as server:
        yield server


# admin URL -> the name of a database migrated to head, made once per process (dropped at exit).
_MIGRATED_TEMPLATES: dict[str, str] = {}


def _drop_templates() -> None:
    for admin_url, name in list(_MIGRATED_TEMPLATES.items()):
        with contextlib.suppress(psycopg.Error):  # a private cluster may be gone already
            PostgresServer(admin_url).drop_database(name)
    _MIGRATED_TEMPLATES.clear()


def migrated_template(server: PostgresServer) -> str:
    """The name of a database on ``server`` with every migration applied, made on first use in
    this process (its unique name keeps concurrent test runs on one server apart) and
    dropped at exit. Nothing may stay connected to it: ``CREATE DATABASE ... TEMPLATE`` needs
    it idle."""
    name = _MIGRATED_TEMPLATES.get(server.admin_url)
    if name is None:
        from correspond.store.engine import create_store_engine, migrate

        name = server.create_database("correspond_template")
        engine = create_store_engine(server.url_for(name))
        try:
            migrate(engine)
        except BaseException:
            engine.dispose()
            server.drop_database(name)
            raise
        engine.dispose()
        if not _MIGRATED_TEMPLATES:
            atexit.register(_drop_templates)
        _MIGRATED_TEMPLATES[server.admin_url] = name
    return name


@contextlib.contextmanager
def temporary_database(
    server: PostgresServer, prefix: str = "correspond_test", *, migrated: bool = False
) -> Iterator[str]:
    """A fresh database on ``server`` for the duration; yields its SQLAlchemy URL. Empty, or
    with ``migrated`` a copy of :func:`migrated_template` (what migrating it would make)."""
    name = server.create_database(prefix, migrated_template(server) if migrated else None)
    try:
        yield server.url_for(name)
    finally:
        server.drop_database(name)
