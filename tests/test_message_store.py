"""The message store (SQLite and PostgreSQL) and the blob store, without an IMAP server."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from correspond.errors import NotFound, StoreError
from correspond.mail.dedupe import KeyFacts, distinct_key, unfetched_body_key
from correspond.store.blobs import BlobStore, blob_key
from correspond.store.engine import create_store_engine, migrate
from correspond.store.message_tables import MessageRow, MessageSubjectKeyRow, ThreadRow
from correspond.store.messages import (
    AddressData,
    AttachmentData,
    FolderCheckpointUpdate,
    IncomingMessage,
    MessageData,
    MessageStore,
    ThreadCandidate,
    ThreadChoice,
)
from correspond.store.tables import AccountRow, FolderRow
from correspond.sync.engine import default_thread_chooser
from correspond.testing.postgres import PostgresServer, temporary_database
from correspond.testing.store import migrated_engine

# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_engine(pg_server: PostgresServer) -> Iterator[Engine]:
    """One migrated PostgreSQL database for the module; tests stay apart by account.

    The server comes from the shared ``pg_server`` fixture: CORRESPOND_TEST_POSTGRES_URL or a
    private cluster, failing (never skipping) when neither can be had.
    """
    with (
        temporary_database(pg_server, prefix="correspond_msgs", migrated=True) as url,
        migrated_engine(url) as eng,
    ):
        yield eng


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated store (every migration, 0002 included) on each backend."""
    if request.param == "sqlite":
        with migrated_engine(f"sqlite:///{tmp_path / 'store.db'}") as eng:
            yield eng
    else:
        yield request.getfixturevalue("pg_engine")


def make_account(engine: Engine) -> int:
    name = f"acct-{secrets.token_hex(4)}"
    with Session(engine) as s, s.begin():
        acct = AccountRow(
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
        s.add(acct)
        s.flush()
        return acct.id


def make_folder(engine: Engine, account_id: int, name: bytes, role: str | None = None) -> int:
    with Session(engine) as s, s.begin():
        folder = FolderRow(
            account_id=account_id,
            remote_name_raw=name,
            name=name.decode(),
            role=role,
            selected=True,
        )
        s.add(folder)
        s.flush()
        return folder.id


def first_related_chooser(
    data: MessageData, related: Sequence[ThreadCandidate], same: Sequence[ThreadCandidate]
) -> ThreadChoice:
    """A plain chooser for these tests: join the related messages' threads (merging them)."""
    threads = sorted({c.thread_id for c in related if c.thread_id is not None})
    if not threads:
        return ThreadChoice(None)
    return ThreadChoice(threads[0], tuple(threads[1:]))


def msg(key: str, **kw: object) -> MessageData:
    base: dict[str, object] = {
        "dedupe_key": key,
        "message_id": f"<{key}@example.test>",
        "subject": f"subject {key}",
        "normalized_subject": f"subject {key}",
        "from_": AddressData("Ann", "Ann@Example.test"),
        "to": (AddressData(None, "bob@example.test"),),
        "date": datetime(2026, 11, 1, 12, 0, tzinfo=UTC),
        "snippet": "hello",
        "text": "hello there",
    }
    base.update(kw)
    return MessageData(**base)  # type: ignore[arg-type]


@pytest.fixture
def store(engine: Engine) -> MessageStore:
    return MessageStore(engine)


# --- ingest ------------------------------------------------------------------------------------


def test_postgres_statistics_follow_a_growing_account(store: MessageStore) -> None:
    # The ingest's lookups are planned from PostgreSQL's statistics; during a first backfill
    # autovacuum is too late for them, so the store ANALYZEs as an account's new messages
    # reach marks (1,000 by default; 3 here, then each quarter more, at least 3).
    if store.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only")
    from sqlalchemy import text

    from correspond.store.messages import growth_statistics

    growth = growth_statistics(store.engine)
    assert growth is not None and growth is growth_statistics(store.engine)  # one per engine
    growth.first = 3  # the engine is the module's: put back below

    def analyzed() -> int:
        with store.engine.connect() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT analyze_count FROM pg_stat_user_tables "
                        "WHERE relname = 'message_refs'"
                    )
                ).scalar_one()
            )

    acct = make_account(store.engine)
    inbox = make_folder(store.engine, acct, b"INBOX", "inbox")
    before = analyzed()
    for n in range(4):
        item = IncomingMessage(uid=n + 1, flags=frozenset(), data=msg(f"g{acct}-{n}"))
        store.ingest_batch(
            acct, inbox, [item], FolderCheckpointUpdate(), chooser=first_related_chooser
        )
    # Marks at 3 and 6 created: one ANALYZE after the third message, none after the fourth.
    # (pg_stat is updated by the backend asynchronously: poll for a moment.)
    import time

    deadline = time.monotonic() + 5
    while analyzed() == before and time.monotonic() < deadline:
        time.sleep(0.05)
    growth.first = 1000
    assert analyzed() == before + 1
    assert growth_statistics(create_store_engine("sqlite://")) is None


