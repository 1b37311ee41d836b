"""Flag changes announced in IDLE are stored without leaving IDLE (SQLite and PostgreSQL).

With QRESYNC enabled Dovecot announces a flag change made by another client as ``* n FETCH
(UID u FLAGS (...) MODSEQ (m))``: the live session stores it at once
(:meth:`MessageStore.apply_notified_flags`) and stays in IDLE, instead of DONE, a sync and a
new IDLE. These tests check that it does, that a quick series of changes ends in the last
one, that the folder's HIGHESTMODSEQ checkpoint does not move (the next sync re-reads the
changes as no-ops), that the echo and conflict rules hold, and that a server without
CONDSTORE/QRESYNC (no UID in its announcements) still gets there by the sync.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import NoResultFound
from sqlalchemy.orm import Session

from correspond.store.message_tables import MessageLocationRow
from correspond.store.outbox import OutboxStore
from correspond.sync.engine import AccountSyncer
from correspond.testing.dovecot import DovecotServer, ImapUser
from mirror_helpers import (
    BACKENDS,
    NOW,
    Env,
    append_many,
    make_env,
    pg_engine,  # noqa: F401  (a fixture, used through make_env)
)
from test_mirror_changes import uid_of
from test_two_way_remote import crm, other_client, outbox_rows

pytestmark = pytest.mark.dovecot

SEEN = "\\Seen"
FLAGGED = "\\Flagged"
DAY = NOW - timedelta(days=1)


@pytest.fixture(params=BACKENDS)
def env(
    request: pytest.FixtureRequest, dovecot: DovecotServer, imap_user: ImapUser, tmp_path: Path
) -> Iterator[Env]:
    yield from make_env(request, dovecot, imap_user, tmp_path)


@pytest.fixture(params=BACKENDS)
def basic_env(
    request: pytest.FixtureRequest, dovecot_basic: DovecotServer, tmp_path: Path
) -> Iterator[Env]:
    yield from make_env(request, dovecot_basic, dovecot_basic.add_user(), tmp_path)


def user_stores(env: Env, uid: int, change: str, flag: str) -> None:
    with other_client(env, "INBOX") as conn:
        assert conn.uid("STORE", str(uid), change, f"({flag})")[0] == "OK"  # type: ignore[attr-defined]


async def wait_for(check: Callable[[], bool], what: str, timeout: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await asyncio.to_thread(check):
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


class Live:
    """The account's live session (``run_account``) for the test's duration."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.syncer: AccountSyncer = env.syncer()
        self.stop = asyncio.Event()
        self.synced: list[object] = []
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Live:
        self.task = asyncio.create_task(
            self.syncer.run_account(
                self.env.account.name,
                stop=self.stop,
                poll_seconds=600,
                on_synced=self.synced.append,
            )
        )
        inbox = self.env.folder("inbox").id
        await wait_for(
            lambda: bool(self.synced) and self.syncer.stats.idle_commands.get(inbox, 0) >= 1,
            "live and idling",
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.stop.set()
        await asyncio.wait_for(self.task, 15)
        assert self.task.result() is None


async def test_flag_changes_are_stored_from_idle_without_leaving_it(env: Env) -> None:
    append_many(env, "INBOX", [("a", DAY), ("b", DAY)])
    await env.sync()
    inbox = env.folder("inbox")
    before = env.messages.folder_checkpoint(inbox.id).highestmodseq
    ua = uid_of(env, "INBOX", "ma@example.test")
    ub = uid_of(env, "INBOX", "mb@example.test")
    async with Live(env) as live:
        idles = live.syncer.stats.idle_commands[inbox.id]
        await asyncio.to_thread(user_stores, env, ua, "+FLAGS", SEEN)
        await wait_for(lambda: SEEN in crm(env, "a").flags, "a read")
        await asyncio.to_thread(user_stores, env, ub, "+FLAGS", FLAGGED)
        await wait_for(lambda: FLAGGED in crm(env, "b").flags, "b starred")
        # A quick series on one message, each change on its own: the last one stands.
        for change in ("-FLAGS", "+FLAGS", "-FLAGS"):
            await asyncio.to_thread(user_stores, env, ua, change, SEEN)
        await asyncio.to_thread(user_stores, env, ua, "+FLAGS", FLAGGED)
        await wait_for(lambda: FLAGGED in crm(env, "a").flags, "a starred")
        await asyncio.sleep(1.0)  # anything still announced has come by now
        assert SEEN not in crm(env, "a").flags
        assert live.syncer.stats.idle_flag_updates >= 3
        # Never left IDLE for them: no sync, no new IDLE command.
        assert live.syncer.stats.idle_commands[inbox.id] == idles
    # The checkpoint stayed where the last sync left it; the next sync re-reads the changes
    # and finds nothing to change.
    assert env.messages.folder_checkpoint(inbox.id).highestmodseq == before
    report = await env.sync()
    assert report.folders and all(f.flag_updates == 0 for f in report.folders)
    assert SEEN not in crm(env, "a").flags and FLAGGED in crm(env, "a").flags
    assert FLAGGED in crm(env, "b").flags
    with Session(env.messages.engine) as s:
        modseq = s.scalar(
            select(MessageLocationRow.modseq).where(
                MessageLocationRow.folder_id == inbox.id, MessageLocationRow.uid == ua
            )
        )
    assert modseq is not None and modseq > (before or 0)


async def test_new_mail_still_ends_idle_and_is_synced(env: Env) -> None:
    append_many(env, "INBOX", [("a", DAY)])
    await env.sync()
    inbox = env.folder("inbox")
    async with Live(env) as live:
        idles = live.syncer.stats.idle_commands[inbox.id]
        append_many(env, "INBOX", [("b", DAY)])
        await wait_for(lambda: crm_exists(env, "b"), "b stored")
        await wait_for(lambda: live.syncer.stats.idle_commands[inbox.id] > idles, "IDLE again")


def crm_exists(env: Env, n: str) -> bool:
    try:
        crm(env, n)
    except NoResultFound:  # not stored yet
        return False
    return True


async def test_without_condstore_flags_arrive_by_the_sync(basic_env: Env) -> None:
    """No QRESYNC: Dovecot's announcement carries no UID; IDLE ends and the sync reads it."""
    env = basic_env
    append_many(env, "INBOX", [("a", DAY)])
    await env.sync()
    inbox = env.folder("inbox")
    ua = uid_of(env, "INBOX", "ma@example.test")
    async with Live(env) as live:
        idles = live.syncer.stats.idle_commands[inbox.id]
        await asyncio.to_thread(user_stores, env, ua, "+FLAGS", FLAGGED)
        await wait_for(lambda: FLAGGED in crm(env, "a").flags, "a starred")
        await asyncio.to_thread(user_stores, env, ua, "-FLAGS", FLAGGED)
        await wait_for(lambda: FLAGGED not in crm(env, "a").flags, "a unstarred")
        assert live.syncer.stats.idle_flag_updates == 0
        await wait_for(lambda: live.syncer.stats.idle_commands[inbox.id] > idles, "IDLE again")


# -- the store function -------------------------------------------------------------------------


def location(env: Env, folder_id: int, uid: int) -> tuple[list[str], int | None]:
    with Session(env.messages.engine) as s:
        row = s.execute(
            select(MessageLocationRow.flags, MessageLocationRow.modseq).where(
                MessageLocationRow.folder_id == folder_id, MessageLocationRow.uid == uid
            )
        ).one()
    return sorted(row.flags or ()), row.modseq


async def test_notified_flags_stale_echo_unknown_and_conflict(env: Env) -> None:
    append_many(env, "INBOX", [("a", DAY), ("b", DAY)])
    await env.sync()
    inbox = env.folder("inbox").id
    ua = uid_of(env, "INBOX", "ma@example.test")
    ub = uid_of(env, "INBOX", "mb@example.test")
    apply = env.messages.apply_notified_flags

    assert apply(inbox, {ua: (frozenset({SEEN}), 1000)}) == 1
    assert location(env, inbox, ua) == ([SEEN], 1000)
    assert crm(env, "a").flags == [SEEN]
    # Stale (MODSEQ not above the stored one): ignored.
    assert apply(inbox, {ua: (frozenset(), 999)}) == 0
    assert apply(inbox, {ua: (frozenset(), 1000)}) == 0
    assert location(env, inbox, ua) == ([SEEN], 1000)
    # The same flags (the echo of the CRM's own STORE): nothing changes.
    assert apply(inbox, {ua: (frozenset({SEEN}), 1001)}) == 0
    # A UID not stored (new mail, not synced yet): left to the sync.
    assert apply(inbox, {ub + 100: (frozenset({SEEN}), 1002)}) == 0
    # Without MODSEQ: applied in the order given.
    assert apply(inbox, {ua: (frozenset(), None)}) == 1
    assert crm(env, "a").flags == []

    # The conflict rule: b read in the mailbox; the CRM user marks it unread and read again
    # (both rows wait), then the mailbox's unread is announced: seen later, so it wins and
    # the CRM's rows are superseded.
    assert apply(inbox, {ub: (frozenset({SEEN}), 1500)}) == 1
    outbox = OutboxStore(env.messages.engine)
    outbox.record(crm(env, "b").id, "unread", user_id=None)
    outbox.record(crm(env, "b").id, "read", user_id=None)
    assert apply(inbox, {ub: (frozenset(), 2000)}) == 1
    assert crm(env, "b").flags == []
    assert outbox_rows(env) == [("unread", "superseded"), ("read", "superseded")]
    # A CRM change of a flag the mailbox did not change stands (the star waits to be applied).
    outbox.record(crm(env, "b").id, "star", user_id=None)
    assert apply(inbox, {ub: (frozenset({SEEN}), 2001)}) == 1
    assert crm(env, "b").flags == [FLAGGED, SEEN]
    assert outbox_rows(env)[-1] == ("star", "pending")
