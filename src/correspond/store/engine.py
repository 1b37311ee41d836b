"""Database engines and migrations.

SQLite (the embedded default) runs in WAL mode with foreign keys on and a busy timeout, so the
API, the CLI and the sync engine can share one file. PostgreSQL URLs are driven by psycopg 3.
Migrations are Alembic's, applied programmatically on start: no alembic.ini at run time.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    InternalError,
    OperationalError,
    ProgrammingError,
    SQLAlchemyError,
)
from sqlalchemy.orm import Session, sessionmaker

from correspond.errors import ConfigError, NotFound, StoreError
from correspond.settings import make_private

__all__ = [
    "MIGRATIONS_DIR",
    "SQLITE_BUSY_TIMEOUT_MS",
    "count_stored_secrets",
    "create_store_engine",
    "current_revision",
    "database_failure",
    "head_revision",
    "is_database_error",
    "log_database_failure",
    "make_sqlite_private",
    "migrate",
    "normalize_url",
    "read_retrying",
    "reading_engine",
    "register_table_modules",
    "unit_of_work",
]

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 10_000
#: Seconds a pooled PostgreSQL connection is reused before it is replaced (a firewall or proxy
#: may drop one idle for longer; the server never does by default).
POOL_RECYCLE_SECONDS = 1800
_MIGRATION_LOCK = 0x636F7272  # "corr": an arbitrary, fixed advisory-lock key


def normalize_url(url: str) -> str:
    """Pick psycopg 3 for bare ``postgresql://`` / ``postgres://`` URLs."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        # WAL lets readers run during a write; foreign keys are off by default in SQLite.
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA synchronous=NORMAL")
    finally:
        cur.close()


def create_store_engine(url: str) -> Engine:
    """An engine for ``url`` with the settings each backend needs."""
    url = normalize_url(url)
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigError(f"database URL cannot be parsed: {exc}") from exc
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            # Private: the data directory holds the key and the encrypted secrets.
            Path(database).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            make_sqlite_private(Path(database))
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql":
        # No pre-ping: it was a round trip on every checkout (a third of a list request's).
        # A connection the server dropped fails its first statement instead; SQLAlchemy then
        # discards every pooled connection older than the failure, reads retry once
        # (read_retrying) and a write fails as a transient StoreError, retried by its caller.
        # No JIT: every statement here is short, and the planner's estimates for a few of them
        # (the visibility rule's subqueries, a search's match-first CTE) pass jit_above_cost,
        # so each paid 70-450 ms compiling a plan that ran in 1-8 ms (measured twice).
        # Options the URL gives (``?options=...``) are kept, ours added after them.
        given = parsed.query.get("options")
        given = given[-1] if isinstance(given, tuple) else given
        options = f"{given} -c jit=off" if given else "-c jit=off"
        return create_engine(
            parsed.difference_update_query(["options"]),
            pool_recycle=POOL_RECYCLE_SECONDS,
            connect_args={"options": options},
        )
    raise ConfigError(
        f"unsupported database {parsed.get_backend_name()!r}: use SQLite or PostgreSQL"
    )


def make_sqlite_private(database: Path) -> None:
    """Create the SQLite file owner-only (0600) before SQLite does (it would follow the umask,
    0644 by default), and make an existing one and its journals (``-wal``, ``-shm``,
    ``-journal``) owner-only. SQLite creates the journals with the database file's mode, so
    they stay private from then on."""
    with contextlib.suppress(FileExistsError, FileNotFoundError):
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    for suffix in ("", "-wal", "-shm", "-journal"):
        make_private(f"{database}{suffix}", 0o600)


# Modules that add tables to ``Base`` (later issues); imported when present so that migrations'
# autogenerate and the store's optional queries (e.g. message counts) see every table.
TABLE_MODULES = (
    "correspond.store.tables",
    "correspond.store.message_tables",
    "correspond.store.crm_tables",
    "correspond.store.notify_tables",
    "correspond.store.outbox_tables",
    "correspond.store.compose_tables",
    "correspond.store.draft_tables",
)


# What a database error says to a person, by kind. A driver's message quotes the statement and
# its bound values (an account's addresses, a message's subject or body), so it never leaves
# the store: StoreError, state_detail, logs and API bodies get one of these fixed sentences.
_FAILURES: tuple[tuple[type[SQLAlchemyError], str], ...] = (
    (IntegrityError, "the database refused a value (integrity)"),
    (DataError, "the database refused a value (data)"),
    (OperationalError, "the database could not carry out the operation (operational)"),
    (ProgrammingError, "the database rejected a statement (programming)"),
    (InternalError, "the database reported an internal error (internal)"),
    (InterfaceError, "the database connection failed (interface)"),
)