def test_ingest_stores_messages_locations_and_checkpoint(store: MessageStore) -> None:
    acct = make_account(store.engine)
    inbox = make_folder(store.engine, acct, b"INBOX", "inbox")
    store.reset_folder(inbox, uidvalidity=99, uidnext=10, highestmodseq=5, exists_count=2)
    items = [
        IncomingMessage(
            uid=9,
            flags=frozenset({"\\Seen"}),
            modseq=4,
            data=msg(
                "a",
                attachments=(
                    AttachmentData("../../etc/passwd", "text/plain", 12, blob_key="0" * 64),
                    AttachmentData("big.iso", "application/octet-stream", 10**9, section="2"),
                ),
                defects=("missing boundary",),
            ),
        ),
        IncomingMessage(uid=7, flags=frozenset(), data=msg("b")),
    ]
    result = store.ingest_batch(
        acct,
        inbox,
        items,
        FolderCheckpointUpdate(backfill_low_uid=7, backfill_done_increment=2, backfill_total=2),
        chooser=first_related_chooser,
    )
    assert len(result.created) == 2
    assert result.linked == result.already_present == []
    cp = store.folder_checkpoint(inbox)
    assert (cp.uidvalidity, cp.uidnext, cp.backfill_low_uid, cp.backfill_done) == (99, 10, 7, False)
    assert store.location_flags(inbox) == {9: frozenset({"\\Seen"}), 7: frozenset()}
    detail = store.get_message(result.created[0])
    assert detail.summary.from_email == "ann@example.test"
    assert detail.summary.flags == ("\\Seen",)
    assert detail.locations == ((inbox, 9),)
    assert detail.defects == ("missing boundary",)
    assert [a.filename for a in detail.attachments] == ["../../etc/passwd", "big.iso"]
    assert detail.attachments[1].blob_key is None
    assert detail.attachments[1].section == "2"
    assert store.count_messages(acct) == 2
    with Session(store.engine) as s:
        folder = s.get(FolderRow, inbox)
        assert folder is not None
        assert folder.backfill_done_count == 2


def test_same_message_in_two_folders_is_one_message(store: MessageStore) -> None:
    acct = make_account(store.engine)
    inbox = make_folder(store.engine, acct, b"INBOX", "inbox")
    archive = make_folder(store.engine, acct, b"Archive", "archive")
    upd = FolderCheckpointUpdate()
    r1 = store.ingest_batch(
        acct, inbox, [IncomingMessage(3, frozenset(), msg("x"))], upd, chooser=first_related_chooser
    )
    r2 = store.ingest_batch(
        acct,
        archive,
        [IncomingMessage(40, frozenset({"\\Seen"}), msg("x"))],
        upd,
        chooser=first_related_chooser,
    )
    assert len(r1.created) == 1
    assert r2.created == []
    assert r2.linked == [40]
    assert store.count_messages(acct) == 1
    assert store.get_message(r1.created[0]).locations == ((inbox, 3), (archive, 40))


def test_reingesting_a_batch_creates_nothing(store: MessageStore) -> None:
    acct = make_account(store.engine)
    inbox = make_folder(store.engine, acct, b"INBOX")
    batch = [IncomingMessage(u, frozenset(), msg(f"m{u}")) for u in (1, 2, 3)]
    store.ingest_batch(acct, inbox, batch, FolderCheckpointUpdate(), chooser=first_related_chooser)
    again = store.ingest_batch(
        acct, inbox, batch, FolderCheckpointUpdate(), chooser=first_related_chooser
    )
    assert again.created == again.linked == []
    assert sorted(again.already_present) == [1, 2, 3]
    assert store.count_messages(acct) == 3
    assert store.count_locations(inbox) == 3


def test_duplicate_within_one_batch(store: MessageStore) -> None:
    """The same message twice in one folder (two UIDs): one message, two locations."""
    acct = make_account(store.engine)
    inbox = make_folder(store.engine, acct, b"INBOX")
    res = store.ingest_batch(
        acct,
        inbox,
        [IncomingMessage(1, frozenset(), msg("d")), IncomingMessage(2, frozenset(), msg("d"))],
        FolderCheckpointUpdate(),
        chooser=first_related_chooser,
    )
    assert len(res.created) == 1
    assert res.linked == [2]
    assert store.folder_contents(inbox) == {1: "d", 2: "d"}


