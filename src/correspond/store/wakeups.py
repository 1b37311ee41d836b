"""Waking the API processes when mail or notifications arrive (PostgreSQL LISTEN/NOTIFY).

The sync worker and ``serve`` may be different processes. On PostgreSQL a transaction that
stored messages (or notifications) sends ``NOTIFY correspond_notify``, delivered when it
commits, and every API process LISTENs on a connection of its own: a new message reaches the
fan-out and the open streams at once, without polling. SQLite has no such thing: the API polls
(``Settings.notify_poll_seconds``), one cheap query per interval.

The same way, a CRM action queued in the outbox sends ``NOTIFY correspond_outbox, '<account
name>'`` (:func:`send_outbox_wakeup`), and every sync runner LISTENs (:func:`listen_for_outbox`):
the session holding that account applies it at once, not at the runner's next lease round,
when the API and the worker are different processes. On SQLite the lease round (or, in one
``correspond serve`` process, ``SyncRunner.wake``) carries it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

__all__ = [
    "CHANNEL",
    "OUTBOX_CHANNEL",
    "listen_for_outbox",
    "listen_for_wakeups",
    "send_outbox_wakeup",
    "send_wakeup",
]

CHANNEL = "correspond_notify"
OUTBOX_CHANNEL = "correspond_outbox"
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
    engine: Engine, on_wake: Callable[[], None], *, retry_seconds: float = 1.0
) -> None:
    """Call ``on_wake`` for every wake-up until cancelled (PostgreSQL). Reconnects after a
    lost connection, and calls ``on_wake`` then too: something may have been missed."""
    import psycopg

    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(_libpq_url(engine), autocommit=True)
            try:
                await conn.execute(f"LISTEN {CHANNEL}")
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
