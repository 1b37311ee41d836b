"""Store-side wiring shared by the tests that run against the private Dovecot (no pytest imports).

One migrated engine, one account draft for a Dovecot user, one "connect, sync once, log out"
pass: written once here so every test world is built the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from sqlalchemy import Engine

from correspond.rules.presets import AccountDraft
from correspond.store.engine import create_store_engine, migrate
from correspond.store.records import Account, Folder
from correspond.store.repository import Store
from correspond.sync.engine import AccountSyncer, AccountSyncReport
from correspond.testing.dovecot import DovecotServer, ImapUser

__all__ = ["add_dovecot_account", "dovecot_account_draft", "migrated_engine", "sync_once"]


@contextlib.contextmanager
def migrated_engine(url: str) -> Iterator[Engine]:
    """An engine on ``url`` with every migration applied, disposed of on exit."""
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
