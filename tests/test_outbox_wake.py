"""A CRM action reaches the mailbox without waiting for the runner's next lease round: when the
API and the engine share a process (``correspond serve``: ``OutboxStore(on_recorded=
runner.wake)``), on SQLite and PostgreSQL; and when they do not: the outbox's NOTIFY on
PostgreSQL, which every runner LISTENs for, and on SQLite the account stamp file, which every
runner watches. Against the private Dovecot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from correspond.settings import Settings
from correspond.store import Store
from correspond.store.message_tables import MessageRow
from correspond.store.messages import MessageStore
from correspond.store.outbox import OutboxStore
from correspond.sync.runner import SyncRunner
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.mail import plain_message
from correspond.testing.store import add_dovecot_account

pytestmark = [pytest.mark.dovecot, pytest.mark.timeout(120)]

#: Long enough that a wake by the lease round alone would fail the test's time limit.
ROUND_SECONDS = 30.0


async def eventually(check: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if await asyncio.to_thread(check):
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {timeout} s: {what}")


def seen_on_server(server: DovecotServer, user: ImapUser) -> bool:
    conn = server.imaplib_client(user)
    try:
        conn.select("INBOX", readonly=True)
        typ, data = conn.uid("SEARCH", "SEEN")
        return typ == "OK" and bool(data[0])
    finally:
        conn.logout()


@pytest.mark.parametrize("wake", ["in_process", "notify"])
async def test_an_action_wakes_its_session_at_once(
    wake: str,
    store: Store,
    store_settings: Settings,
    store_url: str,
    dovecot: DovecotServer,
    imap_user: ImapUser,
) -> None:
    dovecot.deliver(
        imap_user,
        plain_message(
            "wake@example.test", when=datetime.now(UTC), subject="wake", body="Wake.\r\n"
        ),
    )
    name = add_dovecot_account(store, dovecot, imap_user).name
    settings = store_settings.clone(database_url=store_url)
    runner = SyncRunner(
        store, settings, poll_seconds=ROUND_SECONDS, lease_seconds=3 * ROUND_SECONDS
    )
    runner.start()
    try:
        account = store.get_account(name)
        await eventually(
            lambda: (
                store.get_account(name).state == "live"
                and MessageStore(store.engine).count_messages(account.id) == 1
            ),
            30,
            "live",
        )
        with store.engine.connect() as c:
            mid = c.scalar(select(MessageRow.id).where(MessageRow.account_id == account.id))
        assert mid is not None
        # "notify": as an API in another process, which knows no runner (NOTIFY on PostgreSQL,
        # the stamp file on SQLite).
        outbox = OutboxStore(
            store.engine, on_recorded=runner.wake if wake == "in_process" else None
        )
        outbox.record(mid, "read", user_id=None)
        took = await eventually(lambda: seen_on_server(dovecot, imap_user), 10, "\\Seen")
        assert took < ROUND_SECONDS / 3, took
        # Marked applied right after the server's answer.
        await eventually(lambda: outbox.outcome(mid).actions == (), 5, "the row applied")
    finally:
        await runner.shutdown()
