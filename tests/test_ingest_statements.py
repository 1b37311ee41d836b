"""The commit stage's SQL mechanics: few statements per batch, none re-parsed per row.

On PostgreSQL, ``INSERT ... RETURNING`` of a batch went through SQLAlchemy's "insertmanyvalues"
(one statement text with a placeholder per value, 6,600 for 200 messages), which psycopg
parses in Python on every call because it is too long for its cache: a third of the commit
stage's client time. Ids now come from the sequence and rows go as one executemany.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from correspond.errors import NotFound
from correspond.store import Store
from correspond.store.message_tables import MessageLocationRow, MessageRow, ThreadRow
from correspond.store.messages import (
    AddressData,
    FolderCheckpointUpdate,
    IncomingMessage,
    MessageData,
    MessageStore,
)
from correspond.store.tables import FolderRow
from correspond.sync.engine import default_thread_chooser
from correspond.testing.synthetic import make_account_with_folders

#: psycopg caches the parse of statements up to this length (psycopg._queries).
PSYCOPG_CACHED_LENGTH = 4096


def _items(first_uid: int, count: int) -> list[IncomingMessage]:
    base = datetime(2026, 4, 1, tzinfo=UTC)
    return [
        IncomingMessage(
            uid=uid,
            flags=frozenset({"\\Seen"}),
            data=MessageData(
                dedupe_key=f"mid:n{uid}@example.test",
                message_id=f"n{uid}@example.test",
                subject=f"note {uid}",
                normalized_subject=f"note {uid}",
                date=base + timedelta(minutes=uid),
                text="body " * 40,
            ),
        )
        for uid in range(first_uid, first_uid + count)
    ]


def _ingest(store: Store, account_id: int, folder_id: int, items: list[IncomingMessage]) -> Any:
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        result = MessageStore(store.engine).ingest_batch(
            account_id, folder_id, items, FolderCheckpointUpdate(), chooser=default_thread_chooser
        )
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    return result, statements


def test_batch_inserts_are_one_short_statement_each_and_ids_follow_the_batch(
    store: Store,
) -> None:
    account_id, folders = make_account_with_folders(store.engine, "mechanics")
    inbox = folders["inbox"]
    small, small_sql = _ingest(store, account_id, inbox, _items(1, 20))
    big, big_sql = _ingest(store, account_id, inbox, _items(1000, 300))
    if store.engine.dialect.name == "postgresql":
        # The same round trips whatever the batch size (an executemany is one pipeline)...
        inserts = [s for s in big_sql if s.lstrip().upper().startswith("INSERT")]
        assert len(big_sql) == len(small_sql), big_sql
        assert len(inserts) == len(
            [s for s in small_sql if s.lstrip().upper().startswith("INSERT")]
        )
        # ...and no insert whose text grows with the batch (psycopg would re-parse it).
        long = [s[:80] for s in inserts if len(s) > PSYCOPG_CACHED_LENGTH]
        assert long == []
    # Ids are handed out in batch order, and each row got its own message's id.
    assert big.created == sorted(big.created) and len(set(big.created)) == 300
    assert min(big.created) > max(small.created)
    with Session(store.engine) as s:
        keys = dict(
            s.execute(
                select(MessageRow.id, MessageRow.dedupe_key).where(MessageRow.id.in_(big.created))
            )
            .tuples()
            .all()
        )
        uids = dict(
            s.execute(
                select(MessageLocationRow.message_id, MessageLocationRow.uid).where(
                    MessageLocationRow.message_id.in_(big.created)
                )
            )
            .tuples()
            .all()
        )
        threads = s.scalars(select(ThreadRow.id)).all()
    for n, mid in enumerate(big.created):
        assert keys[mid] == f"mid:n{1000 + n}@example.test"
        assert uids[mid] == 1000 + n
    assert len(threads) == 320
    # Later inserts by the database's own default do not collide with the drawn ids.
    more, _ = _ingest(store, account_id, inbox, _items(5000, 3))
    assert min(more.created) > max(big.created)


def test_batch_lookups_read_the_same_whatever_the_batch_size(store: Store) -> None:
    """On PostgreSQL the lookups take their values as one array (``= ANY``), so a statement's
    text does not grow with the batch and psycopg parses and prepares it once; ``IN (...)``
    rendered a placeholder per value, a new text for psycopg to parse in Python every batch.
    The lookups still find what they look for: the same messages filed again only gain a
    location, and filed again in the same folder are already present."""
    account_id, folders = make_account_with_folders(store.engine, "lookups")
    inbox, sent = folders["inbox"], folders["sent"]
    _, small_sql = _ingest(store, account_id, inbox, _items(1, 20))
    _, big_sql = _ingest(store, account_id, inbox, _items(1000, 300))
    linked, linked_sql = _ingest(store, account_id, sent, _items(1000, 300))
    again, _ = _ingest(store, account_id, inbox, _items(1000, 300))
    if store.engine.dialect.name == "postgresql":
        assert sorted(set(big_sql)) == sorted(set(small_sql))
        assert {s for s in linked_sql if s.lstrip().upper().startswith("SELECT")} <= set(small_sql)
        assert [s[:80] for s in big_sql if len(s) > PSYCOPG_CACHED_LENGTH] == []
    assert linked.created == [] and sorted(linked.linked) == list(range(1000, 1300))
    assert again.created == [] and sorted(again.already_present) == list(range(1000, 1300))


def test_the_chooser_converts_each_stored_candidate_once() -> None:
    """A batch hands the same stored candidates to the chooser for message after message (a
    common subject: dozens each); each is converted for threading once, not once per message,
    and the decisions are those of fresh conversions."""
    from correspond.store.messages import ThreadCandidate
    from correspond.sync.engine import _known

    when = datetime(2026, 4, 1, tzinfo=UTC)
    stored = [
        ThreadCandidate(
            n, 100 + n, f"s{n}@x.test", (), "contract renewal", ("ann@customer.test",), when
        )
        for n in range(40)
    ]
    _known.cache_clear()
    choices = []
    for n in range(30):
        data = MessageData(
            dedupe_key=f"mid:m{n}@x.test",
            message_id=f"m{n}@x.test",
            subject="Contract renewal",
            normalized_subject="contract renewal",
            to=(AddressData(None, "ann@customer.test"),),
            date=when + timedelta(hours=n),
        )
        choices.append(default_thread_chooser(data, [], stored))
    info = _known.cache_info()
    assert info.misses == len(stored) and info.hits == 29 * len(stored)
    # The nearest in time, then the oldest thread: all at the same time, so thread 100.
    assert {c.thread_id for c in choices} == {100}


def test_the_checkpoint_is_one_update_in_the_batch(store: Store) -> None:
    """The folder's checkpoint is written by one UPDATE (which locks the row), not read with
    SELECT ... FOR UPDATE and written back: a round trip less in every batch."""
    account_id, folders = make_account_with_folders(store.engine, "checkpoint")
    inbox = folders["inbox"]
    messages = MessageStore(store.engine)
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        for first in (1, 101):
            messages.ingest_batch(
                account_id,
                inbox,
                _items(first, 100),
                FolderCheckpointUpdate(backfill_low_uid=first, backfill_done_increment=100),
                chooser=default_thread_chooser,
            )
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    on_folders = [s.split()[0].upper() for s in statements if "folders" in s.split("WHERE")[0]]
    assert on_folders == ["UPDATE", "UPDATE"], on_folders
    assert messages.folder_checkpoint(inbox).backfill_low_uid == 101
    with Session(store.engine) as s:
        assert s.scalar(select(FolderRow.backfill_done_count).where(FolderRow.id == inbox)) == 200
    with pytest.raises(NotFound):
        messages.update_checkpoint(987654, FolderCheckpointUpdate(backfill_done=True))


def test_postgresql_batch_reads_candidates_ids_and_thread_counts_in_one_statement_each(
    store: Store,
) -> None:
    """Every statement of the commit stage is a round trip, which on a loaded machine is a wait
    for two processes to be scheduled. On PostgreSQL the thread candidates (by Message-ID, by
    reference, by subject key) are one statement, the new threads' and messages' ids are drawn
    in one, and the touched threads are recounted by one UPDATE (no SELECT of the counts
    first). SQLite, in-process, keeps its separate statements."""
    account_id, folders = make_account_with_folders(store.engine, "round-trips")
    inbox = folders["inbox"]
    _ingest(store, account_id, inbox, _items(1, 20))
    replies = [
        IncomingMessage(
            uid=i.uid,
            flags=i.flags,
            data=MessageData(
                dedupe_key=f"mid:r{i.uid}@example.test",
                message_id=f"r{i.uid}@example.test",
                in_reply_to=f"n{i.uid - 100}@example.test",
                references=(f"n{i.uid - 100}@example.test",),
                subject=f"Re: note {i.uid - 100}",
                normalized_subject=f"note {i.uid - 100}",
                to=(AddressData(None, "ann@customer.test"),),
                date=i.data.date,
                text="reply",
            ),
        )
        for i in _items(101, 10)
    ] + _items(200, 5)
    assert all(r.data.subject_keys for r in replies[:10])  # so subject keys are looked up
    result, sql = _ingest(store, account_id, inbox, replies)
    assert len(result.created) == 15
    with Session(store.engine) as s:
        thread_of = dict(
            s.execute(select(MessageRow.message_id_header, MessageRow.thread_id)).tuples().all()
        )
        counts = dict(s.execute(select(ThreadRow.id, ThreadRow.message_count)).tuples().all())
    for n in range(1, 11):
        # Each reply found its parent's thread through the merged lookup, and the count moved.
        assert thread_of[f"r{100 + n}@example.test"] == thread_of[f"n{n}@example.test"]
        assert counts[thread_of[f"n{n}@example.test"]] == 2
    assert counts[thread_of["n200@example.test"]] == 1
    candidate_reads = [
        s
        for s in sql
        if s.lstrip().upper().startswith("SELECT messages.id, messages.thread_id".upper())
    ]
    id_draws = [s for s in sql if "nextval" in s]
    count_reads = [s for s in sql if s.lstrip().upper().startswith("SELECT") and "count(" in s]
    if store.engine.dialect.name == "postgresql":
        assert len(candidate_reads) == 1 and "message_refs" in candidate_reads[0]
        assert "message_subject_keys" in candidate_reads[0]
        assert len(id_draws) == 1 and "threads" in id_draws[0] and "messages" in id_draws[0]
        assert count_reads == []
    else:
        assert id_draws == [] and len(count_reads) == 1


def test_postgresql_batch_writes_go_in_one_pipeline(store: Store) -> None:
    """On PostgreSQL a batch's writes (threads, messages, references, subject keys, locations,
    thread counts, the checkpoint) are sent in psycopg's pipeline mode, their replies read
    together: one round trip for all of them, not one each. Its reads come before, outside
    the pipeline (a pipelined statement returns its rows only at the end)."""
    account_id, folders = make_account_with_folders(store.engine, "pipeline")
    inbox, sent = folders["inbox"], folders["sent"]
    modes: list[tuple[str, str]] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        verb = statement.lstrip().split()[0].upper()
        if store.engine.dialect.name == "postgresql":
            status = conn.connection.driver_connection.pgconn.pipeline_status
            modes.append((verb, "pipeline" if status else "plain"))
        else:
            modes.append((verb, "plain"))

    event.listen(store.engine, "before_cursor_execute", record)
    messages = MessageStore(store.engine)
    try:
        first = messages.ingest_batch(
            account_id,
            inbox,
            _items(1, 30),
            FolderCheckpointUpdate(backfill_low_uid=1, backfill_done_increment=30),
            chooser=default_thread_chooser,
        )
        # The same messages filed in Sent: locations and flag updates, no new rows.
        linked = messages.ingest_batch(
            account_id, sent, _items(1, 1), FolderCheckpointUpdate(), chooser=default_thread_chooser
        )
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    assert len(first.created) == 30 and linked.linked == [1]
    assert messages.folder_checkpoint(inbox).backfill_low_uid == 1
    assert MessageStore(store.engine).folder_contents(sent) == {1: "mid:n1@example.test"}
    writes = {mode for verb, mode in modes if verb in ("INSERT", "UPDATE")}
    reads = {mode for verb, mode in modes if verb == "SELECT"}
    assert reads == {"plain"}
    if store.engine.dialect.name == "postgresql":
        assert writes == {"pipeline"}, modes
    else:
        assert writes == {"plain"}