def test_failure_mid_batch_stores_nothing_and_keeps_cursor(store: MessageStore) -> None:
    acct = make_account(store.engine)
    inbox = make_folder(store.engine, acct, b"INBOX")
    store.update_checkpoint(inbox, FolderCheckpointUpdate(uidvalidity=5, backfill_low_uid=100))
    calls = 0

    def exploding(data: MessageData, r: object, s: object) -> ThreadChoice:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("crash in the middle of the batch")
        return ThreadChoice(None)

    batch = [IncomingMessage(u, frozenset(), msg(f"m{u}")) for u in (99, 98, 97, 96)]
    with pytest.raises(RuntimeError):
        store.ingest_batch(
            acct, inbox, batch, FolderCheckpointUpdate(backfill_low_uid=96), chooser=exploding
        )
    assert store.count_messages(acct) == 0
    assert store.count_locations(inbox) == 0
    assert store.count_threads(acct) == 0
    assert store.folder_checkpoint(inbox).backfill_low_uid == 100


def test_a_reused_message_id_is_another_message(store: MessageStore) -> None:
    acct = make_account(store.engine)
    inbox = make_folder(store.engine, acct, b"INBOX")
    day = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)

    def ingest(*items: tuple[int, MessageData]) -> None:
        store.ingest_batch(
            acct,
            inbox,
            [IncomingMessage(u, frozenset(), d) for u, d in items],
            FolderCheckpointUpdate(),
            chooser=first_related_chooser,
        )

    real = msg("mid:x@example.test", text="the real one")
    ingest((1, real))
    spoof = msg("mid:x@example.test", from_=AddressData("Ann", "mallory@evil.test"), text="spoof")
    late = msg("mid:x@example.test", date=day + timedelta(days=3), text="reused by a mailer")
    copy = msg("mid:x@example.test", date=day + timedelta(hours=6), text="list copy + footer")
    # One stored already; in one batch: a spoof, a later reuse, a copy, and the spoof again.
    ingest((2, spoof), (3, late), (4, copy), (5, spoof))
    contents = store.folder_contents(inbox)
    assert contents[1] == contents[4] == "mid:x@example.test"
    assert (
        contents[2]
        == contents[5]
        == distinct_key("mid:x@example.test", KeyFacts("mallory@evil.test", day))
    )
    assert contents[3] == distinct_key(
        "mid:x@example.test", KeyFacts("ann@example.test", day + timedelta(days=3))
    )
    assert store.count_messages(acct) == 3
    texts = {store.get_message(m.id).text for m in store.list_messages(acct)}
    assert texts == {"the real one", "spoof", "reused by a mailer"}
    # The reuse found in a later batch links to its own message, not the first.
    ingest((6, replace(spoof, text="spoof, copied")))
    assert store.folder_contents(inbox)[6] == contents[2]
    assert store.count_messages(acct) == 3


def test_a_value_the_database_refuses_costs_only_its_message(store: MessageStore) -> None:
    # A Gmail id is unsigned 64-bit; BIGINT is signed. The driver (SQLite) or the server
    # (PostgreSQL) refuses the row; the batch is stored, that message as a minimal row.
    acct = make_account(store.engine)
    inbox = make_folder(store.engine, acct, b"INBOX")
    batch = [IncomingMessage(u, frozenset(), msg(f"ok{u}")) for u in (1, 2, 4)]
    batch.insert(2, IncomingMessage(3, frozenset(), msg("big", gm_msgid=2**63 + 5)))
    res = store.ingest_batch(
        acct,
        inbox,
        batch,
        FolderCheckpointUpdate(backfill_low_uid=1),
        chooser=first_related_chooser,
    )
    assert len(res.created) == 4
    assert store.folder_contents(inbox) == {1: "ok1", 2: "ok2", 3: "big", 4: "ok4"}
    assert store.folder_checkpoint(inbox).backfill_low_uid == 1
    by_key = {
        store.get_message(m.id).dedupe_key: store.get_message(m.id)
        for m in store.list_messages(acct)
    }
    assert by_key["ok2"].text == "hello there" and by_key["ok2"].defects == ()
    bad = by_key["big"]
    assert bad.text is None and bad.truncated and bad.summary.subject == "subject big"
    (why,) = bad.defects
    assert why.startswith("stored without its content: the database refused it (")


def test_an_unavailable_database_is_not_a_refused_message(store: MessageStore) -> None:
    # The folder is gone (a foreign key refuses every row, minimal and bare ones too): that
    # is no message's fault, so the batch fails as before and nothing is stored.
    acct = make_account(store.engine)
    with pytest.raises(StoreError):
        store.ingest_batch(
            acct,
            987654,
            [IncomingMessage(1, frozenset(), msg("a")), IncomingMessage(2, frozenset(), msg("b"))],
            FolderCheckpointUpdate(),
            chooser=first_related_chooser,
        )
    assert store.count_messages(acct) == 0


