"""Pause, resume, disconnect and reconnect against the private Dovecot (issue 9, "Lifecycle"),
on SQLite and PostgreSQL.

- A pause closes every IMAP connection of the account (the live IDLE one, the backfill's and
  its INBOX helper) within a second, as Dovecot itself counts them (``doveadm who``).
- Changes made on both sides while paused converge after the resume: mail that arrived while
  paused (with an INTERNALDATE far outside the window), a remote flag change and move, and the
  CRM's actions waiting in the outbox, applied after the catch-up under the conflict rule.
- A disconnect deletes the credential, folders and locations and keeps the messages as
  history; a reconnect backfills the window before the reconnection and finds the messages it
  already had (same ids, no duplicates, timeline links intact).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from correspond.store.crm_tables import TimelineLinkRow
from correspond.store.leases import AccountLeases
from correspond.store.lifecycle import disconnect_account, footprint
from correspond.store.message_tables import MessageLocationRow, MessageRow
from correspond.store.outbox import OutboxStore
from correspond.store.outbox_tables import OutboxRow
from correspond.store.tables import AccountRow, FolderRow
from correspond.sync.runner import SyncRunner, sync_account_once
from correspond.testing.dovecot import DovecotServer, ImapUser
from mirror_helpers import (
    BACKENDS,
    NOW,
    TODAY,
    Env,
    append_many,
    imap_quote,
    make_env,
    pg_engine,  # noqa: F401  (a fixture, used through make_env)
    sqlite_engine,
)
from test_mirror_changes import message_ids, remote_flags, uid_of

pytestmark = [pytest.mark.dovecot, pytest.mark.timeout(120)]

SEEN = "\\Seen"
FLAGGED = "\\Flagged"


@pytest.fixture(params=BACKENDS)
def env(
    request: pytest.FixtureRequest, dovecot: DovecotServer, imap_user: ImapUser, tmp_path: Path
) -> Iterator[Env]:
    yield from make_env(request, dovecot, imap_user, tmp_path)


@pytest.fixture
def basic_env(dovecot_basic: DovecotServer, tmp_path: Path) -> Iterator[Env]:
    with sqlite_engine(tmp_path) as engine:
        yield Env(engine, dovecot_basic, dovecot_basic.add_user(), tmp_path)


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Wait for ``predicate`` (checked in a thread); the seconds it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not await asyncio.to_thread(predicate):
        if loop.time() - started > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)
    return loop.time() - started


def runner_for(env: Env, **kw: object) -> SyncRunner:
    # The lease round every 5 s (the default): a pause must not wait for it.
    options: dict[str, object] = {"names": [env.account.name], "stop_grace_seconds": 3.0}
    options.update(kw)
    return SyncRunner(env.store, env.settings, **options)  # type: ignore[arg-type]


def state(env: Env) -> str:
    return env.store.get_account(env.account.name).state


def with_mailbox(env: Env, act: Callable[..., object]) -> None:
    """Run ``act(conn)`` on an imaplib connection: the user's other mail client."""
    conn = env.server.imaplib_client(env.user)
    try:
        act(conn)
    finally:
        conn.logout()


async def pause_and_measure(env: Env, leases: AccountLeases) -> float:
    """Pause the account; the seconds until Dovecot counts no connection of the user."""
    await asyncio.to_thread(leases.pause, env.account.name)
    paused_at = time.monotonic()
    await until(lambda: env.server.connections(env.user) == 0, 10, "connections closed")
    return time.monotonic() - paused_at


# --- pause ------------------------------------------------------------------------------------


