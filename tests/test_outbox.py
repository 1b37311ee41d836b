"""The outbox against the private Dovecot: read and star from the CRM reach every copy in the
mailbox exactly once, remote flag changes flow back under the conflict rule, failures are
recorded on the row (SQLite and PostgreSQL).

The mailbox side is read with the stdlib ``imaplib``, standing in for the user's other client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from correspond.store.outbox import OutboxStore
from correspond.store.outbox_tables import OutboxRow
from correspond.store.tables import AccountRow
from correspond.testing.dovecot import DovecotServer, ImapUser
from mirror_helpers import (
    BACKENDS,
    NOW,
    Env,
    append_many,
    imap_quote,
    make_env,
    pg_engine,  # noqa: F401  (a fixture, used through make_env)
)
from test_mirror_changes import message_ids, remote_flags, uid_of

pytestmark = pytest.mark.dovecot

SEEN = "\\Seen"
FLAGGED = "\\Flagged"


@pytest.fixture(params=BACKENDS)
def env(
    request: pytest.FixtureRequest, dovecot: DovecotServer, imap_user: ImapUser, tmp_path: Path
) -> Iterator[Env]:
    yield from make_env(request, dovecot, imap_user, tmp_path)


def remote_store(env: Env, mailbox: str, uid: int, change: str, flags: str) -> None:
    """The user's other client changes flags (imaplib)."""
    conn = env.server.imaplib_client(env.user)
    try:
        assert conn.select(imap_quote(mailbox))[0] == "OK"
        assert conn.uid("STORE", str(uid), change, flags)[0] == "OK"
    finally:
        conn.logout()


def rows(env: Env, message_id: int) -> list[OutboxRow]:
    with Session(env.messages.engine) as s:
        return list(
            s.scalars(
                select(OutboxRow).where(OutboxRow.message_id == message_id).order_by(OutboxRow.id)
            )
        )


async def apply(env: Env) -> object:
    syncer = env.syncer()
    client = await syncer.connect(env.account)
    try:
        return await syncer.apply_outbox(client, env.store.get_account(env.account.name))
    finally:
        await client.logout()


async def seeded(env: Env) -> tuple[OutboxStore, int]:
    """One message in INBOX and in a second folder, synced; its CRM id."""
    env.server.create_mailbox(env.user, "Projects")
    day = NOW - timedelta(days=1)
    append_many(env, "INBOX", [("a", day)])
    append_many(env, "Projects", [("a", day)])
    await env.sync()
    return OutboxStore(env.messages.engine), message_ids(env)["ma@example.test"]


async def test_read_and_star_reach_every_copy_once(env: Env) -> None:
    outbox, mid = await seeded(env)
    before = env.store.get_account(env.account.name).updated_at
    outcome = outbox.record(mid, "read", user_id=None)
    # The CRM copy changes at once; the row waits for the syncer.
    assert SEEN in outcome.flags and outcome.state == "active"
    assert [a.state for a in outcome.actions] == ["pending"]
    # The account's syncer hears of it through the account's updated_at (the runner's round).
    assert env.store.get_account(env.account.name).updated_at > before
    outbox.record(mid, "star", user_id=None)

    report = await apply(env)
    assert report.applied == 2  # type: ignore[attr-defined]
    for mailbox in ("INBOX", "Projects"):
        uid = uid_of(env, mailbox, "ma@example.test")
        assert {SEEN, FLAGGED} <= remote_flags(env, mailbox)[uid], mailbox
    assert [r.state for r in rows(env, mid)] == ["applied", "applied"]
    assert outbox.outcome(mid).actions == ()

    # The echo: the next sync sees our own STORE as no change, and the CRM flags stay.
    await env.sync()
    assert {SEEN, FLAGGED} <= set(outbox.outcome(mid).flags)

    # A crash between the command and marking the row done: the row is pending again and the
    # flag already set on the server. Applying it again changes nothing and completes it.
    first = rows(env, mid)[0]
    with Session(env.messages.engine) as s, s.begin():
        s.execute(update(OutboxRow).where(OutboxRow.id == first.id).values(state="pending"))
    report = await apply(env)
    assert report.applied == 1  # type: ignore[attr-defined]
    assert rows(env, mid)[0].state == "applied"
    uid = uid_of(env, "INBOX", "ma@example.test")
    assert {SEEN, FLAGGED} <= remote_flags(env, "INBOX")[uid]

    # Unread and unstar clear them everywhere.
    outbox.record(mid, "unread", user_id=None)
    outbox.record(mid, "unstar", user_id=None)
    await apply(env)
    for mailbox in ("INBOX", "Projects"):
        uid = uid_of(env, mailbox, "ma@example.test")
        assert not {SEEN, FLAGGED} & remote_flags(env, mailbox)[uid], mailbox


