"""The live side of the mirror against a real (private) Dovecot.

One connection IDLEing on INBOX between its commands (new mail within ~2 s, even during a long
backfill of another folder, then on a helper connection; IDLE re-issued), Sent and the others
polled, polling of everything where the server has no IDLE, folder list and
selection changes while live, reconnects after a server BYE, the auth-failure backoff bound,
and the account states. Every test runs :meth:`AccountSyncer.run_account` as the runner does
and acts on the mailbox from the outside (LMTP, or imaplib as the user's other mail client).
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import random
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from correspond.rules.presets import AccountChanges
from correspond.settings import Settings
from correspond.store.blobs import BlobStore
from correspond.store.leases import AccountLeases
from correspond.store.messages import MessageData, MessageStore, ThreadCandidate, ThreadChoice
from correspond.store.records import Account, Folder
from correspond.store.repository import Store
from correspond.store.secrets import SecretBox
from correspond.store.tables import AccountRow
from correspond.sync.engine import AccountSyncer, AccountSyncReport, default_thread_chooser
from correspond.testing.dovecot import (
    BASIC_CAPABILITIES,
    DovecotServer,
    ImapUser,
    _make_certificate,
    dovecot_binary,
)
from correspond.testing.mail import plain_message
from correspond.testing.net import free_port
from correspond.testing.postgres import PostgresServer, temporary_database
from correspond.testing.store import add_dovecot_account, migrated_engine

pytestmark = pytest.mark.dovecot

NOW = datetime.now(UTC).replace(microsecond=0)
# What "arrives quickly" means here: IDLE push plus one incremental sync, on a loaded CI box.
FAST = 2.0


# --- fixtures -----------------------------------------------------------------------------------

# One key for the module: its PostgreSQL tests share a database, and the store refuses to
# seal a password under a key that opens none of the other accounts' secrets.
KEY = Fernet.generate_key()


class RecordingStore(Store):
    """The real store, remembering every state the engine writes (in order)."""

    def __init__(self, engine: Engine, key: bytes) -> None:
        super().__init__(engine, SecretBox(key))
        self.states: list[tuple[str, str]] = []

    def set_account_state(self, name: str, state: str, detail: str = "", **kw: Any) -> Account:
        self.states.append((state, detail))
        return super().set_account_state(name, state, detail, **kw)


class Env:
    """A store, blob store and account wired to one Dovecot user."""

    def __init__(self, engine: Engine, server: DovecotServer, user: ImapUser, tmp: Path) -> None:
        self.server = server
        self.user = user
        self.settings = Settings(data_dir=tmp / "data", secret_key=None)
        self.store = RecordingStore(engine, KEY)
        self.messages = MessageStore(engine)
        self.blobs = BlobStore(tmp / "data" / "blobs")
        self.account: Account = add_dovecot_account(self.store, server, user)

    def syncer(self, **kw: Any) -> AccountSyncer:
        kw.setdefault("backoff_base", 0.2)
        kw.setdefault("rng", random.Random(1))
        return AccountSyncer(self.store, self.messages, self.blobs, self.settings, **kw)

    def folder(self, name: str) -> Folder:
        for f in self.store.list_folders(self.account.name):
            if f.role == name or f.name == name:
                return f
        raise AssertionError(f"no folder {name!r}")

    def has_folder(self, name: str) -> bool:
        return any(f.name == name for f in self.store.list_folders(self.account.name))

    def stored_keys(self, name: str) -> set[str]:
        return set(self.messages.folder_contents(self.folder(name).id).values())

    def remote_keys(self, mailbox: str) -> set[str]:
        """The Message-IDs (as ``mid:`` dedupe keys) in ``mailbox``, read with imaplib."""
        conn = self.server.imaplib_client(self.user)
        try:
            assert conn.select(f'"{mailbox}"', readonly=True)[0] == "OK"
            typ, data = conn.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
            assert typ == "OK"
            return {
                "mid:" + item[1].decode().split(":", 1)[1].strip().strip("<>")
                for item in data
                if isinstance(item, tuple)
            }
        finally:
            with contextlib.suppress(Exception):
                conn.logout()

    def imap(self, *commands: tuple[str, ...]) -> None:
        """Run IMAP commands as the user's other mail client (each must answer OK)."""
        conn = self.server.imaplib_client(self.user)
        try:
            for name, *args in commands:
                typ, data = getattr(conn, name)(*args)
                assert typ == "OK", (name, args, data)
        finally:
            with contextlib.suppress(Exception):
                conn.logout()


