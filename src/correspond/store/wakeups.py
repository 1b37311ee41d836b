"""Waking the API processes when mail or notifications arrive (PostgreSQL LISTEN/NOTIFY).

The sync worker and ``serve`` may be different processes. On PostgreSQL a transaction that
stored messages (or notifications) sends ``NOTIFY correspond_notify``, delivered when it
commits, and every API process LISTENs on a connection of its own: a new message reaches the
fan-out and the open streams at once, without polling. SQLite has no such thing: the API polls
(``Settings.notify_poll_seconds``), one cheap query per interval.

The same way, a CRM action queued in the outbox sends ``NOTIFY correspond_outbox, '<account
name>'`` (:func:`send_outbox_wakeup`), and every sync runner LISTENs (:func:`listen_for_outbox`):
the session holding that account applies it at once, not at the runner's next lease round,
when the API and the worker are different processes. On SQLite the account stamp file below
does (the runner's lease round then sees the touched account and wakes its session), and in
one ``correspond serve`` process ``SyncRunner.wake`` does at once.

Account changes that must reach the sync workers at once (pause, resume, disconnect, remove:
"all IMAP activity stops within a second") use a second signal, so that the workers are not
woken by every stored message: ``NOTIFY correspond_accounts`` on PostgreSQL, and on SQLite (one
host by construction: the database is a local file) a stamp file beside the database whose
modification time the workers look at a few times a second (a ``stat``, not a query).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

__all__ = [
    "ACCOUNTS_CHANNEL",
    "CHANNEL",
    "OUTBOX_CHANNEL",
    "announce_account_change",
    "listen_for_outbox",
    "listen_for_wakeups",
    "send_outbox_wakeup",
    "send_wakeup",
    "watch_account_changes",
]

CHANNEL = "correspond_notify"
ACCOUNTS_CHANNEL = "correspond_accounts"
OUTBOX_CHANNEL = "correspond_outbox"
#: How often a worker on SQLite looks at the account stamp file (seconds).
STAMP_POLL_SECONDS = 0.2
log = logging.getLogger(__name__)


def send_wakeup(s: Session) -> None:
    """In the caller's transaction: wake the listeners when it commits (PostgreSQL only;
    PostgreSQL folds repeats within one transaction into one)."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text(f"SELECT pg_notify('{CHANNEL}', '')"))


def _libpq_url(engine: Engine) -> str:
    url = engine.url.set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


async def listen_for_wakeups(
    engine: Engine,
    on_wake: Callable[[], None],
    *,
    retry_seconds: float = 1.0,
    channel: str = CHANNEL,
) -> None:
    """Call ``on_wake`` for every wake-up until cancelled (PostgreSQL). Reconnects after a
    lost connection, and calls ``on_wake`` then too: something may have been missed."""
    import psycopg

    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(_libpq_url(engine), autocommit=True)
            try:
                await conn.execute(f"LISTEN {channel}")
                on_wake()
                async for _ in conn.notifies():
                    on_wake()
            finally:
                await conn.close()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a lost or refused connection: poll until it is back
            log.warning("listening for wake-ups failed: %s", type(exc).__name__)
        await asyncio.sleep(retry_seconds)


def send_outbox_wakeup(s: Session, account_name: str) -> None:
    """In the caller's transaction: tell the sync runners, when it commits, that
    ``account_name`` has outbox rows to apply (PostgreSQL only)."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(
            text("SELECT pg_notify(:channel, :name)"),
            {"channel": OUTBOX_CHANNEL, "name": account_name[:4000]},
        )


async def listen_for_outbox(
    engine: Engine, on_account: Callable[[str], None], *, retry_seconds: float = 1.0
) -> None:
    """Call ``on_account(name)`` for every outbox wake-up until cancelled (PostgreSQL).
    Reconnects after a lost connection (what was missed meanwhile the lease round carries)."""
    import psycopg

    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(_libpq_url(engine), autocommit=True)
            try:
                await conn.execute(f"LISTEN {OUTBOX_CHANNEL}")
                async for note in conn.notifies():
                    on_account(note.payload)
            finally:
                await conn.close()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a lost or refused connection: the lease round covers it
            log.warning("listening for outbox wake-ups failed: %s", type(exc).__name__)
        await asyncio.sleep(retry_seconds)


def account_stamp_path(engine: Engine) -> Path | None:
    """The SQLite stamp file that announces account changes (None: not a file database)."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(f"{database}-accounts")


def announce_account_change(engine: Engine) -> None:
    """After a committed change that the sync workers must act on at once (pause, resume,
    disconnect, remove): wake them. PostgreSQL: ``NOTIFY correspond_accounts``; SQLite: the
    stamp file's time moves. Best effort: a worker that misses it still sees the change at
    its next lease round (``SyncRunner.poll_seconds``)."""
    try:
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                conn.execute(text(f"SELECT pg_notify('{ACCOUNTS_CHANNEL}', '')"))
                conn.commit()
            return
        stamp = account_stamp_path(engine)
        if stamp is not None:
            fd = os.open(stamp, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.close(fd)
            os.utime(stamp)  # now, in nanoseconds where the file system keeps them
    except Exception as exc:  # never fail the user's action for a missed wake-up
        log.warning("announcing an account change failed: %s", type(exc).__name__)


def _stamp_time(stamp: Path) -> int | None:
    with contextlib.suppress(OSError):
        return stamp.stat().st_mtime_ns
    return None


async def watch_account_changes(
    engine: Engine, on_wake: Callable[[], None], *, interval: float = STAMP_POLL_SECONDS
) -> None:
    """Call ``on_wake`` (in the event loop) whenever :func:`announce_account_change` runs in
    any process, until cancelled. Returns at once where there is nothing to watch (an
    in-memory SQLite database)."""
    if engine.dialect.name == "postgresql":
        await listen_for_wakeups(engine, on_wake, channel=ACCOUNTS_CHANNEL)
        return
    stamp = account_stamp_path(engine)
    if stamp is None:
        return
    seen = _stamp_time(stamp)
    while True:
        await asyncio.sleep(interval)
        now = _stamp_time(stamp)
        if now != seen:
            seen = now
            on_wake()
