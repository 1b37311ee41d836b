"""Helpers shared by the mirror's fault and correctness tests (``tests/test_mirror_*.py``).

The store/account wiring (:class:`Env`, the ``env`` fixture over SQLite and PostgreSQL) is the
one of ``test_sync_dovecot.py``, re-exported here so every mirror test builds its world the same
way. Added here: an independent view of the server (raw bytes and dedupe keys read with the
stdlib ``imaplib``), a consistency audit of the store (orphans, duplicates, missing blobs), and
a TCP proxy that cuts the connection after a given number of server→client bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from correspond.mail.dedupe import dedupe_key
from correspond.mail.parse import parse_message
from correspond.store.message_tables import (
    AttachmentRow,
    MessageLocationRow,
    MessageRefRow,
    MessageRow,
    ThreadRow,
)
from correspond.store.tables import AccountRow, FolderRow
from correspond.testing.dovecot import DovecotServer, ImapUser
from test_sync_dovecot import (
    NOW,
    SYNC_CHILD,
    TODAY,
    Env,
    _sqlite,
    append_many,
    pg_engine,
    raw_message,
)

__all__ = [
    "BACKENDS",
    "NOW",
    "SYNC_CHILD",
    "TODAY",
    "CuttingProxy",
    "Env",
    "StoreAudit",
    "append_many",
    "audit_store",
    "imap_quote",
    "make_env",
    "pg_engine",
    "point_account_at",
    "raw_message",
    "remote_raw",
    "remote_uid_keys",
    "sqlite_engine",
]

sqlite_engine = _sqlite


def make_env(
    request: pytest.FixtureRequest,
    dovecot: DovecotServer,
    imap_user: ImapUser,
    tmp_path: Path,
    *,
    key: bytes | None = None,
) -> Iterator[Env]:
    """The body of an ``env`` fixture: SQLite unless ``request.param`` is "postgresql" (then
    the module's ``pg_engine``, shared by the module's tests, which stay apart by account).
    ``key``: the secret-box key, for tests that open the same store from another process."""
    if getattr(request, "param", "sqlite") == "postgresql":
        yield Env(request.getfixturevalue("pg_engine"), dovecot, imap_user, tmp_path, key=key)
        return
    with _sqlite(tmp_path) as engine:
        yield Env(engine, dovecot, imap_user, tmp_path, key=key)


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def imap_quote(mailbox: str) -> str:
    """A quoted mailbox name for imaplib (which does not quote names with spaces itself)."""
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


def remote_raw(env: Env, mailbox: str) -> dict[int, bytes]:
    """UID -> the whole message (``BODY.PEEK[]``) as the server gives it, read with imaplib."""
    conn = env.server.imaplib_client(env.user)
    try:
        typ, _ = conn.select(imap_quote(mailbox), readonly=True)
        assert typ == "OK", mailbox
        typ, data = conn.uid("SEARCH", "ALL")
        assert typ == "OK"
        if not data[0]:
            return {}
        out: dict[int, bytes] = {}
        typ, data = conn.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
        assert typ == "OK"
        for item in data:
            if isinstance(item, tuple):
                match = re.search(rb"UID (\d+)", item[0])
                assert match is not None, item[0]
                out[int(match.group(1))] = item[1]
        return out
    finally:
        with contextlib.suppress(Exception):
            conn.logout()


def remote_uid_keys(env: Env, mailbox: str) -> dict[int, str]:
    """UID -> dedupe key of every message in ``mailbox``, computed from the server's bytes
    with the pure :func:`correspond.mail.dedupe.dedupe_key` (independent of the engine)."""
    return {uid: dedupe_key(parse_message(raw)) for uid, raw in remote_raw(env, mailbox).items()}


def point_account_at(engine: Engine, account_id: int, port: int) -> None:
    """Make the account connect to ``port`` on the same host (a proxy, or nothing at all)."""
    with Session(engine) as s, s.begin():
        s.execute(update(AccountRow).where(AccountRow.id == account_id).values(imap_port=port))


@dataclass(slots=True)
class StoreAudit:
    """Everything that would be wrong in a store whatever the mailbox holds."""

    messages: int
    duplicate_keys: list[str] = field(default_factory=list)
    messages_without_location: list[int] = field(default_factory=list)
    duplicate_locations: list[tuple[int, int]] = field(default_factory=list)
    refs_without_message: int = 0
    attachments_without_message: int = 0
    messages_without_thread: list[int] = field(default_factory=list)
    empty_threads: list[int] = field(default_factory=list)
    wrong_thread_counts: list[int] = field(default_factory=list)
    missing_blobs: list[str] = field(default_factory=list)

    @property
    def problems(self) -> dict[str, object]:
        """The non-empty findings (an empty dict means the store is consistent)."""
        found = {
            "duplicate_keys": self.duplicate_keys,
            "messages_without_location": self.messages_without_location,
            "duplicate_locations": self.duplicate_locations,
            "refs_without_message": self.refs_without_message,
            "attachments_without_message": self.attachments_without_message,
            "messages_without_thread": self.messages_without_thread,
            "empty_threads": self.empty_threads,
            "wrong_thread_counts": self.wrong_thread_counts,
            "missing_blobs": self.missing_blobs,
        }
        return {k: v for k, v in found.items() if v}


def audit_store(env: Env) -> StoreAudit:
    """Check the account's rows against each other and against the blob store.

    A message with no location is an orphan here: these tests never expunge, so every stored
    message must still be somewhere on the server.
    """
    acct = env.account.id
    with Session(env.messages.engine) as s:
        messages = list(
            s.execute(
                select(MessageRow.id, MessageRow.dedupe_key, MessageRow.thread_id).where(
                    MessageRow.account_id == acct
                )
            )
        )
        ids = {int(m.id) for m in messages}
        audit = StoreAudit(messages=len(messages))
        seen: set[str] = set()
        for m in messages:
            if m.dedupe_key in seen:
                audit.duplicate_keys.append(m.dedupe_key)
            seen.add(m.dedupe_key)
        folder_ids = select(FolderRow.id).where(FolderRow.account_id == acct)
        located = set(
            s.scalars(
                select(MessageLocationRow.message_id).where(
                    MessageLocationRow.folder_id.in_(folder_ids)
                )
            )
        )
        audit.messages_without_location = sorted(ids - located)
        audit.duplicate_locations = [
            (int(f), int(u))
            for f, u, _n in s.execute(
                select(MessageLocationRow.folder_id, MessageLocationRow.uid, func.count())
                .where(MessageLocationRow.folder_id.in_(folder_ids))
                .group_by(MessageLocationRow.folder_id, MessageLocationRow.uid)
                .having(func.count() > 1)
            )
        ]
        audit.refs_without_message = int(
            s.scalar(
                select(func.count())
                .select_from(MessageRefRow)
                .where(MessageRefRow.account_id == acct, MessageRefRow.message_id.not_in(ids))
            )
            or 0
        )
        audit.attachments_without_message = int(
            s.scalar(
                select(func.count())
                .select_from(AttachmentRow)
                .where(
                    AttachmentRow.message_id.not_in(select(MessageRow.id)),
                )
            )
            or 0
        )
        threads = {
            int(t.id): int(t.message_count)
            for t in s.execute(
                select(ThreadRow.id, ThreadRow.message_count).where(ThreadRow.account_id == acct)
            )
        }
        per_thread: dict[int, int] = {}
        for m in messages:
            if m.thread_id is None or int(m.thread_id) not in threads:
                audit.messages_without_thread.append(int(m.id))
            else:
                per_thread[int(m.thread_id)] = per_thread.get(int(m.thread_id), 0) + 1
        audit.empty_threads = sorted(t for t in threads if t not in per_thread)
        audit.wrong_thread_counts = sorted(t for t, n in per_thread.items() if threads.get(t) != n)
        keys = set(
            s.scalars(
                select(MessageRow.raw_blob_key).where(
                    MessageRow.account_id == acct, MessageRow.raw_blob_key.is_not(None)
                )
            )
        )
        keys |= set(
            s.scalars(
                select(AttachmentRow.blob_key).where(
                    AttachmentRow.message_id.in_(
                        select(MessageRow.id).where(MessageRow.account_id == acct)
                    ),
                    AttachmentRow.blob_key.is_not(None),
                )
            )
        )
    audit.missing_blobs = sorted(k for k in keys if not env.blobs.exists(k))
    return audit


class CuttingProxy:
    """A loopback TCP proxy to the IMAP server that can drop a connection mid-stream.

    ``cut_after``: after this many server→client bytes have been forwarded on a connection,
    both sides of it are closed abruptly (None: never). The count is of bytes on the wire
    (TLS records after STARTTLS), so a cut lands anywhere: inside a literal, between
    responses, or in a TLS record. ``forwarded`` holds each connection's server→client total.
    """

    host = "127.0.0.1"

    def __init__(self, target_host: str, target_port: int, *, cut_after: int | None) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.cut_after = cut_after
        self.forwarded: list[int] = []
        self.cuts = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.forwarded)
        self.forwarded.append(0)
        up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        self._writers += [writer, up_writer]
        limit = self.cut_after

        async def client_to_server() -> None:
            while data := await reader.read(65536):
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        async def server_to_client() -> None:
            while data := await up_reader.read(65536):
                if limit is not None and self.forwarded[index] + len(data) >= limit:
                    keep = limit - self.forwarded[index]
                    writer.write(data[:keep])
                    self.forwarded[index] += keep
                    with contextlib.suppress(ConnectionError):
                        await writer.drain()
                    self.cuts += 1
                    # An abrupt cut: RST to the client, nothing more to the server.
                    transport = writer.transport
                    transport.abort()
                    up_writer.transport.abort()
                    return
                writer.write(data)
                self.forwarded[index] += len(data)
                await writer.drain()
            writer.close()

        tasks = [
            asyncio.create_task(client_to_server()),
            asyncio.create_task(server_to_client()),
        ]
        self._tasks.update(tasks)
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._tasks.difference_update(tasks)
            for w in (writer, up_writer):
                w.transport.abort()
