"""One connection per live account: it IDLEs on INBOX between its commands.

A change ends IDLE (DONE), INBOX is synced on the same connection, and IDLE starts again;
Sent and the other folders are polled on it (STATUS first). These tests check that new mail
opens no connection, that a burst of changes during a sync is coalesced, that the per-folder
lock still serialises syncs, and that a live account holds one connection once the first
pass (and its helper connection) is over.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from correspond.store.messages import MessageData, ThreadCandidate, ThreadChoice
from correspond.sync.engine import default_thread_chooser
from test_sync_live import (  # the same fixtures and helpers as the other live tests
    Env,
    Running,
    append_many,
    raw_message,
    sqlite_env,
    wait_until,
)

__all__ = ["sqlite_env"]

pytestmark = pytest.mark.dovecot


async def test_changes_are_synced_on_the_idle_connection(sqlite_env: Env) -> None:
    env = sqlite_env
    syncer = env.syncer()
    async with Running(env, syncer, poll_seconds=600) as run:
        await run.live()
        inbox = env.folder("inbox")
        await wait_until(lambda: syncer.stats.idle_commands.get(inbox.id, 0) >= 1, 5)
        idles = syncer.stats.idle_commands[inbox.id]
        connects = syncer.stats.connects
        for i in range(4):
            await asyncio.to_thread(env.server.deliver, env.user, raw_message(f"kept{i}"))
            await wait_until(lambda i=i: f"mid:kept{i}@example.test" in env.stored_keys("INBOX"), 5)
        await wait_until(lambda: syncer.stats.idle_commands[inbox.id] >= idles + 4, 5)
        # Each change: DONE, sync, IDLE again, on the same connection; none opened for it.
        assert syncer.stats.connects == connects


async def test_a_burst_during_a_sync_is_coalesced(sqlite_env: Env) -> None:
    env = sqlite_env
    in_sync = 0
    most_at_once = 0

    def slow_chooser(
        data: MessageData, related: Sequence[ThreadCandidate], same: Sequence[ThreadCandidate]
    ) -> ThreadChoice:
        # Slow enough that the burst's later messages arrive while a sync is under way.
        nonlocal in_sync, most_at_once
        in_sync += 1
        most_at_once = max(most_at_once, in_sync)
        try:
            if (data.subject or "").startswith("burst"):
                time.sleep(0.15)
            return default_thread_chooser(data, related, same)
        finally:
            in_sync -= 1

    syncer = env.syncer(chooser=slow_chooser)
    async with Running(env, syncer, poll_seconds=600) as run:
        await run.live()
        inbox = env.folder("inbox")
        await wait_until(lambda: syncer.stats.idle_commands.get(inbox.id, 0) >= 1, 5)
        seen = len(run.reports)
        tags = [f"burst{i}" for i in range(10)]
        for tag in tags:
            await asyncio.to_thread(env.server.deliver, env.user, raw_message(tag))
            await asyncio.sleep(0.1)
        wanted = {f"mid:{t}@example.test" for t in tags}
        await wait_until(lambda: wanted <= env.stored_keys("INBOX"), 15, "burst stored")
        await asyncio.sleep(1.0)  # any sync still owed has run by now
        ours = [f for r in run.reports[seen:] for f in r.folders if f.folder_id == inbox.id]
        syncs = len(ours)
        created = sum(f.created for f in ours)
        print(f"10 deliveries -> {syncs} INBOX syncs")
        assert 1 <= syncs < len(tags)
        assert created == len(tags)
        assert most_at_once == 1  # the folder lock: never two syncs of INBOX at once
    assert env.stored_keys("INBOX") == env.remote_keys("INBOX")


def _sessions(env: Env) -> int:
    """How many IMAP sessions the server has for the test's user (``doveadm who``)."""
    out = subprocess.run(
        ["doveadm", "-c", str(env.server.config_path), "who", "-1", env.user.username],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    return sum(1 for line in out.splitlines()[1:] if line.split()[:1] == [env.user.username])


async def test_a_live_account_holds_one_connection(sqlite_env: Env) -> None:
    """The command connection IDLEs on INBOX between its commands: new mail is synced on it,
    Sent is polled on it, and the helper connection that watched INBOX while the first pass
    was busy (longer than HELPER_AFTER_SECONDS) is closed once the pass is over."""
    env = sqlite_env
    env.server.create_mailbox(env.user, "Big")
    append_many(env, "Big", [f"big{i}" for i in range(60)], subject="slow ")

    def slow_chooser(
        data: MessageData, related: Sequence[ThreadCandidate], same: Sequence[ThreadCandidate]
    ) -> ThreadChoice:
        if (data.subject or "").startswith("slow "):
            time.sleep(0.05)  # Big's backfill takes ~3 s: the helper connection opens
        return default_thread_chooser(data, related, same)

    syncer = env.syncer(chooser=slow_chooser, batch_size=5)
    async with Running(env, syncer, poll_seconds=0.5) as run:
        await run.live(timeout=20)
        inbox, sent = env.folder("inbox"), env.folder("sent")
        assert syncer.stats.connects == 2  # the command connection and the helper
        await wait_until(lambda: _sessions(env) == 1, 5, "one session")
        connects = syncer.stats.connects
        for i in range(3):
            await asyncio.to_thread(env.server.deliver, env.user, raw_message(f"one{i}"))
            await wait_until(lambda i=i: f"mid:one{i}@example.test" in env.stored_keys("INBOX"), 5)
        await asyncio.to_thread(env.server.append, env.user, "Sent", raw_message("one-sent"))
        await wait_until(lambda: "mid:one-sent@example.test" in env.stored_keys("sent"), 5)
        assert syncer.stats.connects == connects  # no connection opened for new mail
        assert _sessions(env) == 1
        assert set(syncer.stats.idle_commands) == {inbox.id}
        assert sent.id not in syncer.stats.idle_commands


async def test_a_poll_finding_nothing_new_syncs_nothing(sqlite_env: Env) -> None:
    """Folders without IDLE are polled with STATUS: an unchanged one costs one round trip (no
    SELECT, no queries, no state write); a new message or a flag change there is still seen at
    the next poll (CONDSTORE: HIGHESTMODSEQ moves with flags)."""
    env = sqlite_env
    append_many(env, "Archive", ["arch0"])
    syncer = env.syncer()
    async with Running(env, syncer, poll_seconds=0.2) as run:
        await run.live()
        archive = env.folder("Archive")
        await asyncio.sleep(1.0)  # the first polls record each folder's STATUS
        seen = len(run.reports)
        await asyncio.sleep(1.5)  # about seven polls
        synced = [f for r in run.reports[seen:] for f in r.folders]
        assert synced == []

        append_many(env, "Archive", ["arch1"])
        await wait_until(lambda: "mid:arch1@example.test" in env.stored_keys("Archive"), 5)
        with env.server.imaplib_client(env.user) as conn:
            conn.select("Archive")
            conn.uid("STORE", "1", "+FLAGS.SILENT", "(\\Flagged)")
        await wait_until(
            lambda: "\\Flagged" in env.messages.location_flags(archive.id).get(1, frozenset()),
            5,
            "the flag change in a polled folder",
        )


async def test_new_mail_is_not_queued_behind_a_busy_default_thread_pool(sqlite_env: Env) -> None:
    """With 1,000 accounts the loop's default thread pool is shared by every account's
    backfill, polls and state writes; new mail's queries queued seconds behind a burst of them.
    The sync a notification wakes runs its queries on threads of its own."""
    env = sqlite_env
    syncer = env.syncer()
    loop = asyncio.get_running_loop()
    busy = ThreadPoolExecutor(1, thread_name_prefix="test-busy-default")
    mine = ThreadPoolExecutor(2, thread_name_prefix="test-own")
    release = threading.Event()
    try:
        async with Running(env, syncer, poll_seconds=600) as run:
            await run.live()
            inbox = env.folder("inbox")
            await wait_until(lambda: syncer.stats.idle_commands.get(inbox.id, 0) >= 1, 5)
            # Every thread of the default pool busy for as long as the test runs.
            loop.set_default_executor(busy)
            blocker = loop.run_in_executor(None, release.wait, 30)
            await loop.run_in_executor(mine, env.server.deliver, env.user, raw_message("busy"))
            started = loop.time()
            while not await loop.run_in_executor(
                mine, lambda: "mid:busy@example.test" in env.stored_keys("INBOX")
            ):
                assert loop.time() - started < 10, "new mail waited for the default pool"
                await asyncio.sleep(0.02)
            assert not blocker.done()  # the default pool was busy all along
            release.set()
            await blocker
    finally:
        release.set()
        busy.shutdown(wait=True)
        mine.shutdown(wait=True)