async def test_pause_closes_the_live_connection_within_a_second(env: Env) -> None:
    append_many(env, "INBOX", [("p1", NOW - timedelta(days=1))])
    runner = runner_for(env)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    leases = AccountLeases(env.store.engine)
    try:
        await until(lambda: state(env) == "live", 30, "live")
        # Idle and live: its one connection IDLEs on INBOX.
        await until(lambda: env.server.connections(env.user) >= 1, 5, "a connection")
        assert await pause_and_measure(env, leases) < 1.0
        assert state(env) == "paused"
        assert env.account.name not in runner.running
        # Data stays.
        assert set(message_ids(env)) == {"mp1@example.test"}
        # Resume: picked up at once (not at the next 5-s round), live again.
        await asyncio.to_thread(leases.resume, env.account.name)
        await until(lambda: state(env) == "live", 10, "live after resume")
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def test_pause_closes_backfill_and_helper_connections_within_a_second(env: Env) -> None:
    """Paused in the middle of a backfill (one message a batch, so it lasts): the command
    connection backfilling Archive and the helper watching INBOX both close."""
    append_many(env, "INBOX", [("i1", NOW - timedelta(days=1))])
    append_many(env, "Archive", [(f"a{n}", NOW - timedelta(days=2)) for n in range(300)])
    runner = runner_for(env, batch_size=1, stop_grace_seconds=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    leases = AccountLeases(env.store.engine)
    try:
        # The INBOX helper joins the backfilling command connection after a second.
        await until(lambda: env.server.connections(env.user) >= 2, 30, "two connections")
        assert state(env) == "backfilling"
        stored = len(env.stored("Archive"))
        assert stored < 300, "the backfill finished before the pause: nothing measured"
        assert await pause_and_measure(env, leases) < 1.0
        assert state(env) == "paused"
        # Each batch committed with its cursor: what was stored stays, nothing half-written.
        await asyncio.sleep(0.3)
        kept = len(env.stored("Archive"))
        assert kept >= stored
        await asyncio.sleep(0.5)
        assert len(env.stored("Archive")) == kept, "still syncing while paused"
        # Resume: the backfill continues from its cursor.
        await asyncio.to_thread(leases.resume, env.account.name)
        await until(lambda: len(env.stored("Archive")) > kept, 30, "backfill going on")
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def test_pause_ends_a_one_off_sync_within_a_second(env: Env) -> None:
    """``correspond sync NAME --once`` hears the pause too: its pass ends, its connection
    closes, and the account stays paused."""
    append_many(env, "INBOX", [(f"o{n}", NOW - timedelta(days=2)) for n in range(300)])
    leases = AccountLeases(env.store.engine)
    once = asyncio.create_task(
        sync_account_once(env.store, env.settings, env.account.name, batch_size=1)
    )
    try:
        await until(lambda: state(env) == "backfilling", 30, "backfilling")
        await until(lambda: env.server.connections(env.user) >= 1, 5, "a connection")
        assert await pause_and_measure(env, leases) < 1.0
        result = await asyncio.wait_for(once, 10)
    finally:
        if not once.done():
            once.cancel()
    assert result.ok is False and result.account.state == "paused"
    assert len(env.stored("INBOX")) < 300


async def test_changes_on_both_sides_while_paused_converge_on_resume(env: Env) -> None:
    await converge_after_pause(env)


async def test_converge_after_pause_without_move_condstore_qresync(basic_env: Env) -> None:
    """The same against the Dovecot that offers no MOVE, CONDSTORE or QRESYNC: the catch-up
    reads every stored flag, the other client moves with COPY + EXPUNGE, and the archive is
    applied as COPY + \\Deleted + UID EXPUNGE."""
    await converge_after_pause(basic_env)


async def converge_after_pause(env: Env) -> None:
    env.server.create_mailbox(env.user, "Projects")
    day = NOW - timedelta(days=1)
    append_many(env, "INBOX", [(n, day) for n in ("a", "b", "c", "d", "e")])
    with_mailbox(
        env,
        lambda conn: (
            conn.select("INBOX"),
            conn.uid("STORE", str(uid_of(env, "INBOX", "me@example.test")), "+FLAGS", SEEN),
        ),
    )
    runner = runner_for(env)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    leases = AccountLeases(env.store.engine)
    outbox = OutboxStore(env.messages.engine)
    try:
        await until(lambda: state(env) == "live", 30, "live")
        ids = message_ids(env)
        assert len(ids) == 5
        await pause_and_measure(env, leases)

        # The CRM, while paused: read then unread a (the mailbox changes it too: conflict),
        # archive d, mark e unread. The rows wait in the outbox.
        outbox.record(ids["ma@example.test"], "read", user_id=None)
        outbox.record(ids["ma@example.test"], "unread", user_id=None)
        outbox.record(ids["md@example.test"], "archive", user_id=None)
        outbox.record(ids["me@example.test"], "unread", user_id=None)
        await asyncio.sleep(0.3)
        assert env.server.connections(env.user) == 0, "an action woke the paused account"

        # The mailbox, while paused (the user's other client): a reads a; flags b; moves c to
        # Projects; and a message arrives whose INTERNALDATE and Date are 200 days old, far
        # outside the 60-day window: it is new to the mailbox all the same.
        def remote(conn: object) -> None:
            c = conn  # imaplib.IMAP4
            assert c.select("INBOX")[0] == "OK"  # type: ignore[attr-defined]
            for mid, flag in (("ma@example.test", SEEN), ("mb@example.test", FLAGGED)):
                uid = uid_of(env, "INBOX", mid)
                assert c.uid("STORE", str(uid), "+FLAGS", flag)[0] == "OK"  # type: ignore[attr-defined]
            uid = uid_of(env, "INBOX", "mc@example.test")
            if env.server.variant == "full":
                assert c.uid("MOVE", str(uid), imap_quote("Projects"))[0] == "OK"  # type: ignore[attr-defined]
            else:
                assert c.uid("COPY", str(uid), imap_quote("Projects"))[0] == "OK"  # type: ignore[attr-defined]
                assert c.uid("STORE", str(uid), "+FLAGS", "\\Deleted")[0] == "OK"  # type: ignore[attr-defined]
                assert c.uid("EXPUNGE", str(uid))[0] == "OK"  # type: ignore[attr-defined]

        with_mailbox(env, remote)
        append_many(env, "INBOX", [("late", NOW - timedelta(days=200))])
        assert "mlate@example.test" not in message_ids(env)

        await asyncio.to_thread(leases.resume, env.account.name)

        def converged() -> bool:
            return (
                "mlate@example.test" in message_ids(env)
                and "mid:md@example.test" in env.remote("Archive").values()
                and not outbox.outcome(ids["me@example.test"]).actions
            )

        await until(converged, 30, "converged")
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)

    after = message_ids(env)
    # Nothing duplicated, nobody lost their CRM identity (c moved, d archived).
    assert {k: after[k] for k in ids} == ids
    assert len(after) == 6
    inbox = remote_flags(env, "INBOX")
    crm = {mid: set(outbox.outcome(ids[mid]).flags) for mid in ids}
    # a: the mailbox's \Seen was seen at the resume, after both CRM actions: it wins, and
    # both rows are superseded (never applied).
    assert SEEN in inbox[uid_of(env, "INBOX", "ma@example.test")]
    assert SEEN in crm["ma@example.test"]
    with Session(env.messages.engine) as s:
        a_rows = s.scalars(
            select(OutboxRow.state).where(OutboxRow.message_id == ids["ma@example.test"])
        ).all()
    assert sorted(a_rows) == ["superseded", "superseded"]
    # b: the remote flag reached the CRM.
    assert FLAGGED in crm["mb@example.test"]
    # c: in Projects on both sides, same CRM message.
    assert "mid:mc@example.test" in env.stored("Projects").values()
    assert "mid:mc@example.test" not in env.stored("INBOX").values()
    # d: archived in the CRM, moved to Archive in the mailbox after the resume.
    assert outbox.outcome(ids["md@example.test"]).state == "archived"
    assert "mid:md@example.test" not in env.remote("INBOX").values()
    # e: the CRM's unread reached the mailbox.
    assert SEEN not in inbox[uid_of(env, "INBOX", "me@example.test")]
    assert SEEN not in crm["me@example.test"]
    # The late message is mirrored with its old INTERNALDATE (the window filters a backfill,
    # never a UID that arrived after the folder was synced).
    with Session(env.messages.engine) as s:
        internaldate = s.scalar(
            select(MessageRow.internaldate).where(MessageRow.id == after["mlate@example.test"])
        )
    assert internaldate is not None and internaldate < NOW - timedelta(days=199)