def _sqlite(tmp_path: Path) -> contextlib.AbstractContextManager[Engine]:
    return migrated_engine(f"sqlite:///{tmp_path / 'store.db'}")


@pytest.fixture(scope="module")
def pg_engine(pg_server: PostgresServer) -> Iterator[Engine]:
    with (
        temporary_database(pg_server, prefix="correspond_live", migrated=True) as url,
        migrated_engine(url) as eng,
    ):
        yield eng


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def env(
    request: pytest.FixtureRequest, dovecot: DovecotServer, imap_user: ImapUser, tmp_path: Path
) -> Iterator[Env]:
    if request.param == "postgresql":
        yield Env(request.getfixturevalue("pg_engine"), dovecot, imap_user, tmp_path)
        return
    with _sqlite(tmp_path) as engine:
        yield Env(engine, dovecot, imap_user, tmp_path)


@pytest.fixture
def sqlite_env(dovecot: DovecotServer, imap_user: ImapUser, tmp_path: Path) -> Iterator[Env]:
    with _sqlite(tmp_path) as engine:
        yield Env(engine, dovecot, imap_user, tmp_path)


class NoIdleDovecot(DovecotServer):
    """A Dovecot whose post-login capabilities lack IDLE (as some providers' servers do)."""

    def _config(self, key_path: Path) -> str:
        text = super()._config(key_path)
        no_idle = BASIC_CAPABILITIES.replace(" IDLE ", " ")
        assert f"imap_capability = {BASIC_CAPABILITIES}" in text
        return text.replace(
            f"imap_capability = {BASIC_CAPABILITIES}", f"imap_capability = {no_idle}"
        )


@pytest.fixture(scope="module")
def dovecot_no_idle() -> Iterator[DovecotServer]:
    if dovecot_binary() is None:
        pytest.skip("dovecot is not installed (apt-get install dovecot-imapd dovecot-lmtpd)")
    server = NoIdleDovecot("basic")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def raw_message(tag: str, *, when: datetime = NOW, subject: str | None = None) -> bytes:
    return plain_message(
        f"{tag}@example.test", when=when, subject=subject or tag, body=f"Body of {tag}.\r\n"
    )