def test_unique_dedupe_key_is_enforced_by_the_database(store: MessageStore) -> None:
    acct = make_account(store.engine)
    with pytest.raises(IntegrityError), Session(store.engine) as s, s.begin():
        s.add(MessageRow(account_id=acct, dedupe_key="k"))
        s.add(MessageRow(account_id=acct, dedupe_key="k"))


def test_database_errors_become_store_errors(store: MessageStore) -> None:
    acct = make_account(store.engine)
    with pytest.raises(StoreError):
        # folder 12345 does not exist: the foreign key refuses the location
        store.ingest_batch(
            acct,
            12345,
            [IncomingMessage(1, frozenset(), msg("z"))],
            FolderCheckpointUpdate(),
            chooser=first_related_chooser,
        )
    with pytest.raises(NotFound):
        store.folder_checkpoint(12345)


# --- threading queries -------------------------------------------------------------------------


def test_reply_before_parent_joins_one_thread(store: MessageStore) -> None:
    """Backfill goes newest first: the reply is stored before its parent and must meet it."""
    acct = make_account(store.engine)
    inbox = make_folder(store.engine, acct, b"INBOX")
    seen: list[tuple[str, list[str | None], list[str | None]]] = []

    def recording(
        data: MessageData, related: Sequence[ThreadCandidate], same: Sequence[ThreadCandidate]
    ) -> ThreadChoice:
        seen.append(
            (data.dedupe_key, [c.message_id for c in related], [c.message_id for c in same])
        )
        return first_related_chooser(data, related, same)

    reply = msg(
        "reply",
        in_reply_to="<root@example.test>",
        references=("<root@example.test>",),
        normalized_subject="plan",
    )
    root = msg("root", normalized_subject="plan")
    store.ingest_batch(
        acct,
        inbox,
        [IncomingMessage(2, frozenset(), reply)],
        FolderCheckpointUpdate(),
        chooser=recording,
    )
    store.ingest_batch(
        acct,
        inbox,
        [IncomingMessage(1, frozenset(), root)],
        FolderCheckpointUpdate(),
        chooser=recording,
    )
    assert seen[0] == ("reply", [], [])
    # the parent finds its reply through message_refs, and the same subject
    assert seen[1] == ("root", ["<reply@example.test>"], ["<reply@example.test>"])
    summaries = store.list_messages(acct)
    assert len({m.thread_id for m in summaries}) == 1
    assert store.count_threads(acct) == 1
    with Session(store.engine) as s:
        thread = s.get(ThreadRow, summaries[0].thread_id)
        assert thread is not None
        assert thread.message_count == 2


def test_merge_threads_when_a_message_bridges_two(store: MessageStore) -> None:
    acct = make_account(store.engine)
    inbox = make_folder(store.engine, acct, b"INBOX")
    upd = FolderCheckpointUpdate()
    store.ingest_batch(
        acct,
        inbox,
        [IncomingMessage(1, frozenset(), msg("p1"))],
        upd,
        chooser=first_related_chooser,
    )
    store.ingest_batch(
        acct,
        inbox,
        [IncomingMessage(2, frozenset(), msg("p2"))],
        upd,
        chooser=first_related_chooser,
    )
    assert store.count_threads(acct) == 2
    bridge = msg("b", references=("<p1@example.test>", "<p2@example.test>"))
    store.ingest_batch(
        acct, inbox, [IncomingMessage(3, frozenset(), bridge)], upd, chooser=first_related_chooser
    )
    assert store.count_threads(acct) == 1
    assert len({m.thread_id for m in store.list_messages(acct)}) == 1


def test_threads_created_and_merged_inside_one_batch(store: MessageStore) -> None:
    """New threads of a batch are inserted together at its end: merges among them, and with a
    stored thread, still leave one thread with exact counts, the stored one surviving."""
    acct = make_account(store.engine)
    inbox = make_folder(store.engine, acct, b"INBOX")
    upd = FolderCheckpointUpdate()
    store.ingest_batch(
        acct,
        inbox,
        [IncomingMessage(1, frozenset(), msg("s1"))],
        upd,
        chooser=first_related_chooser,
    )
    (stored,) = {m.thread_id for m in store.list_messages(acct)}
    batch = [
        msg("n1", gm_thrid=41),
        msg("n2", gm_thrid=42),
        msg("b1", references=("<n1@example.test>", "<n2@example.test>")),
        msg("b2", references=("<s1@example.test>", "<b1@example.test>")),
        msg("alone"),
    ]
    store.ingest_batch(
        acct,
        inbox,
        [IncomingMessage(10 + n, frozenset(), d) for n, d in enumerate(batch)],
        upd,
        chooser=first_related_chooser,
    )
    with Session(store.engine) as s:
        by_key = dict(
            s.execute(
                select(MessageRow.dedupe_key, MessageRow.thread_id).where(
                    MessageRow.account_id == acct
                )
            ).all()
        )
    assert by_key["n1"] == by_key["n2"] == by_key["b1"] == by_key["b2"] == by_key["s1"] == stored
    assert by_key["alone"] != stored
    assert store.count_threads(acct) == 2
    with Session(store.engine) as s:
        joined = s.get(ThreadRow, stored)
        assert joined is not None
        assert joined.message_count == 5
        assert joined.gm_thrid == 41  # carried over from the stand-in merged into it
        other = s.get(ThreadRow, by_key["alone"])
        assert other is not None and other.message_count == 1