def database_failure(exc: BaseException) -> str:
    """A fixed sentence naming the kind of a database failure: never the driver's text, which
    carries SQL and bound values (message content, addresses)."""
    for kind, sentence in _FAILURES:
        if isinstance(exc, kind):
            return sentence
    return f"the database failed ({exc.__class__.__name__})"


def is_database_error(exc: BaseException) -> bool:
    """Whether ``exc`` came from the database layer (and its text must not be shown)."""
    return isinstance(exc, SQLAlchemyError)


def log_database_failure(logger: logging.Logger, what: str, exc: BaseException) -> None:
    """Log a database failure by its type only (no statement, no values, no traceback text)."""
    orig = getattr(exc, "orig", None)
    detail = f" ({orig.__class__.__name__})" if orig is not None else ""
    logger.warning("%s: %s%s", what, exc.__class__.__name__, detail)


_PER_ENGINE_LOCK = threading.Lock()
_PER_ENGINE_ATTRIBUTE = "_correspond_per_engine"
T = TypeVar("T")


def per_engine(engine: Engine, key: str, make: Callable[[], T]) -> T:
    """One ``make()`` per engine and ``key``, kept on the engine itself, so it goes with it.

    (Not a ``WeakKeyDictionary`` keyed by the engine: its values refer to the engine, so the
    key never died, and every engine a process made stayed alive with its pool; a test run
    grew to 1.9 GB and ran at half speed.)"""
    with _PER_ENGINE_LOCK:
        cache: dict[str, Any] | None = getattr(engine, _PER_ENGINE_ATTRIBUTE, None)
        if cache is None:
            cache = {}
            setattr(engine, _PER_ENGINE_ATTRIBUTE, cache)
        if key not in cache:
            cache[key] = make()
        found: T = cache[key]
        return found


def shared_sessions(engine: Engine) -> sessionmaker[Session]:
    """The ``sessionmaker(engine, expire_on_commit=False)`` every store object made per live
    account shares (one per engine).

    Each ``sessionmaker`` makes a ``Session`` subclass of its own, with SQLAlchemy's event
    dispatch for it (~25 listener collections, each with a deque): ~30 KB per instance, which
    made per account (its outbox and send stores) was a tenth of an idle live account's memory
    in a worker (bench/README.md, idle_accounts.py).
    """
    return per_engine(engine, "sessions", lambda: sessionmaker(engine, expire_on_commit=False))


@contextmanager
def unit_of_work(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work from ``sessions``: commits on success, rolls back on any error.

    The one place a SQLAlchemy error becomes a :class:`StoreError`; our own
    :class:`NotFound` and :class:`ConfigError` raised inside pass through unchanged.
    """
    try:
        with sessions.begin() as session:
            yield session
    except (NotFound, ConfigError):
        raise
    except SQLAlchemyError as exc:
        log_database_failure(log, "database error", exc)
        raise StoreError(database_failure(exc)) from exc


_T = TypeVar("_T")


def reading_engine(engine: Engine) -> Engine:
    """``engine`` for one-statement reads: on PostgreSQL in autocommit, so a read is its
    statement alone (no BEGIN before it, no ROLLBACK when the connection goes back to the
    pool: two round trips of three). SQLite's driver opens no transaction for a SELECT, and
    switching its mode costs a PRAGMA per checkout: there it is ``engine`` itself."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return engine


def read_retrying(engine: Engine, read: Callable[[Connection], _T]) -> _T:
    """``read(conn)`` on a pooled connection, once more on a fresh one if the first was dead
    (the server restarted or dropped it: no pre-ping finds that out beforehand). Only for
    reads: running one twice changes nothing."""
    try:
        with engine.connect() as conn:
            return read(conn)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        log.info("a pooled database connection was dead; reading again on a new one")
    with engine.connect() as conn:
        return read(conn)


def register_table_modules() -> None:
    """Import every table module that exists, registering its tables on ``Base.metadata``."""
    for module in TABLE_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str | None:
    """The newest migration shipped with this version of Correspond."""
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The migration the database is at (None for an empty database)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema up to ``revision`` (default: the newest). Safe to run on every start.

    On PostgreSQL the upgrade runs in one transaction (DDL is transactional there), so two
    processes starting together cannot half-apply a migration.
    """
    cfg = _alembic_config()
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Serialise concurrent starts; released at commit.
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    except OperationalError as exc:
        # Mostly the server is down, refuses us or the database does not exist: say where.
        where = engine.url.render_as_string(hide_password=True)
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise StoreError(f"cannot use the database {where}: {reason}") from exc
    except SQLAlchemyError as exc:
        log_database_failure(log, "database migration failed", exc)
        raise StoreError(f"database migration failed: {database_failure(exc)}") from exc


def count_stored_secrets(engine: Engine) -> int:
    """How many accounts hold an encrypted secret (which only their key can open)."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM accounts WHERE secret_encrypted IS NOT NULL")
            ).scalar_one()
        )
