"""Two-way, mailbox -> CRM, against the private Dovecot (SQLite and PostgreSQL): what the user
does in another mail client (move, expunge, Trash) changes the CRM copy's state under its
toggle, the message keeps its CRM identity, deleted messages are hidden but readable and
restorable (back to the folder they left), the echo of the CRM's own actions changes nothing,
and deleted messages are purged after the retention period with the blobs only they used.

The user's other mail client is the stdlib ``imaplib`` (a second connection).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from datetime import timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from correspond.errors import Conflict, NotFound
from correspond.store.crm import CrmStore
from correspond.store.crm_tables import TimelineLinkRow
from correspond.store.linker import LinkerStore, LinkPolicy
from correspond.store.message_queries import MessageQueries
from correspond.store.message_tables import AttachmentRow, MessageRow
from correspond.store.outbox import OutboxStore
from correspond.store.outbox_tables import OutboxRow
from correspond.store.purge import purge_all, purge_deleted
from correspond.store.tables import AccountRow, FolderRow, utcnow
from correspond.testing.dovecot import DovecotServer, ImapUser
from helpers import Who
from mirror_helpers import (
    BACKENDS,
    NOW,
    Env,
    append_many,
    imap_quote,
    make_env,
    pg_engine,  # noqa: F401  (a fixture, used through make_env)
)
from test_mirror_changes import remote_flags, uid_of

pytestmark = pytest.mark.dovecot

ADMIN = Who(1, is_admin=True)
SEEN = "\\Seen"
FLAGGED = "\\Flagged"
DAY = NOW - timedelta(days=1)


@pytest.fixture(params=BACKENDS)
def env(
    request: pytest.FixtureRequest, dovecot: DovecotServer, imap_user: ImapUser, tmp_path: Path
) -> Iterator[Env]:
    yield from make_env(request, dovecot, imap_user, tmp_path)


# -- the user's other client -------------------------------------------------------------------


@contextlib.contextmanager
def other_client(env: Env, mailbox: str) -> Iterator[object]:
    conn = env.server.imaplib_client(env.user)
    try:
        assert conn.select(imap_quote(mailbox))[0] == "OK"
        yield conn
    finally:
        conn.logout()


def user_moves(env: Env, source: str, n: str, target: str) -> None:
    uid = uid_of(env, source, f"m{n}@example.test")
    with other_client(env, source) as conn:
        assert conn.uid("MOVE", str(uid), imap_quote(target))[0] == "OK"  # type: ignore[attr-defined]


def user_expunges(env: Env, mailbox: str, n: str) -> None:
    uid = uid_of(env, mailbox, f"m{n}@example.test")
    with other_client(env, mailbox) as conn:
        assert conn.uid("STORE", str(uid), "+FLAGS", "(\\Deleted)")[0] == "OK"  # type: ignore[attr-defined]
        assert conn.uid("EXPUNGE", str(uid))[0] == "OK"  # type: ignore[attr-defined]


def in_mailbox(env: Env, mailbox: str, n: str) -> bool:
    return f"mid:m{n}@example.test" in env.remote(mailbox).values()


# -- the CRM side ------------------------------------------------------------------------------


def set_toggles(env: Env, **values: bool) -> None:
    with Session(env.messages.engine) as s, s.begin():
        s.execute(update(AccountRow).where(AccountRow.id == env.account.id).values(values))


def unselect(env: Env, name: str) -> None:
    with Session(env.messages.engine) as s, s.begin():
        s.execute(
            update(FolderRow)
            .where(FolderRow.account_id == env.account.id, FolderRow.name == name)
            .values(selected=False)
        )


def crm(env: Env, n: str) -> MessageRow:
    with Session(env.messages.engine) as s:
        row = s.scalars(
            select(MessageRow).where(
                MessageRow.account_id == env.account.id,
                MessageRow.message_id_header == f"m{n}@example.test",
            )
        ).one()
        s.expunge(row)
        return row


def message_count(env: Env) -> int:
    with Session(env.messages.engine) as s:
        return int(
            s.scalar(
                select(func.count())
                .select_from(MessageRow)
                .where(MessageRow.account_id == env.account.id)
            )
            or 0
        )


def outbox_rows(env: Env) -> list[tuple[str, str]]:
    with Session(env.messages.engine) as s:
        return [
            (r.kind, r.state)
            for r in s.scalars(
                select(OutboxRow)
                .where(OutboxRow.account_id == env.account.id)
                .order_by(OutboxRow.id)
            )
        ]


def alice(env: Env) -> int:
    """The contact of the sender of every test message (one per database: the PostgreSQL
    one is shared by the module's tests), with the timelines linked."""
    crm_store = CrmStore(env.messages.engine)
    try:
        contact_id = crm_store.create_contact(name="Alice", emails=["alice@example.test"]).id
    except Conflict:
        [found] = crm_store.list_contacts(q="alice@example.test").items
        contact_id = found.id
    LinkerStore(env.messages.engine, LinkPolicy()).run_until_idle()
    return contact_id


def listed(env: Env) -> set[int]:
    page = MessageQueries(env.messages.engine).list_messages(env.account.id, limit=100)
    return {m.id for m in page.items}


async def sync_inbox_first(env: Env) -> None:
    """What the live session does when IDLE on INBOX reports an expunge: sync INBOX alone and
    look for what left it, before any other folder is synced. A move to another synced folder
    then shows as a message with no location, found there but not linked yet."""
    syncer = env.syncer()
    account = env.store.get_account(env.account.name)
    client = await syncer.connect(account)
    try:
        await syncer.sync_folder(client, account, env.folder("INBOX"))
        await syncer.explain_gone(client, account, synced_now={env.folder("INBOX").id})
    finally:
        await client.logout()


async def apply_outbox(env: Env) -> None:
    syncer = env.syncer()
    account = env.store.get_account(env.account.name)
    client = await syncer.connect(account)
    try:
        await syncer.apply_outbox(client, account)
    finally:
        await client.logout()


# -- archive ------------------------------------------------------------------------------------


@pytest.mark.parametrize("toggle", [True, False], ids=["archive-on", "archive-off"])
async def test_leaving_inbox_archives_and_coming_back_reactivates(env: Env, toggle: bool) -> None:
    env.server.create_mailbox(env.user, "Projects")
    env.server.create_mailbox(env.user, "Elsewhere")
    append_many(env, "INBOX", [("a", DAY), ("b", DAY), ("c", DAY)])
    await env.sync()
    unselect(env, "Elsewhere")
    set_toggles(env, archive_in_crm_on_remote_archive=toggle)
    a, b = crm(env, "a"), crm(env, "b")
    # A contact for the sender: the messages are on its timeline.
    contact_id = alice(env)
    timeline = CrmStore(env.messages.engine).timeline("contact", contact_id, ADMIN)
    assert {a.id, b.id} <= {m.id for m in timeline.items}
    expected = "archived" if toggle else "active"

    # INBOX -> Archive (both synced), the expunge seen first (IDLE on INBOX): undecided until
    # the copy in Archive is linked, then archived, as the same CRM message.
    user_moves(env, "INBOX", "a", "Archive")
    await sync_inbox_first(env)
    assert crm(env, "a").state == "active"
    await env.sync()
    after = crm(env, "a")
    assert (after.id, after.thread_id, after.state) == (a.id, a.thread_id, expected)
    assert "mid:ma@example.test" in env.stored("Archive").values()
    # INBOX -> Projects (synced, no role) in one pass: archived too.
    user_moves(env, "INBOX", "b", "Projects")
    await env.sync()
    assert (crm(env, "b").id, crm(env, "b").state) == (b.id, expected)
    # INBOX -> a folder the account does not sync: found there by Message-ID, archived.
    user_moves(env, "INBOX", "c", "Elsewhere")
    await env.sync()
    assert crm(env, "c").state == expected
    assert crm(env, "c").gone_reason == "moved"
    # Still on the timeline; no new message; nothing queued for the mailbox.
    timeline = CrmStore(env.messages.engine).timeline("contact", contact_id, ADMIN)
    assert {a.id, b.id} <= {m.id for m in timeline.items}
    with Session(env.messages.engine) as s:
        links = s.scalar(
            select(func.count())
            .select_from(TimelineLinkRow)
            .where(TimelineLinkRow.message_id.in_([a.id, b.id]))
        )
    assert links and links >= 2
    assert message_count(env) == 3 and outbox_rows(env) == []
    # The mailbox side is what the user did, untouched by the CRM.
    assert in_mailbox(env, "Archive", "a") and not in_mailbox(env, "INBOX", "a")

    # Back to INBOX (from a synced folder, and from one not synced): active again.
    user_moves(env, "Archive", "a", "INBOX")
    user_moves(env, "Elsewhere", "c", "INBOX")
    await env.sync()
    assert crm(env, "a").state == "active" and crm(env, "a").id == a.id
    assert crm(env, "c").state == "active"
    # Into Junk: not an archive.
    user_moves(env, "INBOX", "a", "Junk")
    await env.sync()
    assert crm(env, "a").state == "active"


async def test_a_move_seen_while_live_archives(env: Env) -> None:
    """The live session: IDLE on INBOX reports the move, the INBOX sync looks for the message
    in the folders not synced and the CRM copy is archived within the session."""
    env.server.create_mailbox(env.user, "Elsewhere")
    append_many(env, "INBOX", [("a", DAY)])
    await env.sync()
    unselect(env, "Elsewhere")
    syncer = env.syncer()
    stop = asyncio.Event()
    synced: list[object] = []
    task = asyncio.create_task(
        syncer.run_account(env.account.name, stop=stop, poll_seconds=600, on_synced=synced.append)
    )
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while not synced and not task.done():
            assert loop.time() < deadline, "not live"
            await asyncio.sleep(0.05)
        await asyncio.to_thread(user_moves, env, "INBOX", "a", "Elsewhere")
        deadline = loop.time() + 10
        while (await asyncio.to_thread(crm, env, "a")).state != "archived":
            assert loop.time() < deadline, "not archived while live"
            assert not task.done()
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    assert task.result() is None
    assert outbox_rows(env) == []


# -- delete --------------------------------------------------------------------------------------


@pytest.mark.parametrize("toggle", [True, False], ids=["delete-on", "delete-off"])
async def test_expunged_or_trashed_is_deleted_hidden_and_restorable(env: Env, toggle: bool) -> None:
    env.server.create_mailbox(env.user, "Projects")
    append_many(env, "INBOX", [("a", DAY), ("b", DAY), ("c", DAY)])
    append_many(env, "Projects", [("c", DAY)])
    await env.sync()
    set_toggles(env, delete_in_crm_on_remote_delete=toggle)
    a, b, c = crm(env, "a"), crm(env, "b"), crm(env, "c")
    expected = "deleted" if toggle else "active"

    # Expunged from its only folder; moved to Trash (not synced by default).
    user_expunges(env, "INBOX", "a")
    user_moves(env, "INBOX", "b", "Trash")
    # In two folders, expunged from one: still in the other, so not deleted.
    user_expunges(env, "Projects", "c")
    await env.sync()
    assert crm(env, "a").state == expected and crm(env, "b").state == expected
    assert crm(env, "c").state == "active"
    if toggle:
        assert crm(env, "a").deleted_at is not None
        # Hidden from lists, the thread and the timeline; still read by id, with its state.
        assert listed(env) == {c.id}
        queries = MessageQueries(env.messages.engine)
        assert a.thread_id is not None
        assert a.id not in {m.id for m in queries.get_thread(a.thread_id).messages}
        assert queries.get_message(a.id).state == "deleted"
        contact_id = alice(env)
        timeline = CrmStore(env.messages.engine).timeline("contact", contact_id, ADMIN)
        on_timeline = {m.id for m in timeline.items}
        assert c.id in on_timeline and not {a.id, b.id} & on_timeline
    else:
        assert crm(env, "a").deleted_at is None
        assert listed(env) == {a.id, b.id, c.id}
    # The mailbox side is what the user did.
    assert in_mailbox(env, "Trash", "b") and not in_mailbox(env, "INBOX", "a")

    # Taken back out of Trash by the user: active again, the same message.
    user_moves(env, "Trash", "b", "INBOX")
    await env.sync()
    after = crm(env, "b")
    assert (after.id, after.state, after.deleted_at) == (b.id, "active", None)
    assert b.id in listed(env)
    assert message_count(env) == 3 and outbox_rows(env) == []


async def test_crm_restore_puts_the_message_back_where_it_was(env: Env) -> None:
    """A CRM delete moves the copy to Trash (toggle 2); the CRM restore moves it back to the
    folder it left, found in Trash by Message-ID (Trash is not synced)."""
    env.server.create_mailbox(env.user, "Projects")
    append_many(env, "Projects", [("a", DAY)])
    await env.sync()
    set_toggles(env, delete_remote_on_crm_delete=True, delete_in_crm_on_remote_delete=True)
    outbox = OutboxStore(env.messages.engine)
    a = crm(env, "a")
    assert outbox.record(a.id, "delete", user_id=None).state == "deleted"
    await apply_outbox(env)
    assert in_mailbox(env, "Trash", "a") and not in_mailbox(env, "Projects", "a")
    await env.sync()
    assert crm(env, "a").state == "deleted" and a.id not in listed(env)

    outcome = outbox.record(a.id, "restore", user_id=None)
    assert outcome.state == "active" and [x.kind for x in outcome.actions] == ["restore"]
    assert crm(env, "a").deleted_at is None
    await apply_outbox(env)
    assert in_mailbox(env, "Projects", "a") and not in_mailbox(env, "Trash", "a")
    assert not in_mailbox(env, "INBOX", "a")
    await env.sync()
    after = crm(env, "a")
    assert (after.id, after.state) == (a.id, "active")
    assert "mid:ma@example.test" in env.stored("Projects").values()
    assert [s for _k, s in outbox_rows(env)] == ["applied", "applied"]
    # Applied again (a crash before the row was marked): found where it went, nothing moves.
    with Session(env.messages.engine) as s, s.begin():
        s.execute(update(OutboxRow).where(OutboxRow.kind == "restore").values(state="pending"))
    await apply_outbox(env)
    assert outbox_rows(env)[-1] == ("restore", "applied")
    assert list(env.remote("Projects").values()).count("mid:ma@example.test") == 1


# -- the echo of the CRM's own actions ----------------------------------------------------------


async def test_the_echo_of_crm_actions_changes_nothing(env: Env) -> None:
    env.server.create_mailbox(env.user, "Projects")
    append_many(env, "INBOX", [("a", DAY)])
    await env.sync()
    set_toggles(env, delete_in_crm_on_remote_delete=True, delete_remote_on_crm_delete=True)
    outbox = OutboxStore(env.messages.engine)
    a = crm(env, "a")

    # Read and star: applied, then seen again by the sync (CONDSTORE) as no change.
    outbox.record(a.id, "read", user_id=None)
    outbox.record(a.id, "star", user_id=None)
    await apply_outbox(env)
    uid = uid_of(env, "INBOX", "ma@example.test")
    assert {SEEN, FLAGGED} <= remote_flags(env, "INBOX")[uid]
    await env.sync()
    await env.sync()
    assert {SEEN, FLAGGED} <= set(crm(env, "a").flags)
    assert outbox_rows(env) == [("read", "applied"), ("star", "applied")]

    # Archive: the outbox moves the copy to Archive; the sync sees INBOX lose it (first, as
    # IDLE would) and Archive gain it: still archived, the same message, no new row.
    outbox.record(a.id, "archive", user_id=None)
    await apply_outbox(env)
    assert in_mailbox(env, "Archive", "a") and not in_mailbox(env, "INBOX", "a")
    await sync_inbox_first(env)
    await env.sync()
    await env.sync()
    after = crm(env, "a")
    assert (after.id, after.state) == (a.id, "archived")
    assert {SEEN, FLAGGED} <= set(after.flags)
    assert outbox_rows(env)[-1] == ("archive", "applied") and len(outbox_rows(env)) == 3
    assert list(env.remote("Archive").values()).count("mid:ma@example.test") == 1

    # Unarchive comes back to INBOX: active, and stays so.
    outbox.record(a.id, "unarchive", user_id=None)
    await apply_outbox(env)
    await env.sync()
    assert crm(env, "a").state == "active" and in_mailbox(env, "INBOX", "a")

    # Delete to Trash: seen by the sync as a move to Trash, which is what the CRM did.
    outbox.record(a.id, "delete", user_id=None)
    await apply_outbox(env)
    await sync_inbox_first(env)
    await env.sync()
    assert crm(env, "a").state == "deleted" and in_mailbox(env, "Trash", "a")
    assert len(outbox_rows(env)) == 5
    assert all(state == "applied" for _k, state in outbox_rows(env))
    assert message_count(env) == 1


# -- the conflict rule, end to end -----------------------------------------------------------


async def test_both_sides_change_seen_the_later_change_wins(env: Env) -> None:
    """\\Seen changed on both sides between two syncs: the later change wins on both sides
    (the CRM's action is dated when recorded, the mailbox's when the sync saw it;
    docs/ARCHITECTURE.md, "Conflict rule")."""
    append_many(env, "INBOX", [("a", DAY)])
    await env.sync()
    outbox = OutboxStore(env.messages.engine)
    a = crm(env, "a")
    uid = uid_of(env, "INBOX", "ma@example.test")
    with other_client(env, "INBOX") as conn:
        conn.uid("STORE", str(uid), "+FLAGS", "(\\Seen)")  # type: ignore[attr-defined]
    await env.sync()
    assert SEEN in crm(env, "a").flags

    # The mailbox is later: the CRM user marks it unread and read again (both rows wait),
    # then the other client marks it unread; the sync sees that after the CRM recorded its
    # actions, so unread wins, and the CRM's rows are superseded, never applied.
    outbox.record(a.id, "unread", user_id=None)
    outbox.record(a.id, "read", user_id=None)
    with other_client(env, "INBOX") as conn:
        conn.uid("STORE", str(uid), "-FLAGS", "(\\Seen)")  # type: ignore[attr-defined]
    await env.sync()
    assert SEEN not in crm(env, "a").flags
    assert outbox_rows(env) == [("unread", "superseded"), ("read", "superseded")]
    await apply_outbox(env)
    assert SEEN not in remote_flags(env, "INBOX")[uid]

    # The CRM is later: the other client marks it read, the sync sees it, then the CRM user
    # marks it unread: the CRM's change is applied to the mailbox.
    with other_client(env, "INBOX") as conn:
        conn.uid("STORE", str(uid), "+FLAGS", "(\\Seen)")  # type: ignore[attr-defined]
    await env.sync()
    assert SEEN in crm(env, "a").flags
    outbox.record(a.id, "unread", user_id=None)
    await env.sync()  # no change on the server since: the CRM's unread stands
    assert SEEN not in crm(env, "a").flags
    await apply_outbox(env)
    assert SEEN not in remote_flags(env, "INBOX")[uid]
    assert outbox_rows(env)[-1] == ("unread", "applied")
    await env.sync()  # and the echo changes nothing
    assert SEEN not in crm(env, "a").flags


# -- purge ---------------------------------------------------------------------------------------


def _with_attachment(n: str, payload: bytes) -> bytes:
    msg = EmailMessage()
    msg["Message-ID"] = f"<m{n}@example.test>"
    msg["From"] = "Alice <alice@example.test>"
    msg["To"] = "bob@example.test"
    msg["Subject"] = f"report {n}"
    msg["Date"] = format_datetime(DAY)
    msg.set_content(f"Body of {n}.\n")
    msg.add_attachment(payload, maintype="application", subtype="pdf", filename="report.pdf")
    return msg.as_bytes().replace(b"\n", b"\r\n")


async def test_purge_after_the_retention_with_shared_blobs(env: Env) -> None:
    shared = b"%PDF-1.4 the same attachment in two messages\n" * 50
    conn = env.server.imaplib_client(env.user)
    try:
        for n in ("a", "b", "c"):
            assert conn.append("INBOX", None, None, _with_attachment(n, shared))[0] == "OK"
    finally:
        conn.logout()
    await env.sync()
    outbox = OutboxStore(env.messages.engine)
    a, b, c = crm(env, "a"), crm(env, "b"), crm(env, "c")
    with Session(env.messages.engine) as s:
        [attachment_key] = {
            k
            for k in s.scalars(
                select(AttachmentRow.blob_key).where(AttachmentRow.message_id == a.id)
            )
            if k is not None
        }
    assert a.raw_blob_key and env.blobs.exists(a.raw_blob_key)
    assert env.blobs.exists(attachment_key)
    # Deleted in the CRM (toggle 2 off: the mailbox keeps its copies); c restored at once.
    outbox.record(a.id, "delete", user_id=None)
    outbox.record(c.id, "delete", user_id=None)
    outbox.record(c.id, "restore", user_id=None)
    deleted_at = crm(env, "a").deleted_at
    assert deleted_at is not None and crm(env, "c").deleted_at is None

    # Before 30 days: nothing goes.
    assert (
        purge_deleted(
            env.messages.engine,
            env.blobs,
            account_id=env.account.id,
            now=utcnow() + timedelta(days=29),
        ).messages
        == 0
    )
    # After: a goes with its raw message; the attachment stays (b and c use it).
    later = deleted_at + timedelta(days=30, seconds=1)
    report = purge_all(
        env.messages.engine,
        env.blobs,
        account_id=env.account.id,
        retention_days=30,
        batch=1,
        now=later,
    )
    assert report.messages == 1
    assert report.blobs_kept >= 1
    with pytest.raises(NotFound):
        MessageQueries(env.messages.engine).get_message(a.id)
    assert not env.blobs.exists(a.raw_blob_key)
    assert env.blobs.exists(attachment_key)
    for other in (b, c):
        view = MessageQueries(env.messages.engine).get_message(other.id)
        assert view.state == "active" and other.raw_blob_key
        assert env.blobs.exists(other.raw_blob_key)
    assert message_count(env) == 2
    # The last users of the attachment go: it goes too. A shorter retention setting counts.
    outbox.record(b.id, "delete", user_id=None)
    outbox.record(c.id, "delete", user_id=None)
    report = purge_all(
        env.messages.engine,
        env.blobs,
        account_id=env.account.id,
        retention_days=1,
        now=utcnow() + timedelta(days=2),
    )
    assert report.messages == 2
    assert not env.blobs.exists(attachment_key)
    assert message_count(env) == 0
    # The mailbox still holds its copies (a CRM purge never touches the mailbox).
    assert in_mailbox(env, "INBOX", "a")
    # ... and the next sync does not bring them back (their UIDs are behind the checkpoint).
    await env.sync()
    assert message_count(env) == 0


async def test_a_folder_read_again_from_scratch_changes_no_state(env: Env) -> None:
    """A CRM archive with toggle 4 off leaves the copy in INBOX; INBOX re-read from scratch
    (as after a new UIDVALIDITY) links the copy again: it was there, so it stays archived."""
    append_many(env, "INBOX", [("a", DAY)])
    await env.sync()
    set_toggles(env, archive_remote_on_crm_archive=False)
    a = crm(env, "a")
    outcome = OutboxStore(env.messages.engine).record(a.id, "archive", user_id=None)
    assert outcome.state == "archived" and outcome.actions == ()
    inbox = env.folder("INBOX")
    assert inbox.uidvalidity is not None
    assert env.messages.reset_folder(
        inbox.id,
        uidvalidity=inbox.uidvalidity,
        uidnext=inbox.uidnext,
        highestmodseq=None,
        exists_count=None,
    )
    await env.sync()
    after = crm(env, "a")
    assert (after.id, after.state) == (a.id, "archived")
    assert "mid:ma@example.test" in env.stored("INBOX").values()


# -- a server without MOVE, CONDSTORE or QRESYNC --------------------------------------------------


@pytest.fixture(params=BACKENDS)
def basic_env(
    request: pytest.FixtureRequest, dovecot_basic: DovecotServer, tmp_path: Path
) -> Iterator[Env]:
    yield from make_env(request, dovecot_basic, dovecot_basic.add_user(), tmp_path)


def user_copies_and_expunges(env: Env, source: str, n: str, target: str) -> None:
    """A move as a client does it without MOVE: COPY, \\Deleted, UID EXPUNGE."""
    uid = uid_of(env, source, f"m{n}@example.test")
    with other_client(env, source) as conn:
        assert conn.uid("COPY", str(uid), imap_quote(target))[0] == "OK"  # type: ignore[attr-defined]
        assert conn.uid("STORE", str(uid), "+FLAGS", "(\\Deleted)")[0] == "OK"  # type: ignore[attr-defined]
        assert conn.uid("EXPUNGE", str(uid))[0] == "OK"  # type: ignore[attr-defined]


async def test_without_move_or_condstore(basic_env: Env) -> None:
    env = basic_env
    append_many(env, "INBOX", [("a", DAY), ("b", DAY), ("c", DAY)])
    await env.sync()
    set_toggles(env, delete_in_crm_on_remote_delete=True)
    a, b, c = crm(env, "a"), crm(env, "b"), crm(env, "c")
    # The user's moves: to Archive (synced), to Trash (not synced).
    user_copies_and_expunges(env, "INBOX", "a", "Archive")
    user_copies_and_expunges(env, "INBOX", "b", "Trash")
    await env.sync()
    assert (crm(env, "a").id, crm(env, "a").state) == (a.id, "archived")
    assert (crm(env, "b").id, crm(env, "b").state) == (b.id, "deleted")
    # The CRM archives c: the outbox moves it with COPY + \Deleted + UID EXPUNGE; its echo
    # (no CONDSTORE: the sync compares the whole folder) changes nothing.
    outbox = OutboxStore(env.messages.engine)
    outbox.record(c.id, "archive", user_id=None)
    await apply_outbox(env)
    assert in_mailbox(env, "Archive", "c") and not in_mailbox(env, "INBOX", "c")
    await env.sync()
    await env.sync()
    assert (crm(env, "c").id, crm(env, "c").state) == (c.id, "archived")
    assert outbox_rows(env) == [("archive", "applied")]
    assert message_count(env) == 3


async def test_the_worker_purges_on_its_own(env: Env) -> None:
    """The worker (``SyncRunner``) runs the purge every ``purge_interval_seconds``."""
    from correspond.sync.runner import SyncRunner

    append_many(env, "INBOX", [("a", DAY), ("b", DAY)])
    await env.sync()
    a = crm(env, "a")
    OutboxStore(env.messages.engine).record(a.id, "delete", user_id=None)
    with Session(env.messages.engine) as s, s.begin():
        s.execute(
            update(MessageRow)
            .where(MessageRow.id == a.id)
            .values(deleted_at=utcnow() - timedelta(days=31))
        )
    runner = SyncRunner(
        env.store,
        env.settings.clone(purge_interval_seconds=1),
        poll_seconds=0.3,
        lease_seconds=5.0,
        stop_grace_seconds=2.0,
    )
    runner.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while await asyncio.to_thread(message_count, env) != 1:
            assert loop.time() < deadline, "not purged by the worker"
            await asyncio.sleep(0.1)
    finally:
        await runner.shutdown()
    assert crm(env, "b").state == "active"
    with pytest.raises(NotFound):
        MessageQueries(env.messages.engine).get_message(a.id)


async def test_a_mass_expunge_is_decided_in_the_pass_that_saw_it(env: Env) -> None:
    """More messages gone than one round looks for (``gone_check_max_messages``): the pass
    runs rounds until all are explained, so the CRM deletes them all at once."""
    names = [f"x{n}" for n in range(5)]
    append_many(env, "INBOX", [(n, DAY) for n in names])
    await env.sync()
    set_toggles(env, delete_in_crm_on_remote_delete=True)
    env.settings = env.settings.clone(gone_check_max_messages=2)
    with other_client(env, "INBOX") as conn:
        conn.store("1:*", "+FLAGS", "(\\Deleted)")  # type: ignore[attr-defined]
        conn.expunge()  # type: ignore[attr-defined]
    await env.sync()
    assert {crm(env, n).state for n in names} == {"deleted"}
    assert {crm(env, n).gone_reason for n in names} == {"expunged"}