def test_gmail_thread_id_wins(store: MessageStore) -> None:
    acct = make_account(store.engine)
    inbox = make_folder(store.engine, acct, b"INBOX")
    upd = FolderCheckpointUpdate()

    def never(*_a: object) -> ThreadChoice:
        return ThreadChoice(None)

    store.ingest_batch(
        acct, inbox, [IncomingMessage(1, frozenset(), msg("g1", gm_thrid=77))], upd, chooser=never
    )
    store.ingest_batch(
        acct, inbox, [IncomingMessage(2, frozenset(), msg("g2", gm_thrid=77))], upd, chooser=never
    )
    assert store.count_threads(acct) == 1


# --- UIDVALIDITY and live changes ---------------------------------------------------------------


def test_uidvalidity_reset_relinks_without_duplicates(store: MessageStore) -> None:
    acct = make_account(store.engine)
    inbox = make_folder(store.engine, acct, b"INBOX")
    store.reset_folder(inbox, uidvalidity=1, uidnext=3, highestmodseq=None, exists_count=2)
    batch = [IncomingMessage(u, frozenset(), msg(f"m{u}")) for u in (1, 2)]
    store.ingest_batch(
        acct,
        inbox,
        batch,
        FolderCheckpointUpdate(backfill_done=True),
        chooser=first_related_chooser,
    )
    dropped = store.reset_folder(
        inbox, uidvalidity=2, uidnext=11, highestmodseq=None, exists_count=2
    )
    assert dropped == 2
    cp = store.folder_checkpoint(inbox)
    assert (cp.uidvalidity, cp.backfill_done, cp.backfill_low_uid) == (2, False, None)
    assert store.count_locations(inbox) == 0
    assert store.count_messages(acct) == 2
    # the same messages under new UIDs
    renumbered = [IncomingMessage(u + 8, frozenset(), msg(f"m{u}")) for u in (1, 2)]
    res = store.ingest_batch(
        acct, inbox, renumbered, FolderCheckpointUpdate(), chooser=first_related_chooser
    )
    assert res.created == []
    assert sorted(res.linked) == [9, 10]
    assert store.folder_contents(inbox) == {9: "m1", 10: "m2"}
    assert store.count_messages(acct) == 2


def test_apply_remote_changes(store: MessageStore) -> None:
    acct = make_account(store.engine)
    inbox = make_folder(store.engine, acct, b"INBOX")
    batch = [IncomingMessage(u, frozenset(), msg(f"m{u}"), modseq=1) for u in (1, 2, 3)]
    store.ingest_batch(acct, inbox, batch, FolderCheckpointUpdate(), chooser=first_related_chooser)
    updated, removed = store.apply_remote_changes(
        inbox,
        flag_updates={1: frozenset({"\\Seen", "\\Flagged"}), 42: frozenset({"\\Seen"})},
        removed_uids=[3, 77],
        modseqs={1: 9},
        checkpoint=FolderCheckpointUpdate(highestmodseq=9),
    )
    assert (updated, removed) == (1, 1)
    assert store.location_flags(inbox) == {1: frozenset({"\\Seen", "\\Flagged"}), 2: frozenset()}
    assert store.folder_checkpoint(inbox).highestmodseq == 9
    # the message whose location vanished is kept (toggle rules decide its fate)
    assert store.count_messages(acct) == 3


