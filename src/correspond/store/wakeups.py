"""Waking the API processes when mail or notifications arrive (PostgreSQL LISTEN/NOTIFY).

The sync worker and ``serve`` may be different processes. On PostgreSQL a transaction that
stored messages (or notifications) sends ``NOTIFY correspond_notify``, delivered when it
commits, and every API process LISTENs on a connection of its own: a new message reaches the
fan-out and the open streams at once, without polling. SQLite has no such thing: the API polls
(``Settings.notify_poll_seconds``), one cheap query per interval.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

__all__ = ["CHANNEL", "listen_for_wakeups", "send_wakeup"]

CHANNEL = "correspond_notify"
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