async def test_remote_flags_flow_in_and_the_later_change_wins(env: Env) -> None:
    outbox, mid = await seeded(env)
    uid = uid_of(env, "INBOX", "ma@example.test")
    # The other client reads and stars the message: the CRM follows.
    remote_store(env, "INBOX", uid, "+FLAGS", "(\\Seen \\Flagged)")
    await env.sync()
    assert {SEEN, FLAGGED} <= set(outbox.outcome(mid).flags)

    # The CRM unstars; the sync before the row is applied sees no change of \Flagged on the
    # server: the CRM's pending unstar stands, and is applied.
    outbox.record(mid, "unstar", user_id=None)
    await env.sync()
    assert FLAGGED not in outbox.outcome(mid).flags
    await apply(env)
    assert FLAGGED not in remote_flags(env, "INBOX")[uid]

    # The CRM marks it unread, then the other client marks it unread and read again after
    # that (seen by the sync after the CRM's action): the mailbox's later change wins, the
    # CRM's row is superseded and never applied.
    outbox.record(mid, "unread", user_id=None)
    remote_store(env, "INBOX", uid, "-FLAGS", "(\\Seen)")
    await env.sync()  # the sync sees \Seen cleared: the same value as the CRM's: no conflict
    assert SEEN not in outbox.outcome(mid).flags
    outbox.record(mid, "read", user_id=None)
    outbox.record(mid, "unread", user_id=None)
    remote_store(env, "INBOX", uid, "+FLAGS", "(\\Seen)")
    await env.sync()
    assert SEEN in outbox.outcome(mid).flags
    states = [r.state for r in rows(env, mid) if r.kind in ("read", "unread")]
    assert states[-2:] == ["superseded", "superseded"], states
    await apply(env)
    assert SEEN in remote_flags(env, "INBOX")[uid]


async def test_failures_are_recorded_on_the_row(env: Env) -> None:
    outbox, mid = await seeded(env)
    # A transient failure (the connection is gone): the row waits with a backoff.
    syncer = env.syncer()
    client = await syncer.connect(env.account)
    await client.logout()
    outbox.record(mid, "read", user_id=None)
    with pytest.raises(Exception) as raised:
        await syncer.apply_outbox(client, env.store.get_account(env.account.name))
    assert getattr(raised.value, "transient", False)
    [row] = rows(env, mid)
    assert row.state == "pending" and row.attempts == 1 and row.last_error
    assert row.next_attempt_at > row.created_at
    assert outbox.due(env.account.id) == []  # not before its time
    # Once due, it applies.
    with Session(env.messages.engine) as s, s.begin():
        s.execute(update(OutboxRow).values(next_attempt_at=row.created_at))
    await apply(env)
    assert rows(env, mid)[0].state == "applied"

    # A permanent failure: the message is gone from the mailbox (expunged by the other client
    # before the syncer applied the row). Recorded on the row, shown on the message.
    for mailbox in ("INBOX", "Projects"):
        uid = uid_of(env, mailbox, "ma@example.test")
        conn = env.server.imaplib_client(env.user)
        try:
            conn.select(imap_quote(mailbox))
            conn.uid("STORE", str(uid), "+FLAGS", "(\\Deleted)")
            conn.expunge()
        finally:
            conn.logout()
    outbox.record(mid, "star", user_id=None)
    report = await apply(env)
    assert report.failed == 1  # type: ignore[attr-defined]
    [failed] = outbox.outcome(mid).actions
    assert failed.state == "failed" and "gone" in (failed.last_error or "")
    assert outbox.counts_by_account()[env.account.id] == {"pending": 0, "failed": 1}