def test_list_messages_by_folder_and_order(store: MessageStore) -> None:
    acct = make_account(store.engine)
    inbox = make_folder(store.engine, acct, b"INBOX")
    sent = make_folder(store.engine, acct, b"Sent")
    base = datetime(2026, 10, 1, tzinfo=UTC)
    store.ingest_batch(
        acct,
        inbox,
        [
            IncomingMessage(u, frozenset(), msg(f"i{u}", date=base + timedelta(days=u)))
            for u in (1, 2, 3)
        ],
        FolderCheckpointUpdate(),
        chooser=first_related_chooser,
    )
    store.ingest_batch(
        acct,
        sent,
        [IncomingMessage(1, frozenset(), msg("s1", date=base))],
        FolderCheckpointUpdate(),
        chooser=first_related_chooser,
    )
    assert [m.subject for m in store.list_messages(acct, folder_id=inbox)] == [
        "subject i3",
        "subject i2",
        "subject i1",
    ]
    assert [m.subject for m in store.list_messages(acct, limit=2, offset=2)] == [
        "subject i1",
        "subject s1",
    ]
    assert set(store.stored_key_facts(acct, ["i1", "nope", "s1"])) == {"i1", "s1"}
    with pytest.raises(NotFound):
        store.get_message(10**9)


# --- blobs -------------------------------------------------------------------------------------