def append_many(env: Env, mailbox: str, tags: Sequence[str], *, subject: str = "") -> None:
    conn = env.server.imaplib_client(env.user)
    try:
        for tag in tags:
            typ, data = conn.append(
                f'"{mailbox}"',
                None,
                imaplib.Time2Internaldate(NOW),
                raw_message(tag, subject=subject + tag),
            )
            assert typ == "OK", data
    finally:
        conn.logout()


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str = "") -> float:
    """Poll ``predicate`` (a store read) every 20 ms; seconds it took, or fail after timeout."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not await asyncio.to_thread(predicate):
        if loop.time() - started > timeout:
            raise AssertionError(f"not reached within {timeout} s: {what}")
        await asyncio.sleep(0.02)
    return loop.time() - started


class Running:
    """``run_account`` as a background task, stopped (and awaited) on exit."""

    def __init__(self, env: Env, syncer: AccountSyncer, **kw: Any) -> None:
        self.env = env
        self.syncer = syncer
        self.stop = asyncio.Event()
        self.reports: list[AccountSyncReport] = []
        self.kw = kw
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Running:
        self.task = asyncio.create_task(
            self.syncer.run_account(
                self.env.account.name, stop=self.stop, on_synced=self.reports.append, **self.kw
            )
        )
        return self

    async def live(self, timeout: float = 10.0) -> None:
        """Wait for the first complete pass (the account is then live)."""
        assert self.task is not None
        await wait_until(
            lambda: bool(self.reports) or self.task is None or self.task.done(), timeout, "live"
        )
        if self.task.done():
            self.task.result()
        assert self.env.store.get_account(self.env.account.name).state == "live"

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 15)


# --- IDLE ---------------------------------------------------------------------------------------


async def test_inbox_delivery_arrives_by_idle_within_two_seconds(env: Env) -> None:
    append_many(env, "INBOX", ["before"])
    # A poll interval far beyond the test: only IDLE can bring the message in.
    async with Running(env, env.syncer(), poll_seconds=600) as run:
        await run.live()
        assert env.stored_keys("INBOX") == {"mid:before@example.test"}
        inbox = env.folder("inbox")
        await wait_until(lambda: run.syncer.stats.idle_commands.get(inbox.id, 0) >= 1, 5)
        started = time.perf_counter()
        await asyncio.to_thread(env.server.deliver, env.user, raw_message("pushed"))
        latency = await wait_until(
            lambda: "mid:pushed@example.test" in env.stored_keys("INBOX"), 10, "pushed"
        )
        total = time.perf_counter() - started
        print(f"INBOX push latency: {latency * 1000:.0f} ms after LMTP, {total * 1000:.0f} total")
        assert total < FAST
        # The pass that brought it was INBOX's own (IDLE, DONE, sync), not a full poll.
        await wait_until(lambda: len(run.reports) >= 2, 5)
        assert [f.folder_id for f in run.reports[-1].folders] == [inbox.id]
    assert env.stored_keys("INBOX") == env.remote_keys("INBOX")


async def test_sent_append_from_another_client_arrives_by_the_next_poll(sqlite_env: Env) -> None:
    """Sent is polled on the one connection (DONE, STATUS, IDLE again), not IDLEd on one of its
    own: a reply sent from another client is logged within a poll interval."""
    env = sqlite_env
    poll = 1.0
    async with Running(env, env.syncer(), poll_seconds=poll) as run:
        await run.live()
        inbox, sent = env.folder("inbox"), env.folder("sent")
        await wait_until(lambda: run.syncer.stats.idle_commands.get(inbox.id, 0) >= 1, 5)
        started = time.perf_counter()
        await asyncio.to_thread(env.server.append, env.user, "Sent", raw_message("my-reply"))
        await wait_until(lambda: "mid:my-reply@example.test" in env.stored_keys("sent"), 10)
        total = time.perf_counter() - started
        print(f"Sent poll latency: {total * 1000:.0f} ms")
        assert total < poll + FAST
        assert sent.id not in run.syncer.stats.idle_commands  # polled, never IDLEd on


async def test_old_dated_mail_arriving_while_live_is_taken(sqlite_env: Env) -> None:
    """The window bounds the backfill only: new mail is taken whatever its dates."""
    env = sqlite_env
    year_ago = NOW - timedelta(days=365)
    async with Running(env, env.syncer(), poll_seconds=0.5) as run:
        await run.live()
        inbox = env.folder("inbox")
        await wait_until(lambda: run.syncer.stats.idle_commands.get(inbox.id, 0) >= 1, 5)
        # An old Date header delivered now, and an old INTERNALDATE too (a client filing an old
        # message into Sent): both far outside the 60-day window.
        await asyncio.to_thread(env.server.deliver, env.user, raw_message("old", when=year_ago))
        await asyncio.to_thread(
            env.server.append,
            env.user,
            "Sent",
            raw_message("old-sent", when=year_ago),
            (),
            year_ago,
        )
        await wait_until(lambda: "mid:old@example.test" in env.stored_keys("inbox"), 5)
        await wait_until(lambda: "mid:old-sent@example.test" in env.stored_keys("sent"), 5)


async def test_inbox_mail_is_not_held_up_by_a_long_backfill(sqlite_env: Env) -> None:
    env = sqlite_env
    env.server.create_mailbox(env.user, "Big")
    append_many(env, "Big", [f"big{i}" for i in range(120)], subject="slow ")
    stored_slowly = 0

    def slow_chooser(
        data: MessageData, related: Sequence[ThreadCandidate], same: Sequence[ThreadCandidate]
    ) -> ThreadChoice:
        # A slow store for the big folder only: its backfill takes ~3 s.
        nonlocal stored_slowly
        if (data.subject or "").startswith("slow "):
            stored_slowly += 1
            time.sleep(0.025)
        return default_thread_chooser(data, related, same)

    syncer = env.syncer(chooser=slow_chooser, batch_size=5)
    async with Running(env, syncer, poll_seconds=600) as run:
        inbox = await asyncio.to_thread(lambda: _wait_folder_sync(env, "INBOX"))
        await wait_until(lambda: syncer.stats.idle_commands.get(inbox.id, 0) >= 1, 10)
        await wait_until(lambda: stored_slowly >= 10, 10, "Big backfill under way")
        started = time.perf_counter()
        await asyncio.to_thread(env.server.deliver, env.user, raw_message("urgent"))
        await wait_until(lambda: "mid:urgent@example.test" in env.stored_keys("INBOX"), 10)
        total = time.perf_counter() - started
        big = env.folder("Big")
        still_backfilling = not big.backfill_done
        print(f"INBOX during backfill: {total * 1000:.0f} ms; Big {big.backfill_done_count}/120")
        assert still_backfilling, "the backfill finished first: make it longer"
        assert total < FAST
        await run.live(timeout=20)
        assert len(env.stored_keys("Big")) == 120


def _wait_folder_sync(env: Env, name: str) -> Folder:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(AssertionError):
            folder = env.folder(name)
            if folder.backfill_done:
                return folder
        time.sleep(0.02)
    raise AssertionError(f"{name} not backfilled")


async def test_idle_is_reissued_and_keeps_working(sqlite_env: Env) -> None:
    env = sqlite_env
    syncer = env.syncer(idle_renew_seconds=0.3)
    async with Running(env, syncer, poll_seconds=600) as run:
        await run.live()
        inbox = env.folder("inbox")
        # Three renewals: DONE, then IDLE again on the same connection (RFC 2177 §3).
        await wait_until(lambda: syncer.stats.idle_commands.get(inbox.id, 0) >= 4, 5)
        connects = syncer.stats.connects
        await asyncio.to_thread(env.server.deliver, env.user, raw_message("after-renewals"))
        waited = await wait_until(
            lambda: "mid:after-renewals@example.test" in env.stored_keys("INBOX"), 5
        )
        assert waited < FAST
        assert syncer.stats.connects == connects  # the same connections, re-issued IDLE


# --- no IDLE: polling ---------------------------------------------------------------------------


async def test_server_without_idle_is_polled(
    dovecot_no_idle: DovecotServer, tmp_path: Path
) -> None:
    user = dovecot_no_idle.add_user()
    with _sqlite(tmp_path) as engine:
        env = Env(engine, dovecot_no_idle, user, tmp_path)
        syncer = env.syncer()
        async with Running(env, syncer, poll_seconds=0.5) as run:
            await run.live()
            assert syncer.stats.idle_commands == {}
            assert syncer.stats.connects == 1  # no IDLE connections: one command connection
            await asyncio.to_thread(env.server.deliver, env.user, raw_message("polled"))
            await asyncio.to_thread(env.server.append, env.user, "Sent", raw_message("polled-s"))
            await wait_until(lambda: "mid:polled@example.test" in env.stored_keys("INBOX"), 5)
            await wait_until(lambda: "mid:polled-s@example.test" in env.stored_keys("sent"), 5)
            assert syncer.stats.idle_commands == {}


# --- folder list and selection ------------------------------------------------------------------


async def test_folder_created_renamed_deleted_elsewhere(env: Env) -> None:
    syncer = env.syncer(folder_refresh_interval=0.3)
    async with Running(env, syncer, poll_seconds=600) as run:
        await run.live()
        env.server.create_mailbox(env.user, "Projects")
        append_many(env, "Projects", ["p1", "p2"])
        await wait_until(lambda: env.has_folder("Projects"), 5, "created folder listed")
        await wait_until(
            lambda: env.stored_keys("Projects") == {"mid:p1@example.test", "mid:p2@example.test"}, 5
        )
        old = env.folder("Projects")
        count = env.messages.count_messages(env.account.id)

        env.imap(("rename", '"Projects"', '"Clients"'))
        await wait_until(lambda: env.has_folder("Clients"), 5, "renamed folder listed")
        await wait_until(lambda: env.stored_keys("Clients") == env.remote_keys("Clients"), 5)
        await wait_until(lambda: env.messages.count_locations(old.id) == 0, 5)
        assert not env.has_folder("Projects")
        assert env.messages.count_messages(env.account.id) == count  # kept, not duplicated
        # Seen as a rename (same UIDVALIDITY under the new name), not a delete and a create.
        assert (syncer.stats.folders_renamed, syncer.stats.folders_deleted) == (1, 0)
        assert syncer.stats.folders_created == 1  # "Projects" itself

        clients = env.folder("Clients")
        env.imap(("delete", '"Clients"'))
        await wait_until(lambda: not env.has_folder("Clients"), 5, "deleted folder gone")
        await wait_until(lambda: env.messages.count_locations(clients.id) == 0, 5)
        assert syncer.stats.folders_deleted == 1
        # The messages stay (whether the CRM copy goes is the toggle rules' call).
        assert env.messages.count_messages(env.account.id) == count


async def test_rename_keeps_a_hand_picked_selection(sqlite_env: Env) -> None:
    env = sqlite_env
    env.server.create_mailbox(env.user, "Deals")
    env.server.create_mailbox(env.user, "Noise")
    append_many(env, "Deals", ["d1"])
    append_many(env, "Noise", ["n1"])
    syncer = env.syncer(folder_refresh_interval=0.3, selection_check_interval=0.2)
    # First pass lists the folders; then the user picks INBOX and Deals only.
    async with Running(env, syncer, poll_seconds=600) as run:
        await run.live()
        env.store.select_folders(env.account.name, refs=["INBOX", "Deals"])
        await wait_until(lambda: env.messages.count_locations(env.folder("Noise").id) == 0, 5)
        assert env.stored_keys("Deals") == {"mid:d1@example.test"}
        env.imap(("rename", '"Deals"', '"Won deals"'))
        await wait_until(lambda: env.has_folder("Won deals"), 5)
        won = env.folder("Won deals")
        assert won.selected  # the user's choice followed the rename
        await wait_until(lambda: env.stored_keys("Won deals") == {"mid:d1@example.test"}, 5)
        assert not env.folder("Noise").selected
        assert env.messages.count_messages(env.account.id) == 2  # n1 kept, d1 not duplicated


async def test_selection_change_while_live(sqlite_env: Env) -> None:
    env = sqlite_env
    env.server.create_mailbox(env.user, "Later")
    append_many(env, "Later", ["l1", "l2"])
    append_many(env, "INBOX", ["i1"])
    syncer = env.syncer(selection_check_interval=0.2)
    async with Running(env, syncer, poll_seconds=600) as run:
        await run.live()
        assert env.stored_keys("Later") == {"mid:l1@example.test", "mid:l2@example.test"}
        # Drop "Later": its locations go, its messages stay, counted as located nowhere.
        env.store.select_folders(env.account.name, refs=["INBOX"])
        later = env.folder("Later")
        await wait_until(lambda: env.messages.count_locations(later.id) == 0, 5)
        assert env.messages.count_messages(env.account.id) == 3
        # Take it back: backfilled again, re-linked to the same rows.
        env.store.select_folders(env.account.name, refs=["INBOX", "Later"])
        await wait_until(lambda: len(env.stored_keys("Later")) == 2, 5)
        assert env.messages.count_messages(env.account.id) == 3


# --- failures -----------------------------------------------------------------------------------


def _max_attempts(seconds: float, base: float, cap: float) -> int:
    """Most login attempts the auth-failure backoff allows in ``seconds``: each wait is at least
    half of ``min(cap, base * 2**(k-1))`` (``floor=0.5``)."""
    attempts, elapsed, k = 1, 0.0, 1
    while True:
        elapsed += 0.5 * min(cap, base * 2 ** (k - 1))
        if elapsed > seconds:
            return attempts
        attempts += 1
        k += 1


async def test_auth_failure_backs_off_then_recovers(sqlite_env: Env) -> None:
    env = sqlite_env
    env.store.set_account_secret(env.account.name, "not-the-password")
    base, cap, span = 0.1, 0.8, 3.0
    syncer = env.syncer(backoff_base=base, backoff_cap=cap, max_refused_logins=100)
    async with Running(env, syncer, poll_seconds=600) as run:
        await asyncio.sleep(span)
        account = env.store.get_account(env.account.name)
        assert account.state == "auth_failed"
        # Dovecot's own words, as it sent them.
        assert "Authentication failed." in account.state_detail
        attempts = syncer.stats.logins
        bound = _max_attempts(span + 0.5, base, cap)
        print(f"login attempts in {span} s: {attempts} (backoff allows at most {bound})")
        assert 2 <= attempts <= bound
        # The user fixes the password: the next retry succeeds without a restart.
        env.store.set_account_secret(env.account.name, env.user.password)
        await run.live(timeout=5)
    # The server saw the same refused logins (Dovecot logs each when the connection closes):
    # no hidden retries. The last login was the good one.
    failed = syncer.stats.logins - 1
    await wait_until(lambda: _auth_failures_in_log(env.server, env.user) >= attempts, 5)
    assert attempts <= _auth_failures_in_log(env.server, env.user) <= failed
    assert env.store.get_account(env.account.name).state == "live"


async def test_refused_logins_stop_until_the_user_acts(sqlite_env: Env) -> None:
    """Providers lock a mailbox that keeps failing to sign in: after a few refusals in a row
    the engine stops trying, says why, and tries again once the user updates or resumes."""
    env = sqlite_env
    name = env.account.name
    env.store.set_account_secret(name, "not-the-password")
    syncer = env.syncer(
        backoff_base=0.05, backoff_cap=0.1, max_refused_logins=3, selection_check_interval=0.1
    )
    async with Running(env, syncer, poll_seconds=600) as run:
        await wait_until(lambda: "Stopped trying" in env.store.get_account(name).state_detail, 10)
        account = env.store.get_account(name)
        assert account.state == "auth_failed"
        assert "refused the login 3 times in a row" in account.state_detail
        assert f"correspond account update {name} --password-stdin" in account.state_detail
        assert syncer.stats.logins == 3
        await asyncio.sleep(1.0)
        assert syncer.stats.logins == 3  # no more attempts while nobody acted
        # The user fixes the password; the CLI then resumes the account (its state leaves
        # auth_failed), and the same task signs in without a restart.
        env.store.set_account_secret(name, env.user.password)
        AccountLeases(env.store.engine).resume(name)
        await run.live(timeout=10)
    assert syncer.stats.logins > 3  # signed in again (a live session opens several connections)


async def test_changed_connection_settings_reconnect_at_once(sqlite_env: Env) -> None:
    """A live session notices that the user changed how the account connects and reconnects
    with the new settings; a correction ends the backoff wait instead of sitting it out."""
    env = sqlite_env
    name = env.account.name
    # A long backoff: only the user's correction may end the wait within the test.
    syncer = env.syncer(backoff_base=60.0, backoff_cap=60.0, selection_check_interval=0.1)
    async with Running(env, syncer, poll_seconds=600) as run:
        await run.live()
        connects = syncer.stats.connects
        dead = free_port()
        # (The password goes with each change: a change without one would drop it.)
        env.store.update_account(name, AccountChanges(imap_port=dead), secret=env.user.password)
        await wait_until(lambda: env.store.get_account(name).state == "disconnected", 10)
        assert f":{dead}" in env.store.get_account(name).state_detail
        env.store.update_account(
            name, AccountChanges(imap_port=env.server.port), secret=env.user.password
        )
        assert env.store.get_account(name).state == "connecting"  # the store's own reset
        started = time.monotonic()
        await wait_until(lambda: env.store.get_account(name).state == "live", 10)
        assert time.monotonic() - started < 10  # not the 30-60 s of the backoff
        assert syncer.stats.connects > connects + 1
        # New mail still arrives, through the new session.
        await asyncio.to_thread(env.server.deliver, env.user, raw_message("after-change"))
        await wait_until(
            lambda: "mid:after-change@example.test" in env.stored_keys("INBOX"), FAST * 3
        )


async def test_a_dropped_password_stops_a_live_account_without_sending_it(
    sqlite_env: Env,
) -> None:
    """A change of where the account connects without a new password drops the stored one
    (Store.update_account): the live session ends, and the account stays stopped in ``error``
    saying a password is needed; the new endpoint is never contacted. (A connection opened
    to the old server just before the change was seen may still sign in there: that is where
    the password was entered for.)"""
    env = sqlite_env
    name = env.account.name
    syncer = env.syncer(backoff_base=60.0, backoff_cap=60.0, selection_check_interval=0.1)
    with socket.create_server(("127.0.0.1", 0)) as elsewhere:
        elsewhere.setblocking(False)
        async with Running(env, syncer, poll_seconds=600) as run:
            await run.live()
            port = elsewhere.getsockname()[1]
            env.store.update_account(name, AccountChanges(imap_port=port))
            await wait_until(lambda: run.task is not None and run.task.done(), 10, "stopped")
            account = env.store.get_account(name)
            assert account.state == "error" and not account.has_secret
            assert "password" in account.state_detail
        with pytest.raises(BlockingIOError):
            elsewhere.accept()  # nobody connected to the new endpoint


def _auth_failures_in_log(server: DovecotServer, user: ImapUser) -> int:
    text = server.log_path.read_text(errors="replace")
    return sum(
        1
        for line in text.splitlines()
        if "imap-login" in line and f"user=<{user.username}>" in line and "auth failed" in line
    )


async def test_server_bye_reconnects_and_continues(sqlite_env: Env) -> None:
    env = sqlite_env
    syncer = env.syncer(backoff_base=0.2)
    async with Running(env, syncer, poll_seconds=600) as run:
        await run.live()
        inbox = env.folder("inbox")
        await wait_until(lambda: syncer.stats.idle_commands.get(inbox.id, 0) >= 1, 5)
        connects = syncer.stats.connects
        kicked = subprocess.run(
            ["doveadm", "-c", str(env.server.config_path), "kick", env.user.username],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert kicked.returncode == 0, kicked.stderr
        # The connection got BYE: the session ends, the account reconnects (one connection).
        await wait_until(lambda: syncer.stats.connects > connects, 5, "reconnected")
        # Dovecot writes BYE and closes: a connection that was writing at that moment sees
        # the reset first, so the session may end on either; both are "disconnected".
        lost = [d for state, d in env.store.states if state == "disconnected"]
        assert lost, env.store.states
        assert all("BYE" in d or "closed" in d for d in lost), lost
        await wait_until(
            lambda: env.store.get_account(env.account.name).state == "live", 5, "live again"
        )
        await wait_until(lambda: syncer.stats.idle_commands.get(inbox.id, 0) >= 2, 5)
        await asyncio.to_thread(env.server.deliver, env.user, raw_message("after-bye"))
        await wait_until(lambda: "mid:after-bye@example.test" in env.stored_keys("INBOX"), 5)
    assert env.stored_keys("INBOX") == env.remote_keys("INBOX")


async def test_states_in_order_with_last_sync_time(sqlite_env: Env) -> None:
    env = sqlite_env
    append_many(env, "INBOX", ["s1"])
    before = datetime.now(UTC)
    async with Running(env, env.syncer(), poll_seconds=600) as run:
        await run.live()
        first = env.store.get_account(env.account.name)
        assert first.last_sync_at is not None and first.last_sync_at >= before
        assert first.connected_at is not None and first.connected_at >= before
        await asyncio.sleep(0.05)
        await asyncio.to_thread(env.server.deliver, env.user, raw_message("s2"))
        await wait_until(lambda: "mid:s2@example.test" in env.stored_keys("INBOX"), 5)
        await wait_until(
            lambda: env.store.get_account(env.account.name).last_sync_at != first.last_sync_at, 5
        )
    names = [state for state, _ in env.store.states]
    assert names[:3] == ["connecting", "backfilling", "live"]
    assert env.store.states[0][1] == f"Connecting to {env.server.host}:{env.server.port}"
    assert "INBOX" in env.store.states[1][1]


async def test_a_permanent_error_is_recorded_with_its_reason(sqlite_env: Env) -> None:
    env = sqlite_env
    # A certificate the server does not have: TLS can never succeed until the user acts.
    with Session(env.store.engine) as s, s.begin():
        row = s.get(AccountRow, env.account.id)
        assert row is not None
        row.trusted_cert_pem = _other_certificate()
    syncer = env.syncer()
    await asyncio.wait_for(syncer.run_account(env.account.name, stop=asyncio.Event()), 15)
    account = env.store.get_account(env.account.name)
    assert account.state == "error"
    assert "certificate" in account.state_detail.lower()
    assert syncer.stats.retries == 0


def _other_certificate() -> str:
    """A self-signed certificate for the same host name that the server does not hold."""
    with tempfile.TemporaryDirectory() as d:
        _, _, pem = _make_certificate(Path(d))
    return pem


async def test_a_refused_folder_shows_in_the_live_state_until_it_recovers(
    sqlite_env: Env,
) -> None:
    env = sqlite_env
    env.server.create_mailbox(env.user, "Locked")
    append_many(env, "Locked", ["locked1"])
    folder_dir = env.server.maildir(env.user) / ".Locked"
    assert folder_dir.is_dir()
    mode = folder_dir.stat().st_mode
    folder_dir.chmod(0)  # the server can list it but not open it
    try:
        async with Running(env, env.syncer(), poll_seconds=0.3) as run:
            await run.live()
            detail = env.store.get_account(env.account.name).state_detail
            assert detail.startswith("Up to date except 1 folder(s) - Locked: ")
            assert "NO" in detail
            folder_dir.chmod(mode)
            await wait_until(
                lambda: env.store.get_account(env.account.name).state_detail == "Up to date", 5
            )
            assert env.stored_keys("Locked") == {"mid:locked1@example.test"}
    finally:
        folder_dir.chmod(mode)