async def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await asyncio.to_thread(predicate):
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)


async def test_live_session_applies_actions_and_archives(env: Env) -> None:
    """While live: a CRM action touches the account, the runner's round reports the change
    (here the event set by hand) and the session applies the row; archive moves the INBOX
    copy to Archive, and the message keeps its CRM identity."""
    outbox, mid = await seeded(env)
    syncer = env.syncer()
    stop, changed = asyncio.Event(), asyncio.Event()
    synced: list[object] = []
    task = asyncio.create_task(
        syncer.run_account(
            env.account.name,
            stop=stop,
            poll_seconds=600,
            changed=changed,
            on_synced=synced.append,
        )
    )
    try:
        await _until(lambda: bool(synced) or task.done(), 15, "live")
        outbox.record(mid, "read", user_id=None)
        changed.set()
        uid = uid_of(env, "INBOX", "ma@example.test")
        await _until(lambda: SEEN in remote_flags(env, "INBOX")[uid], 10, "\\Seen in INBOX")
        outbox.record(mid, "archive", user_id=None)
        changed.set()

        def archived() -> bool:
            return "mid:ma@example.test" in env.remote("Archive").values()

        await _until(archived, 10, "moved to Archive")
        assert "mid:ma@example.test" not in env.remote("INBOX").values()
        await _until(lambda: not outbox.outcome(mid).actions, 10, "rows applied")
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    assert task.result() is None
    assert outbox.outcome(mid).state == "archived"
    # The sync finds it in Archive as the same CRM message (no new message).
    await env.sync()
    assert message_ids(env)["ma@example.test"] == mid
    assert "mid:ma@example.test" in env.stored("Archive").values()


def set_toggle(env: Env, name: str, value: bool) -> None:
    with Session(env.messages.engine) as s, s.begin():
        s.execute(update(AccountRow).where(AccountRow.id == env.account.id).values({name: value}))


async def test_delete_follows_its_toggle(env: Env) -> None:
    outbox, mid = await seeded(env)
    # Off (the default): the CRM deletes, the mailbox keeps its copies.
    outcome = outbox.record(mid, "delete", user_id=None)
    assert outcome.state == "deleted" and outcome.actions == ()
    assert "mid:ma@example.test" in env.remote("INBOX").values()
    outbox.record(mid, "restore", user_id=None)
    # On: one copy moves to Trash, the other is expunged (UID EXPUNGE of that UID only); a
    # message the user flagged \Deleted in the same folder stays.
    append_many(env, "Projects", [("keep", NOW - timedelta(days=1))])
    keep = uid_of(env, "Projects", "mkeep@example.test")
    remote_store(env, "Projects", keep, "+FLAGS", "(\\Deleted)")
    set_toggle(env, "delete_remote_on_crm_delete", True)
    outcome = outbox.record(mid, "delete", user_id=None)
    assert [a.kind for a in outcome.actions] == ["delete"]
    report = await apply(env)
    assert report.applied == 1  # type: ignore[attr-defined]
    assert "mid:ma@example.test" in env.remote("Trash").values()
    assert "mid:ma@example.test" not in env.remote("INBOX").values()
    assert "mid:ma@example.test" not in env.remote("Projects").values()
    assert "mid:mkeep@example.test" in env.remote("Projects").values()
    # Applied again (a crash before the row was marked): nothing more happens.
    with Session(env.messages.engine) as s, s.begin():
        s.execute(update(OutboxRow).where(OutboxRow.message_id == mid).values(state="pending"))
    await apply(env)
    assert list(env.remote("Trash").values()).count("mid:ma@example.test") == 1
    await env.sync()
    assert message_ids(env)["ma@example.test"] == mid