def test_blob_round_trip_compressed_and_fanned_out(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    data = b"Subject: hi\r\n\r\n" + b"hello world\r\n" * 1000
    key = blobs.put(data)
    assert key == blob_key(data)
    path = blobs.path_for(key)
    assert path.parent.name == key[0:2] and path.parent.parent == tmp_path / "blobs"
    assert path.stat().st_size < len(data) // 10  # compressed on disk
    assert blobs.get(key) == data
    assert blobs.put(data) == key  # idempotent
    assert [p.name for p in path.parent.iterdir()] == [key]  # no temp files left behind


def test_blob_written_under_the_two_level_layout_is_still_found(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    data = b"Subject: old\r\n\r\n" + b"written by an earlier version\r\n" * 50
    key = blobs.put(data)
    legacy = blobs.root / key[0:2] / key[2:4] / key
    legacy.parent.mkdir()
    blobs.path_for(key).rename(legacy)
    assert blobs.exists(key)
    assert blobs.get(key) == data
    assert blobs.delete(key)
    assert not legacy.exists() and not blobs.exists(key)


def test_blob_small_and_incompressible_kept_raw(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    random_bytes = os.urandom(4096)
    for data in (b"", b"tiny", random_bytes):
        key = blobs.put(data)
        assert blobs.get(key) == data
    assert blobs.path_for(blob_key(random_bytes)).stat().st_size == len(random_bytes) + 4


@pytest.mark.parametrize(
    "bad", ["../../etc/passwd", "A" * 64, "0" * 63, "0" * 65, "invoice.pdf", "", "0" * 62 + "/x"]
)
def test_blob_keys_are_validated(tmp_path: Path, bad: str) -> None:
    blobs = BlobStore(tmp_path)
    with pytest.raises(ValueError):
        blobs.path_for(bad)
    with pytest.raises(ValueError):
        blobs.get(bad)


def test_blob_corruption_and_absence_are_reported(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    key = blobs.put(b"x" * 2000)
    with pytest.raises(NotFound):
        blobs.get(blob_key(b"other"))
    path = blobs.path_for(key)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(StoreError):
        blobs.get(key)
    path.write_bytes(b"CBr1" + b"y" * 2000)
    with pytest.raises(StoreError, match="does not match"):
        blobs.get(key)
    assert blobs.delete(key) is True
    assert blobs.delete(key) is False
    assert not blobs.exists(key)


# --- migration 0002 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_migration_0002_matches_tables_and_downgrades(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with _fresh_database(backend, request, tmp_path) as url:
        _check_migration_0002(url)


def _fresh_database(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> contextlib.AbstractContextManager[str]:
    """An empty database on ``backend`` for a migration test (dropped after, on PostgreSQL)."""
    if backend == "postgresql":
        return temporary_database(request.getfixturevalue("pg_server"), prefix="correspond_mig")
    return contextlib.nullcontext(f"sqlite:///{tmp_path / 'migrations.db'}")


def _downgrade(eng: Engine, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    from correspond.store.engine import MIGRATIONS_DIR

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with eng.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def _check_migration_0002(url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import inspect

    from correspond.store.engine import current_revision
    from correspond.store.tables import Base

    eng = create_store_engine(url)
    try:
        migrate(eng)
        with eng.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = [d for d in compare_metadata(ctx, Base.metadata) if _ours(d)]
        assert diff == []
        _downgrade(eng, "0001")
        names = set(inspect(eng).get_table_names())
        assert not names & {
            "messages",
            "message_locations",
            "threads",
            "attachments",
            "message_subject_keys",
        }
        assert current_revision(eng) == "0001"
        migrate(eng)
        assert {"messages", "message_locations", "message_refs", "threads", "attachments"} <= set(
            inspect(eng).get_table_names()
        )
    finally:
        eng.dispose()


def _ours(diff: object) -> bool:
    """Only differences touching the message tables (migrations 0002 and 0003)."""
    text_ = repr(diff)
    return any(
        name in text_
        for name in (
            "'messages'",
            "message_locations",
            "message_refs",
            "message_subject_keys",
            "'threads'",
            "attachments",
        )
    )


# --- same-subject thread candidates -----------------------------------------------------------

SUBJECT = "quarterly numbers"
# The store's documented bounds (messages.py): 50 candidates within 31 days either side.
LIMIT = 50
WINDOW = timedelta(days=31)


def _account_and_folder(engine: Engine) -> tuple[int, int]:
    account_id = make_account(engine)
    return account_id, make_folder(engine, account_id, b"INBOX", "inbox")


OWNER = "bob@example.test"


def _msg(key: str, date: datetime | None, sender: str = "ann@example.test") -> MessageData:
    return MessageData(
        dedupe_key=key,
        message_id=f"<{key}@example.test>",
        subject=SUBJECT,
        normalized_subject=SUBJECT,
        from_=AddressData("Sender", sender),
        to=(AddressData(None, OWNER),),
        date=date,
        own_addresses=frozenset({OWNER}),
    )


def _new_threads(
    data: MessageData, related: Sequence[ThreadCandidate], same: Sequence[ThreadCandidate]
) -> ThreadChoice:
    return ThreadChoice(None)


def _expected(engine: Engine, account_id: int, msg: MessageData) -> list[int]:
    """A full scan, filtered, ordered and capped the way the store documents it: dated rows
    with the same subject that share a participant other than the owner, within the window,
    nearest first."""
    with Session(engine) as s:
        rows = s.execute(
            select(MessageRow.id, MessageRow.date, MessageRow.participants).where(
                MessageRow.account_id == account_id, MessageRow.normalized_subject == SUBJECT
            )
        ).all()
    when = msg.date
    if when is None:
        return []
    mine = set(msg.counterparts)
    keep = [
        (abs(date - when), mid)
        for mid, date, people in rows
        if date is not None and abs(date - when) <= WINDOW and mine & (set(people) - {OWNER})
    ]
    keep.sort()
    return [mid for _gap, mid in keep[:LIMIT]]


def test_same_subject_candidates_share_a_counterpart_and_are_the_nearest_in_the_window(
    engine: Engine,
) -> None:
    store = MessageStore(engine)
    account_id, folder_id = _account_and_folder(engine)
    recent = datetime(2026, 11, 20, tzinfo=UTC)
    old = datetime(2026, 10, 10, tzinfo=UTC)
    stored = [_msg(f"recent-{k}", recent + timedelta(hours=k)) for k in range(60)]
    stored += [_msg(f"old-{k}", old + timedelta(hours=k)) for k in range(10)]
    stored += [_msg(f"undated-{k}", None) for k in range(2)]
    # Same subject, same days, but from a stranger: they share only the owner with Ann.
    stored += [
        _msg(f"stranger-{k}", recent + timedelta(hours=k), sender="carl@other.test")
        for k in range(30)
    ]
    items = [IncomingMessage(uid=n + 1, flags=frozenset(), data=d) for n, d in enumerate(stored)]
    store.ingest_batch(account_id, folder_id, items, FolderCheckpointUpdate(), chooser=_new_threads)

    seen: dict[str, list[int]] = {}

    def recording(
        data: MessageData, related: Sequence[ThreadCandidate], same: Sequence[ThreadCandidate]
    ) -> ThreadChoice:
        seen[data.dedupe_key] = [c.id for c in same]
        return ThreadChoice(None)

    # One batch holding a message near the recent ones and one 49 days older: each gets the
    # rows nearest to its own date, not to the batch's.
    late = _msg("late", recent + timedelta(days=3))  # after the newest stored one
    early = _msg("early", datetime(2026, 10, 5, tzinfo=UTC))
    nodate = _msg("nodate", None)
    # What a full scan of the stored rows gives, taken before the batch stores its own.
    expected = {m.dedupe_key: _expected(engine, account_id, m) for m in (late, early, nodate)}
    batch = [
        IncomingMessage(uid=1000 + n, flags=frozenset(), data=m)
        for n, m in enumerate((late, early, nodate))
    ]
    store.ingest_batch(account_id, folder_id, batch, FolderCheckpointUpdate(), chooser=recording)

    assert seen["late"] == expected["late"]
    assert len(seen["late"]) == LIMIT
    assert seen["late"][0] == max(seen["late"])  # the newest stored row is the nearest
    # The ten old rows, nearest (newest) first: the recent rows are out of its window.
    assert len(expected["early"]) == 10
    assert seen["early"] == expected["early"]
    # Without a Date a message cannot join by subject: no candidates to look at.
    assert seen["nodate"] == []
    with Session(engine) as s:
        strangers = set(
            s.scalars(select(MessageRow.id).where(MessageRow.dedupe_key.like("stranger-%")))
        )
    assert len(strangers) == 30
    assert not strangers & {i for ids in seen.values() for i in ids}


def _subject_key_rows(engine: Engine, account_id: int) -> set[tuple[int, str, datetime]]:
    with Session(engine) as s:
        return {
            (int(m), k, d.replace(tzinfo=UTC) if d.tzinfo is None else d)
            for m, k, d in s.execute(
                select(
                    MessageSubjectKeyRow.message_id,
                    MessageSubjectKeyRow.key,
                    MessageSubjectKeyRow.date,
                ).where(MessageSubjectKeyRow.account_id == account_id)
            )
        }


def test_the_subject_guard_ignores_the_owner_and_follows_a_counterpart(engine: Engine) -> None:
    """The owner is in nearly every message of a mailbox: two customers writing "Quarterly
    review" to the owner are two conversations; the same customer's reply joins its own."""
    store = MessageStore(engine)
    account_id, folder_id = _account_and_folder(engine)
    base = datetime(2026, 11, 2, tzinfo=UTC)
    ann = _msg("ann-1", base, sender="ann@customer-a.test")
    carl = _msg("carl-1", base + timedelta(days=1), sender="carl@customer-b.test")
    reply = replace(
        _msg("ann-2", base + timedelta(days=3), sender="ann@customer-a.test"), is_reply=True
    )
    for uid, data in enumerate((ann, carl, reply), start=1):
        store.ingest_batch(
            account_id,
            folder_id,
            [IncomingMessage(uid=uid, flags=frozenset(), data=data)],
            FolderCheckpointUpdate(),
            chooser=default_thread_chooser,
        )
    with Session(engine) as s:
        thread = dict(s.execute(select(MessageRow.dedupe_key, MessageRow.thread_id)).all())
    assert thread["ann-1"] != thread["carl-1"]
    assert thread["ann-2"] == thread["ann-1"]
    # One key per counterpart (the owner gets none), each dated like its message.
    assert len(_subject_key_rows(engine, account_id)) == 3


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_migration_0003_files_existing_messages_under_their_subject_keys(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    with _fresh_database(backend, request, tmp_path) as url:
        eng = create_store_engine(url)
        try:
            migrate(eng)
            account_id, folder_id = _account_and_folder(eng)
            with Session(eng) as s:
                s.execute(update(AccountRow).where(AccountRow.id == account_id).values(email=OWNER))
                s.commit()
            batch = [
                _msg("a", datetime(2026, 11, 2, tzinfo=UTC), sender="ann@customer-a.test"),
                _msg("b", datetime(2026, 11, 3, tzinfo=UTC), sender="carl@customer-b.test"),
                _msg("c", None, sender="dana@customer-c.test"),  # no Date: no key
            ]
            MessageStore(eng).ingest_batch(
                account_id,
                folder_id,
                [IncomingMessage(uid=n, flags=frozenset(), data=d) for n, d in enumerate(batch)],
                FolderCheckpointUpdate(),
                chooser=_new_threads,
            )
            written = _subject_key_rows(eng, account_id)
            assert len(written) == 2
            _downgrade(eng, "0002")
            migrate(eng)
            assert _subject_key_rows(eng, account_id) == written
        finally:
            eng.dispose()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_migration_0007_gives_unfetched_mail_without_message_id_its_sized_key(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    header_key = "h:" + "ab" * 32
    with _fresh_database(backend, request, tmp_path) as url:
        eng = create_store_engine(url)
        try:
            migrate(eng)
            account_id, folder_id = _account_and_folder(eng)
            big = MessageData(dedupe_key="big", size=30_000_000, truncated=True)
            whole = MessageData(dedupe_key="whole", size=2_000, raw_blob_key="0" * 64)
            named = MessageData(dedupe_key="mid:a@x", size=30_000_000, truncated=True)
            MessageStore(eng).ingest_batch(
                account_id,
                folder_id,
                [IncomingMessage(n, frozenset(), d) for n, d in enumerate([big, whole, named])],
                FolderCheckpointUpdate(),
                chooser=_new_threads,
            )
            # As stored before revision 0007: the header block's hash alone.
            _downgrade(eng, "0003")
            with Session(eng) as s, s.begin():
                s.execute(
                    update(MessageRow)
                    .where(MessageRow.dedupe_key.in_(["big", "whole"]))
                    .values(dedupe_key=f"{header_key}-" + MessageRow.dedupe_key)
                )
            migrate(eng)
            keys = MessageStore(eng).folder_contents(folder_id)
            assert keys == {
                0: unfetched_body_key(f"{header_key}-big", 30_000_000),
                1: f"{header_key}-whole",  # its body is stored: its key is the whole message's
                2: "mid:a@x",
            }
        finally:
            eng.dispose()
