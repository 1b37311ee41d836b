"""Store-side wiring shared by the tests that run against the private Dovecot (no pytest imports).

One migrated engine, one account draft for a Dovecot user, one "connect, sync once, log out"
pass: written once here so every test world is built the same way.

A new SQLite store is a copy of one migrated once per process (:func:`copy_migrated_sqlite`):
migrating a new file takes ~0.1 s, copying one ~1 ms, and the suite makes a thousand.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from sqlalchemy import Engine, make_url

from correspond.rules.presets import AccountDraft
from correspond.store.engine import create_store_engine, migrate
from correspond.store.records import Account, Folder
from correspond.store.repository import Store
from correspond.sync.engine import AccountSyncer, AccountSyncReport
from correspond.testing.dovecot import DovecotServer, ImapUser

__all__ = [
    "add_dovecot_account",
    "copy_migrated_sqlite",
    "dovecot_account_draft",
    "migrated_engine",
    "new_sqlite_path",
    "sync_once",
]

_sqlite_template: Path | None = None


def _migrated_sqlite_template() -> Path:
    """A SQLite store with every migration applied, made on first use, removed at exit."""
    global _sqlite_template
    if _sqlite_template is None:
        folder = Path(tempfile.mkdtemp(prefix="correspond-sqlite-template-"))
        atexit.register(shutil.rmtree, folder, True)
        path = folder / "store.db"
        engine = create_store_engine(f"sqlite:///{path}")
        try:
            migrate(engine)
        finally:
            engine.dispose()  # the last connection's close checkpoints the WAL into the file
        _sqlite_template = path
    return _sqlite_template


def copy_migrated_sqlite(path: Path) -> None:
    """Make ``path`` (which must not exist) a migrated SQLite store: the same file migrating a
    new one makes, copied, owner-only (0600) as the store makes its file."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with _migrated_sqlite_template().open("rb") as src, os.fdopen(fd, "wb") as dst:
        shutil.copyfileobj(src, dst)


def new_sqlite_path(url: str) -> Path | None:
    """The file of a SQLite ``url`` that does not exist yet (else None)."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:"):  # a URI: left to SQLite, as the store does
        return None
    path = Path(database)
    return None if path.exists() else path


@contextlib.contextmanager
def migrated_engine(url: str) -> Iterator[Engine]:
    """An engine on ``url`` with every migration applied, disposed of on exit (a new SQLite
    file starts as a copy of a migrated one; migrating it then finds nothing to do)."""
    new_file = new_sqlite_path(url)
    if new_file is not None:
        copy_migrated_sqlite(new_file)
    engine = create_store_engine(url)
    try:
        migrate(engine)
        yield engine
    finally:
        engine.dispose()


def dovecot_account_draft(server: DovecotServer, user: ImapUser) -> AccountDraft:
    """The account for ``user`` on ``server``: STARTTLS against the server's own certificate,
    no SMTP, the default 60-day window, named after the user."""
    return AccountDraft(
        name=user.username,
        preset="generic",
        email=user.address,
        username=user.username,
        imap_host=server.host,
        imap_port=server.port,
        imap_security="starttls",
        smtp_host=None,
        smtp_port=587,
        smtp_security="starttls",
        trusted_cert_pem=server.cert_pem,
        window_days=60,
    )


def add_dovecot_account(
    store: Store, server: DovecotServer, user: ImapUser, password: str | None = None
) -> Account:
    """Add :func:`dovecot_account_draft` to ``store`` with ``password`` (the user's own by
    default; a wrong one makes an account whose login fails)."""
    return store.add_account(
        dovecot_account_draft(server, user), password if password is not None else user.password
    )


async def sync_once(
    syncer: AccountSyncer,
    account: Account,
    *,
    folders: Sequence[Folder] | None = None,
    max_batches: int | None = None,
) -> AccountSyncReport:
    """Connect, run one :meth:`AccountSyncer.sync_once` pass, and log out (a logout failure is
    ignored: the pass is what counts)."""
    client = await syncer.connect(account)
    try:
        return await syncer.sync_once(client, account, folders=folders, max_batches=max_batches)
    finally:
        with contextlib.suppress(Exception):
            await client.logout()
