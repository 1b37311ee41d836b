"""The mirror under faults: a connection cut mid-batch, and a process killed again and again.

After each fault a plain re-run must converge: the store holds exactly the mailbox (UIDs and
dedupe keys as the stdlib ``imaplib`` reads them), no message twice, and no orphan row
(:func:`mirror_helpers.audit_store`). Both run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import email.utils
import imaplib
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from correspond.errors import CorrespondError
from correspond.store.blobs import STALE_TEMP_SECONDS, BlobStore
from correspond.testing.dovecot import DovecotServer, ImapUser
from mirror_helpers import (
    BACKENDS,
    NOW,
    SYNC_CHILD,
    TODAY,
    CuttingProxy,
    Env,
    audit_store,
    make_env,
    pg_engine,  # noqa: F401  (a fixture, used through make_env)
    point_account_at,
)

pytestmark = pytest.mark.dovecot

KEY = Fernet.generate_key()


@pytest.fixture(params=BACKENDS)
def env(
    request: pytest.FixtureRequest, dovecot: DovecotServer, imap_user: ImapUser, tmp_path: Path
) -> Iterator[Env]:
    yield from make_env(request, dovecot, imap_user, tmp_path, key=KEY)


def fill_inbox(env: Env, count: int, *, body_bytes: int = 2000) -> None:
    """``count`` distinct messages of about ``body_bytes`` each, over one imaplib connection."""
    conn = env.server.imaplib_client(env.user)
    try:
        for n in range(count):
            when = NOW - timedelta(days=n % 50, minutes=n)
            line = f"Line {n} of a message long enough to span TLS records and literals.\r\n"
            raw = (
                f"Message-ID: <f{n}@example.test>\r\nDate: {email.utils.format_datetime(when)}\r\n"
                f"From: Alice <alice@example.test>\r\nTo: {env.user.address}\r\n"
                f"Subject: fault {n}\r\nMIME-Version: 1.0\r\n"
                "Content-Type: text/plain; charset=utf-8\r\n\r\n" + line * (body_bytes // len(line))
            ).encode()
            typ, data = conn.append("INBOX", None, imaplib.Time2Internaldate(when), raw)
            assert typ == "OK", data
    finally:
        conn.logout()


def assert_converged(env: Env, count: int, *, expunged: frozenset[str] = frozenset()) -> None:
    """INBOX in the store is exactly INBOX on the server, ``count`` messages in all, and the
    only messages left without a location are the ``expunged`` ones (by dedupe key)."""
    assert env.stored("INBOX") == env.remote("INBOX")
    assert env.messages.count_messages(env.account.id) == count
    assert env.messages.folder_checkpoint(env.folder("inbox").id).backfill_done
    problems = audit_store(env).problems
    unlocated = problems.pop("messages_without_location", [])
    assert problems == {}
    assert isinstance(unlocated, list)
    assert {env.messages.get_message(i).dedupe_key for i in unlocated} == expunged


# --- connection cut ------------------------------------------------------------------------------

MESSAGES = 40
# Server→client bytes of a whole backfill of MESSAGES through the proxy are ~110 KB; the cuts
# land in the STARTTLS handshake, inside the first batches, and deep in the backfill.
CUTS = [600, 20_000, 55_000, 95_000]


@pytest.mark.parametrize("cut_after", CUTS)
async def test_connection_cut_mid_batch_then_resume(env: Env, cut_after: int) -> None:
    fill_inbox(env, MESSAGES)
    async with CuttingProxy(env.server.host, env.server.port, cut_after=cut_after) as proxy:
        point_account_at(env.messages.engine, env.account.id, proxy.port)
        env.account = env.store.get_account(env.account.name)
        with pytest.raises(CorrespondError) as failure:
            await asyncio.wait_for(env.sync(env.syncer(batch_size=5)), 60)
        assert failure.value.transient, repr(failure.value)  # the account loop will retry
        assert proxy.cuts == 1
        # A cut in the handshake leaves no folder rows at all.
        listed = {f.role for f in env.store.list_folders(env.account.name)}
        partial = env.stored("INBOX") if "inbox" in listed else {}
        print(f"cut after {cut_after} B: {len(partial)} of {MESSAGES} stored")
        remote = env.remote("INBOX")
        # What was committed is exact (whole batches, newest first), and only that.
        assert all(remote[uid] == key for uid, key in partial.items())
        assert len(partial) % 5 == 0 and len(partial) < MESSAGES
        assert audit_store(env).problems == {}

        proxy.cut_after = None
        report = await asyncio.wait_for(env.sync(env.syncer(batch_size=5)), 60)
        assert proxy.cuts == 1
    assert report.created == MESSAGES - len(partial)  # resumed: nothing fetched twice
    assert_converged(env, MESSAGES)


async def test_proxy_traffic_matches_the_cut_points(env: Env) -> None:
    """Keeps :data:`CUTS` honest: an uncut backfill through the proxy moves more bytes than the
    deepest cut, so every cut above falls inside the backfill."""
    fill_inbox(env, MESSAGES)
    async with CuttingProxy(env.server.host, env.server.port, cut_after=None) as proxy:
        point_account_at(env.messages.engine, env.account.id, proxy.port)
        env.account = env.store.get_account(env.account.name)
        await env.sync(env.syncer(batch_size=5))
    print(f"server→client bytes per connection: {proxy.forwarded}")
    assert len(proxy.forwarded) == 1
    assert max(CUTS) < proxy.forwarded[0] < 2 * max(CUTS)
    assert_converged(env, MESSAGES)


# --- SIGKILL, several times --------------------------------------------------------------------

KILL_MESSAGES = 300
KILLS = 4


async def test_killed_again_and_again_then_converges(env: Env, tmp_path: Path) -> None:
    """SIGKILL the backfilling process KILLS times at random points, then run it clean."""
    seed = int(os.environ.get("CORRESPOND_KILL_SEED") or random.SystemRandom().randrange(2**32))
    print(f"kill seed: {seed} (CORRESPOND_KILL_SEED={seed} reproduces the delays)")
    rng = random.Random(seed)
    url = env.messages.engine.url.render_as_string(hide_password=False)
    args = [url, KEY.decode(), env.account.name, str(tmp_path / "data"), TODAY.isoformat(), "5"]
    loop = asyncio.get_running_loop()
    counts: list[int] = []

    def spawn() -> subprocess.Popen[bytes]:
        # Python and the engine's imports take 2-3 s on a loaded machine: the next run's
        # process imports while the mailbox fills or the run before it syncs, and starts its
        # sync when told to.
        return subprocess.Popen(
            [sys.executable, "-c", SYNC_CHILD, *args, "--wait"], stdin=subprocess.PIPE
        )

    waiting: subprocess.Popen[bytes] | None = spawn()
    try:
        fill_inbox(env, KILL_MESSAGES, body_bytes=600)
        for kill in range(KILLS):
            before = env.messages.count_messages(env.account.id)
            child, waiting = waiting, None
            assert child is not None and child.stdin is not None
            child.stdin.write(b"go\n")
            child.stdin.close()
            if kill + 1 < KILLS:
                waiting = spawn()
            try:
                deadline = loop.time() + 30
                # A random point: after a random number of messages of this run are committed
                # (so every run makes progress), then a random moment later, which lands in a
                # fetch, a parse, a blob write, a commit, or between them.
                target = before + rng.randint(1, 50)
                while env.messages.count_messages(env.account.id) < target:
                    assert child.poll() is None, f"run {kill} ended before its kill (seed {seed})"
                    assert loop.time() < deadline, f"run {kill} stalled (seed {seed})"
                    await asyncio.sleep(0.002)
                await asyncio.sleep(rng.uniform(0.0, 0.03))
                assert child.poll() is None, f"run {kill} finished before its kill (seed {seed})"
                child.kill()
            finally:
                if child.poll() is None:
                    child.kill()
                assert child.wait(timeout=30) == -9
            counts.append(env.messages.count_messages(env.account.id))
            # Whatever was committed is exact and consistent, even right after a kill.
            stored, remote = env.stored("INBOX"), env.remote("INBOX")
            assert all(remote[uid] == key for uid, key in stored.items())
            assert audit_store(env).problems == {}
    finally:
        if waiting is not None:  # the test failed before this run: it never starts
            waiting.kill()
            waiting.wait(timeout=30)
    print(f"messages stored after each kill: {counts}")
    assert counts == sorted(counts) and counts[0] > 0

    report = await env.sync(env.syncer(batch_size=5))
    assert report.created == KILL_MESSAGES - counts[-1]
    # A kill between writing a blob's temporary file and renaming it leaves the file behind;
    # the sweep finds and removes every one, and no stored blob.
    blob_root = tmp_path / "data" / "blobs"
    leftovers = list(blob_root.rglob(".tmp-*"))
    print(f"temporary blob files left by the kills: {len(leftovers)}")
    assert BlobStore(blob_root).sweep_temporary(older_than=0) == len(leftovers)
    assert list(blob_root.rglob(".tmp-*")) == []
    assert_converged(env, KILL_MESSAGES)


@pytest.mark.parametrize("cut_after", [8_000, 40_000])
async def test_connection_cut_during_a_live_pass_then_resume(env: Env, cut_after: int) -> None:
    """The cut lands in an incremental pass (new mail in batches, then flags and expunges):
    the next pass still brings every change, once."""
    fill_inbox(env, 10)
    await env.sync(env.syncer(batch_size=5))
    fill_inbox_more = [(n, NOW - timedelta(minutes=n)) for n in range(100, 130)]
    conn = env.server.imaplib_client(env.user)
    try:
        for n, when in fill_inbox_more:
            raw = (
                f"Message-ID: <f{n}@example.test>\r\nFrom: alice@example.test\r\n"
                f"Subject: live {n}\r\n\r\n" + "live body line\r\n" * 120
            ).encode()
            assert conn.append("INBOX", None, imaplib.Time2Internaldate(when), raw)[0] == "OK"
        assert conn.select("INBOX")[0] == "OK"
        assert conn.uid("STORE", "1:3", "+FLAGS", "(\\Seen)")[0] == "OK"
        assert conn.uid("STORE", "4", "+FLAGS", "(\\Deleted)")[0] == "OK"
        assert conn.uid("EXPUNGE", "4")[0] == "OK"
    finally:
        conn.logout()
    async with CuttingProxy(env.server.host, env.server.port, cut_after=cut_after) as proxy:
        point_account_at(env.messages.engine, env.account.id, proxy.port)
        env.account = env.store.get_account(env.account.name)
        with pytest.raises(CorrespondError) as failure:
            await asyncio.wait_for(env.sync(env.syncer(batch_size=5)), 60)
        assert failure.value.transient
        print(f"cut after {cut_after} B: {len(env.stored('INBOX'))} locations stored")
        proxy.cut_after = None
        await asyncio.wait_for(env.sync(env.syncer(batch_size=5)), 60)
    # UID 4 was the fourth message appended: expunged, so its CRM row has no location.
    assert_converged(env, 40, expunged=frozenset({"mid:f3@example.test"}))
    flags = env.messages.location_flags(env.folder("inbox").id)
    assert {uid for uid, f in flags.items() if "\\Seen" in f} == {1, 2, 3}


def test_sweep_removes_only_stale_temporary_files(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    key = blobs.put(b"kept" * 300)
    leaf = blobs.path_for(key).parent
    stale, fresh = leaf / ".tmp-stale", leaf / ".tmp-fresh"
    stale.write_bytes(b"half a blob")
    fresh.write_bytes(b"being written by another process")
    outside = tmp_path / ".tmp-not-in-a-fan-out-directory"
    outside.write_bytes(b"not ours to judge")
    old = time.time() - 2 * STALE_TEMP_SECONDS
    for path in (stale, outside):
        os.utime(path, (old, old))
    assert blobs.sweep_temporary() == 1
    assert not stale.exists() and fresh.exists() and outside.exists()
    assert blobs.get(key) == b"kept" * 300
    assert blobs.sweep_temporary(older_than=0) == 1  # the fresh one too, when told
    assert blobs.get(key) == b"kept" * 300