# --- disconnect and reconnect --------------------------------------------------------------


def secret_of(env: Env) -> bytes | None:
    with Session(env.messages.engine) as s:
        return s.scalar(select(AccountRow.secret_encrypted).where(AccountRow.id == env.account.id))


def count(env: Env, model: type, *where: object) -> int:
    with Session(env.messages.engine) as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


async def test_disconnect_keeps_history_and_reconnect_backfills_without_duplicates(
    env: Env,
) -> None:
    # First connected 30 days ago (the syncer's "today"): its 60-day window reached back 90
    # days, so "old" (70 days) is in the CRM; at the reconnection today it is out of the window.
    then = TODAY - timedelta(days=30)
    append_many(
        env,
        "INBOX",
        [("old", NOW - timedelta(days=70)), ("r1", NOW - timedelta(days=10))],
    )
    append_many(env, "Sent", [("r2", NOW - timedelta(days=1))])
    await env.sync(env.syncer(today=then))
    before = message_ids(env)
    assert set(before) == {"mold@example.test", "mr1@example.test", "mr2@example.test"}
    # A timeline link, as the CRM made it, and an action still waiting for the mailbox.
    with Session(env.messages.engine) as s, s.begin():
        s.add(
            TimelineLinkRow(
                message_id=before["mr1@example.test"],
                target_kind="contact",
                target_id=1,
                source="manual",
                sort_at=NOW,
            )
        )
    OutboxStore(env.messages.engine).record(before["mr1@example.test"], "read", user_id=None)
    assert secret_of(env) is not None

    preview = footprint(env.messages.engine, env.account.name)
    assert (preview.folders, preview.messages, preview.pending_actions) == (
        len(env.store.list_folders(env.account.name)),
        3,
        1,
    )
    assert preview.locations == 3 and preview.messages_on_timelines == 1
    report = disconnect_account(env.messages.engine, env.account.name)
    assert report.locations == 3 and report.has_credentials

    # The credential, folders and locations are gone; the messages and the link stay.
    assert secret_of(env) is None
    account = env.store.get_account(env.account.name)
    assert account.disconnected_at is not None and account.state == "paused"
    assert not account.has_secret
    assert count(env, FolderRow, FolderRow.account_id == env.account.id) == 0
    folder_ids = select(FolderRow.id).where(FolderRow.account_id == env.account.id)
    assert count(env, MessageLocationRow, MessageLocationRow.folder_id.in_(folder_ids)) == 0
    assert message_ids(env) == before
    with Session(env.messages.engine) as s:
        reasons = dict(
            s.execute(
                select(MessageRow.message_id_header, MessageRow.gone_reason).where(
                    MessageRow.account_id == env.account.id
                )
            ).all()
        )
        outbox_states = s.scalars(
            select(OutboxRow.state).where(OutboxRow.account_id == env.account.id)
        ).all()
    assert set(reasons.values()) == {"disconnected"}
    assert list(outbox_states) == ["failed"]
    assert count(env, TimelineLinkRow, TimelineLinkRow.message_id == before["mr1@example.test"])
    # No worker runs it, resume refuses it, and nothing signs in with it.
    leases = AccountLeases(env.store.engine)
    assert leases.claim("someone", 60, names=[env.account.name]) == []
    with pytest.raises(Exception, match="disconnected"):
        leases.resume(env.account.name)

    # Meanwhile mail arrives: one recent, one 50 days old (inside the window of today).
    append_many(
        env,
        "INBOX",
        [("r3", NOW - timedelta(hours=2)), ("mid50", NOW - timedelta(days=50))],
    )

    # ... and the user flags r2 in another client.
    outbox = OutboxStore(env.messages.engine)
    assert FLAGGED not in outbox.outcome(before["mr2@example.test"]).flags
    with_mailbox(
        env,
        lambda conn: (
            conn.select("Sent"),
            conn.uid("STORE", str(uid_of(env, "Sent", "mr2@example.test")), "+FLAGS", FLAGGED),
        ),
    )

    env.store.reconnect_account(env.account.name, env.user.password)
    account = env.store.get_account(env.account.name)
    assert account.disconnected_at is None and account.state == "connecting"
    assert secret_of(env) is not None
    env.account = account
    await env.sync(env.syncer(today=TODAY))

    after = message_ids(env)
    # Same ids for what the CRM had; the new mail in the window; nothing twice.
    assert {k: after[k] for k in before} == before
    assert set(after) == set(before) | {"mr3@example.test", "mmid50@example.test"}
    with Session(env.messages.engine) as s:
        keys = s.scalars(
            select(MessageRow.dedupe_key).where(MessageRow.account_id == env.account.id)
        ).all()
        reasons = dict(
            s.execute(
                select(MessageRow.message_id_header, MessageRow.gone_reason).where(
                    MessageRow.account_id == env.account.id
                )
            ).all()
        )
    assert len(keys) == len(set(keys)) == 5
    # "old" is outside the window before the reconnection: history, still marked.
    assert reasons["mold@example.test"] == "disconnected"
    assert "mid:mold@example.test" not in env.stored("INBOX").values()
    # The others are in the mailbox again.
    assert reasons["mr1@example.test"] is None and reasons["mr2@example.test"] is None
    assert "mid:mr1@example.test" in env.stored("INBOX").values()
    assert "mid:mr2@example.test" in env.stored("Sent").values()
    # What the mailbox says now reaches the CRM copy kept from before.
    assert FLAGGED in outbox.outcome(before["mr2@example.test"]).flags
    # The old timeline link points at the same, present message.
    with Session(env.messages.engine) as s:
        linked = s.scalar(
            select(MessageRow.id)
            .join(TimelineLinkRow, TimelineLinkRow.message_id == MessageRow.id)
            .where(TimelineLinkRow.target_kind == "contact", TimelineLinkRow.target_id == 1)
        )
    assert linked == before["mr1@example.test"]


async def test_disconnect_stops_a_running_sync_within_a_second(env: Env) -> None:
    append_many(env, "INBOX", [("x1", NOW - timedelta(days=1))])
    runner = runner_for(env)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await until(lambda: state(env) == "live", 30, "live")
        await asyncio.to_thread(disconnect_account, env.messages.engine, env.account.name)
        gone_at = time.monotonic()
        await until(lambda: env.server.connections(env.user) == 0, 10, "connections closed")
        assert time.monotonic() - gone_at < 1.0
        await asyncio.sleep(0.5)
        # The session ending does not bring folders back nor overwrite the state.
        assert count(env, FolderRow, FolderRow.account_id == env.account.id) == 0
        assert state(env) == "paused"
        assert env.store.get_account(env.account.name).disconnected_at is not None
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
