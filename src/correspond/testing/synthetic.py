"""Synthetic mail rows written straight into a store, for list benchmarks and plan tests.

No IMAP, no parsing, no blobs: rows shaped like what ingest writes (``messages``,
``message_locations``, ``threads``), inserted in large executemany batches so a million
messages take minutes, not the hours a real backfill of that size would. Deterministic for a
given ``seed``. Not for correctness tests of ingest: use the real engine there.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import JSON, Connection, Engine, Table, func, insert, select, text

from correspond.store.message_tables import (
    AttachmentRow,
    MessageLocationRow,
    MessageRow,
    ThreadRow,
    list_sort_at,
)
from correspond.store.tables import AccountRow, FolderRow

__all__ = ["SyntheticFill", "customer_name", "fill_messages", "make_account_with_folders"]

_MESSAGES = cast(Table, MessageRow.__table__)
_LOCATIONS = cast(Table, MessageLocationRow.__table__)
_THREADS = cast(Table, ThreadRow.__table__)
_ATTACHMENTS = cast(Table, AttachmentRow.__table__)

#: Messages per thread: consecutive messages (in time) share one.
THREAD_SIZE = 5
_WORDS = [
    *("invoice", "quarterly", "review", "meeting", "proposal", "contract", "renewal"),
    *("shipment", "order", "delivery", "schedule", "support", "ticket", "follow-up"),
    *("pricing", "budget", "forecast", "agenda", "report", "update", "draft"),
]


@dataclass(frozen=True, slots=True)
class SyntheticFill:
    messages: int
    locations: int
    threads: int
    first_id: int
    last_id: int


def make_account_with_folders(engine: Engine, name: str) -> tuple[int, dict[str, int]]:
    """An account and its INBOX, Sent and Archive folders (role -> folder id)."""
    from sqlalchemy.orm import Session

    with Session(engine) as s, s.begin():
        account = AccountRow(
            name=name,
            preset="generic",
            email=f"{name}@example.test",
            imap_host="127.0.0.1",
            imap_port=143,
            imap_security="starttls",
            smtp_host=None,
            smtp_port=587,
            smtp_security="starttls",
            username=name,
        )
        s.add(account)
        s.flush()
        folders = {}
        for raw, role in ((b"INBOX", "inbox"), (b"Sent", "sent"), (b"Archive", "archive")):
            folder = FolderRow(
                account_id=account.id,
                remote_name_raw=raw,
                name=raw.decode(),
                role=role,
                selected=True,
            )
            s.add(folder)
            s.flush()
            folders[role] = folder.id
        return account.id, folders


def fill_messages(
    engine: Engine,
    account_id: int,
    folders: Mapping[str, int],
    count: int,
    *,
    seed: int = 7,
    chunk: int = 5000,
    newest: datetime | None = None,
    people: Callable[[int], tuple[str, list[str]]] | None = None,
) -> SyntheticFill:
    """Insert ``count`` messages for the account, newest ``newest`` (default now) and one
    every ~minute back from there, committed every ``chunk`` messages.

    Each message is in INBOX (80%) or Sent (20%); every 50th also has a second location in
    Archive; every 10th has an attachment (metadata only); every 200th has no Date
    (INTERNALDATE only), every 1000th neither (sorted by when it was stored). Two of three
    are read and one in seven starred (the message's flags and its locations' alike).
    ``THREAD_SIZE`` consecutive messages share a thread. ``people(k)``, when given, names
    message ``k``'s sender and Cc addresses (default: one of ~600,000 made-up senders, no Cc;
    every message is to ``owner@example.test``).
    """
    if chunk % THREAD_SIZE:
        raise ValueError(f"chunk must be a multiple of {THREAD_SIZE}")
    rng = random.Random(seed)
    newest = newest or datetime.now(UTC)
    inbox, sent, archive = folders["inbox"], folders["sent"], folders["archive"]
    locations = threads = 0
    with engine.connect() as conn:
        first = int(conn.scalar(select(func.coalesce(func.max(_MESSAGES.c.id), 0))) or 0) + 1
        next_thread = int(conn.scalar(select(func.coalesce(func.max(_THREADS.c.id), 0))) or 0) + 1
        next_uid = {
            fid: int(
                conn.scalar(
                    select(func.coalesce(func.max(_LOCATIONS.c.uid), 0)).where(
                        _LOCATIONS.c.folder_id == fid
                    )
                )
                or 0
            )
            + 1
            for fid in (inbox, sent, archive)
        }
        next_location = (
            int(conn.scalar(select(func.coalesce(func.max(_LOCATIONS.c.id), 0))) or 0) + 1
        )
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        messages: list[dict[str, Any]] = []
        locs: list[dict[str, Any]] = []
        thread_rows: list[dict[str, Any]] = []
        attachments: list[dict[str, Any]] = []
        now = datetime.now(UTC)
        for k in range(start, start + n):
            mid = first + k
            if k % THREAD_SIZE == 0:
                when = newest - timedelta(seconds=60 * k)
                thread_rows.append(
                    {
                        "id": next_thread + k // THREAD_SIZE,
                        "account_id": account_id,
                        "subject": f"thread {k // THREAD_SIZE}",
                        "message_count": THREAD_SIZE,
                        "first_message_at": when - timedelta(seconds=60 * (THREAD_SIZE - 1)),
                        "last_message_at": when,
                        "created_at": now,
                    }
                )
            row = _message(rng, account_id, mid, k, newest, now, next_thread + k // THREAD_SIZE)
            if people is not None:
                sender, cc = people(k)
                row["from_email"] = sender
                row["cc_addrs"] = [{"name": "", "email": a} for a in cc]
                row["participants"] = [sender, "owner@example.test", *cc]
            messages.append(row)
            if k % 10 == 3:
                attachments.append(
                    {
                        "message_id": mid,
                        "filename": f"document-{k}.pdf",
                        "content_type": "application/pdf",
                        "size": 48_000,
                        "content_id": None,
                        "inline": False,
                        "blob_key": None,
                        "section": "2",
                    }
                )
            folder = sent if k % 5 == 4 else inbox
            homes = [folder, archive] if k % 50 == 0 else [folder]
            for fid in homes:
                locs.append(
                    {
                        "id": next_location,
                        "message_id": mid,
                        "folder_id": fid,
                        "uid": next_uid[fid],
                        "modseq": None,
                        "flags": row["flags"],
                        "created_at": now,
                        "sort_at": row["sort_at"],
                    }
                )
                next_uid[fid] += 1
                next_location += 1
        with engine.begin() as conn:
            for table, rows in (
                (_THREADS, thread_rows),
                (_MESSAGES, messages),
                (_LOCATIONS, locs),
                (_ATTACHMENTS, attachments),
            ):
                if not rows:
                    continue
                if engine.dialect.name == "postgresql":
                    _copy(conn, table, rows)
                else:
                    conn.execute(insert(table), rows)
        locations += len(locs)
        threads += len(thread_rows)
    _advance_sequences(engine)
    return SyntheticFill(count, locations, threads, first, first + count - 1)


def _flags(k: int) -> list[str]:
    """Two of three messages read, one in seven starred (the same on every location)."""
    return [*(["\\Flagged"] if k % 7 == 6 else []), *(["\\Seen"] if k % 3 else [])]


def _message(
    rng: random.Random,
    account_id: int,
    mid: int,
    k: int,
    newest: datetime,
    now: datetime,
    thread_id: int,
) -> dict[str, Any]:
    when = newest - timedelta(seconds=60 * k + rng.randrange(30))
    date: datetime | None = when
    internaldate: datetime | None = when + timedelta(seconds=5)
    if k % 1000 == 999:
        date = internaldate = None
    elif k % 200 == 199:
        date = None
    words = " ".join(rng.choice(_WORDS) for _ in range(8))
    sender = f"sender{rng.randrange(2000)}@client{rng.randrange(300)}.example"
    subject = f"{words.split()[0].title()} {words.split()[1]} #{k}"
    # Rarer words than the shared vocabulary, for search: a customer name (each in 1 of
    # 10,000 messages) and an order reference (1 of 50,000); not drawn from ``rng``, so the
    # rest of the fill is what it was.
    body = " ".join(_sentences(rng, 6)) + f" Customer {customer_name(k)}, order ref{k % 50_000}."
    return {
        "id": mid,
        "account_id": account_id,
        "thread_id": thread_id,
        "dedupe_key": f"syn:{account_id}:{mid}",
        "message_id_header": f"syn{mid}.{account_id}@example.test",
        "in_reply_to": None,
        "reference_ids": [],
        "subject": subject,
        "normalized_subject": subject.lower(),
        "from_name": f"Sender {k % 2000}",
        "from_email": sender,
        "sender": [],
        "reply_to": [],
        "to_addrs": [{"name": "Owner", "email": "owner@example.test"}],
        "cc_addrs": [],
        "bcc_addrs": [],
        "participants": [sender, "owner@example.test"],
        "date": date,
        "internaldate": internaldate,
        "snippet": body[:160],
        "text_body": body,
        "html_body": None,
        "flags": _flags(k),
        "state": "active",
        "direction": "outbound" if k % 5 == 4 else "inbound",
        "size": len(body) + 600,
        "raw_blob_key": None,
        "truncated": False,
        "gm_msgid": None,
        "gm_thrid": None,
        "defects": [],
        "created_at": now,
        "updated_at": now,
        "sort_at": list_sort_at(date, internaldate, now),
    }


_SYLLABLES = ("ka", "lo", "mi", "ru", "sa", "te", "vo", "zu", "ne", "pi")


def customer_name(k: int) -> str:
    """The customer named in synthetic message ``k``'s body: one of 10,000 made-up words."""
    n = (k * 7919) % 10_000
    return "".join(_SYLLABLES[(n // 10**i) % 10] for i in range(4)).capitalize()


def _sentences(rng: random.Random, n: int) -> Iterator[str]:
    for _ in range(n):
        yield " ".join(rng.choice(_WORDS) for _ in range(rng.randrange(6, 14))).capitalize() + "."


def _copy(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL's COPY: ten times the rate of an executemany for a bulk fill."""
    columns = list(rows[0])
    json_columns = {c.name for c in table.columns if isinstance(c.type, JSON)}
    dbapi: Any = conn.connection.dbapi_connection  # psycopg's, for its COPY support
    with dbapi.cursor() as cur:
        names = ", ".join(columns)
        with cur.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(
                    [json.dumps(row[c]) if c in json_columns else row[c] for c in columns]
                )


def _advance_sequences(engine: Engine) -> None:
    """Explicit ids leave PostgreSQL's sequences behind: move them past the rows."""
    if engine.dialect.name != "postgresql":
        return
    with engine.begin() as conn:
        for table in ("messages", "message_locations", "threads", "attachments"):
            conn.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT coalesce(max(id), 1) FROM {table}))"
                )
            )


def skip_background_indexing(engine: Engine) -> None:
    """Mark every stored message as searched-indexed and linker-indexed, for benchmarks that
    time something else on a store filled here (a deployment whose background work has caught
    up): otherwise the app's indexer would spend the run indexing the whole fill. Searches and
    timelines of such a store find nothing."""
    with engine.begin() as conn:
        newest = conn.scalar(select(func.max(text("id"))).select_from(text("messages"))) or 0
        conn.execute(
            text("UPDATE search_index_state SET last_indexed = :n, settled = :n"), {"n": newest}
        )
