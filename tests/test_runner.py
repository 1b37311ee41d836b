"""The sync runner against the private Dovecot: every active account runs, new accounts and
resumed ones are picked up, paused ones stop, and two runners never sync one account at once.

Each test uses fresh mailbox users and a fresh store (SQLite and PostgreSQL through the shared
``store`` fixture; the lease-race tests only on PostgreSQL, where ``SKIP LOCKED`` is in play).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from correspond.errors import ConfigError
from correspond.rules.presets import AccountDraft
from correspond.settings import Settings
from correspond.store import Store, open_store
from correspond.store.blobs import BlobStore
from correspond.store.leases import AccountLeases
from correspond.store.messages import MessageStore
from correspond.store.tables import AccountRow, utcnow
from correspond.sync.engine import AccountSyncer
from correspond.sync.runner import STOPPED_DETAIL, SyncRunner, sync_account_once
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.mail import plain_message
from correspond.testing.postgres import PostgresServer, temporary_database
from correspond.testing.store import add_dovecot_account

pytestmark = [pytest.mark.dovecot, pytest.mark.timeout(120)]

NOW = datetime.now(UTC).replace(microsecond=0)


def raw_message(n: int | str, *, when: datetime | None = None) -> bytes:
    return plain_message(
        f"r{n}@example.test", when=when or NOW, subject=f"runner {n}", body=f"Body {n}.\r\n"
    )


def add_account(
    store: Store, server: DovecotServer, user: ImapUser, *, password: str | None = None
) -> str:
    return add_dovecot_account(store, server, user, password).name


def message_count(store: Store, name: str) -> int:
    return MessageStore(store.engine).count_messages(store.get_account(name).id)


async def eventually(
    check: Callable[[], bool], *, timeout: float = 30.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(check):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def fast_runner(store: Store, settings: Settings, **kw: object) -> SyncRunner:
    options: dict[str, object] = {
        "poll_seconds": 0.3,
        "lease_seconds": 5.0,
        "stop_grace_seconds": 2.0,
    }
    options.update(kw)
    return SyncRunner(store, settings, **options)  # type: ignore[arg-type]


@pytest.fixture
def settings(store_settings: Settings, store_url: str) -> Settings:
    """The settings ``store`` was opened with (same database, blobs under the data dir)."""
    return store_settings.clone(database_url=store_url)


# -- the runner on each backend ------------------------------------------------------------


async def test_runner_picks_up_new_account_and_syncs_live(
    store: Store, settings: Settings, dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    for n in range(3):
        dovecot.deliver(imap_user, raw_message(f"a{n}"))
    runner = fast_runner(store, settings)
    runner.start()
    try:
        await asyncio.sleep(0.5)
        assert runner.running == frozenset()  # nothing to do yet
        name = add_account(store, dovecot, imap_user)  # added while the runner runs
        await eventually(
            lambda: store.get_account(name).state == "live" and message_count(store, name) == 3,
            what="the new account to be backfilled and live",
        )
        account = store.get_account(name)
        assert account.lease_owner == runner.owner
        assert account.last_sync_at is not None and account.connected_at is not None
        assert runner.running == {name}

        # Live: a delivery reaches the store through IDLE, well before the 60 s full poll.
        dovecot.deliver(imap_user, raw_message("live"))
        started = time.monotonic()
        await eventually(lambda: message_count(store, name) == 4, what="the delivered message")
        assert time.monotonic() - started < 20
    finally:
        await runner.shutdown()
    account = store.get_account(name)
    # Clean shutdown: nobody holds the account, and it says it waits for a worker.
    assert account.lease_owner is None and account.lease_expires_at is None
    assert account.state == "connecting"
    assert account.state_detail == STOPPED_DETAIL.format(owner=runner.owner)
    assert runner.running == frozenset()


async def test_pause_stops_syncing_and_resume_catches_up(
    store: Store, settings: Settings, dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    dovecot.deliver(imap_user, raw_message("p0"))
    name = add_account(store, dovecot, imap_user)
    leases = AccountLeases(store.engine)
    runner = fast_runner(store, settings)
    runner.start()
    try:
        await eventually(lambda: store.get_account(name).state == "live", what="live")
        assert message_count(store, name) == 1

        paused = leases.pause(name)
        assert paused.state == "paused"
        await eventually(
            lambda: name not in runner.running and store.get_account(name).lease_owner is None,
            what="the runner to let go of the paused account",
        )
        dovecot.deliver(imap_user, raw_message("p1"))
        await asyncio.sleep(1.5)  # several lease rounds: a paused account is not synced
        assert message_count(store, name) == 1
        account = store.get_account(name)
        assert (account.state, account.state_detail) == ("paused", "Paused by the user.")

        resumed = leases.resume(name)
        assert resumed.state == "connecting"
        await eventually(
            lambda: message_count(store, name) == 2 and store.get_account(name).state == "live",
            what="the resumed account to catch up",
        )
        assert store.get_account(name).lease_owner == runner.owner
    finally:
        await runner.shutdown()


async def test_refused_sign_in_is_shown_and_retried_until_fixed(
    store: Store, settings: Settings, dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    name = add_account(store, dovecot, imap_user, password="wrong-password")
    runner = fast_runner(store, settings)
    runner.start()
    try:
        await eventually(lambda: store.get_account(name).state == "auth_failed", what="auth_failed")
        detail = store.get_account(name).state_detail
        # The server's own words (Dovecot: "[AUTHENTICATIONFAILED] Authentication failed.").
        assert "Authentication failed" in detail, detail
        # The engine retries with backoff, so the worker keeps the account (and its lease).
        await asyncio.sleep(1.0)
        assert name in runner.running
        assert store.get_account(name).lease_owner == runner.owner
        store.set_account_secret(name, imap_user.password)  # the user fixes the password
        await eventually(lambda: store.get_account(name).state == "live", what="recovery")
        assert runner.stats.started.count(name) == 1  # one task throughout
    finally:
        await runner.shutdown()


async def test_removed_account_task_stops(
    store: Store, settings: Settings, dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    name = add_account(store, dovecot, imap_user)
    runner = fast_runner(store, settings)
    runner.start()
    try:
        await eventually(lambda: store.get_account(name).state == "live", what="live")
        store.remove_account(name)
        await eventually(lambda: runner.running == frozenset(), what="the task to stop")
        # The task may end on its own (its account is gone) a moment before the runner's
        # stop records it.
        await eventually(lambda: name in runner.stats.stopped, what="the stop recorded")
    finally:
        await runner.shutdown()


async def test_runner_parses_in_a_shared_process_pool(
    store: Store, settings: Settings, dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    second = dovecot.add_user()
    for n in range(4):
        dovecot.deliver(imap_user, raw_message(f"x{n}"))
        dovecot.deliver(second, raw_message(f"y{n}"))
    first_name = add_account(store, dovecot, imap_user)
    second_name = add_account(store, dovecot, second)
    executors: list[Executor | None] = []

    def factory(
        s: Store,
        m: MessageStore,
        b: BlobStore,
        st: Settings,
        executor: Executor | None,
        batch: int,
    ) -> AccountSyncer:
        executors.append(executor)
        return AccountSyncer(s, m, b, st, parse_executor=executor, batch_size=batch)

    runner = fast_runner(store, settings, parse_processes=1, syncer_factory=factory)
    runner.start()
    try:
        await eventually(
            lambda: (
                message_count(store, first_name) == 4 and message_count(store, second_name) == 4
            ),
            what="both accounts backfilled",
        )
    finally:
        await runner.shutdown()
    assert len(executors) == 2 and executors[0] is not None and executors[0] is executors[1]


# -- one-off sync --------------------------------------------------------------------------


async def test_sync_once_refuses_an_account_another_worker_holds(
    store: Store, settings: Settings, dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    name = add_account(store, dovecot, imap_user)
    leases = AccountLeases(store.engine)
    assert [h.name for h in leases.claim("other-worker", 30)] == [name]
    with pytest.raises(ConfigError, match="other-worker"):
        await sync_account_once(store, settings, name)
    assert store.get_account(name).lease_owner == "other-worker"
    leases.release("other-worker")
    result = await sync_account_once(store, settings, name)
    assert result.ok and result.account.state == "connecting"
    assert "not watching for new mail" in result.account.state_detail
    assert result.account.lease_owner is None


# -- leases on PostgreSQL ------------------------------------------------------------------


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> Iterator[str]:
    with temporary_database(pg_server, prefix="correspond_h8", migrated=True) as url:
        yield url


@pytest.mark.postgres
def test_concurrent_claims_never_share_an_account(pg_url: str, tmp_path: Path) -> None:
    """Eight threads claim at once, again and again: every account has one holder."""
    settings = Settings(data_dir=tmp_path / "data", database_url=pg_url, secret_key=None)
    store = open_store(settings)
    try:
        for n in range(12):
            _plain_account(store, f"acct{n}", user=f"u{n}")
        leases = AccountLeases(store.engine)
        barrier = threading.Barrier(8)
        results: dict[str, list[str]] = {}
        errors: list[BaseException] = []

        def claimer(owner: str) -> None:
            try:
                barrier.wait()
                got: list[str] = []
                for _ in range(5):
                    got = [h.name for h in leases.claim(owner, 30, limit=3)]
                results[owner] = got
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        claimed = [n for names in results.values() for n in names]
        assert len(claimed) == len(set(claimed)) == 12  # all taken, none twice
        assert all(len(names) <= 3 for names in results.values())
        for owner, names in results.items():
            for n in names:
                assert store.get_account(n).lease_owner == owner
    finally:
        store.close()


@pytest.mark.postgres
async def test_two_runners_never_sync_one_account_at_once(
    pg_url: str, tmp_path: Path, dovecot: DovecotServer
) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=pg_url, secret_key=None)
    # Two processes' worth of runners: separate stores (connection pools) on one database.
    store_a, store_b = open_store(settings), open_store(settings)
    users = [dovecot.add_user() for _ in range(4)]
    for i, user in enumerate(users):
        for n in range(2):
            dovecot.deliver(user, raw_message(f"{i}-{n}"))
        add_account(store_a, dovecot, user)
    names = [u.username for u in users]

    # Who is inside run_account for which account, right now; any overlap is a failure.
    active: dict[str, str] = {}
    overlaps: list[str] = []
    runs: list[tuple[str, str]] = []

    def recording_factory(owner_label: str) -> Callable[..., AccountSyncer]:
        class Recording(AccountSyncer):
            async def run_account(self, account_name: str, **kw: object) -> None:  # type: ignore[override]
                if account_name in active:
                    overlaps.append(f"{account_name}: {active[account_name]} and {owner_label}")
                active[account_name] = owner_label
                runs.append((account_name, owner_label))
                try:
                    await super().run_account(account_name, **kw)  # type: ignore[arg-type]
                finally:
                    active.pop(account_name, None)

        def factory(
            s: Store, m: MessageStore, b: BlobStore, st: Settings, ex: Executor | None, n: int
        ) -> AccountSyncer:
            return Recording(s, m, b, st, parse_executor=ex, batch_size=n)

        return factory

    runner_a = fast_runner(
        store_a, settings, owner="A", max_accounts=2, syncer_factory=recording_factory("A")
    )
    runner_b = fast_runner(
        store_b, settings, owner="B", max_accounts=3, syncer_factory=recording_factory("B")
    )
    runner_a.start()
    runner_b.start()
    try:
        await eventually(
            lambda: all(store_a.get_account(n).state == "live" for n in names),
            what="all four accounts live",
        )
        held = {n: store_a.get_account(n).lease_owner for n in names}
        assert set(held.values()) == {"A", "B"}
        owners = list(held.values())
        # Whoever claimed first, each stays within its cap and together they hold all four.
        assert 1 <= owners.count("A") <= 2 and 2 <= owners.count("B") <= 3
        assert runner_a.running.isdisjoint(runner_b.running)
        assert runner_a.running | runner_b.running == set(names)

        # A shuts down: B (room for 3) takes over what A held, but never while A still runs it.
        a_had = set(runner_a.running)
        await runner_a.shutdown()
        await eventually(lambda: len(runner_b.running) == 3, what="B to take over within its limit")
        assert all(store_a.get_account(n).lease_owner in ("B", None) for n in a_had)
        if len(a_had) == 2:  # B had two, so it had room for one of A's
            assert any(n in runner_b.running for n in a_had)
        assert not overlaps, overlaps

        # A dead worker's lease is honoured until it expires, then taken over.
        orphan = next(n for n in names if n not in runner_b.running)
        leases = AccountLeases(store_a.engine)
        await runner_b.shutdown()
        with store_a.engine.begin() as conn:
            conn.execute(
                update(AccountRow)
                .where(AccountRow.name == orphan)
                .values(lease_owner="dead-worker", lease_expires_at=utcnow() + timedelta(seconds=3))
            )
        runner_c = fast_runner(store_b, settings, owner="C", syncer_factory=recording_factory("C"))
        runner_c.start()
        try:
            await asyncio.sleep(1.0)
            assert orphan not in runner_c.running  # still dead-worker's
            await eventually(lambda: orphan in runner_c.running, what="takeover after expiry")
            assert leases.holder(orphan) is not None
            assert leases.holder(orphan)[0] == "C"  # type: ignore[index]
        finally:
            await runner_c.shutdown()
    finally:
        await runner_a.shutdown()
        await runner_b.shutdown()
        store_a.close()
        store_b.close()
    assert not overlaps, overlaps
    assert {owner for _n, owner in runs} == {"A", "B", "C"}


# -- lease and state SQL, both backends (no server needed) ----------------------------------


def _plain_account(store: Store, name: str, *, user: str | None = None) -> None:
    """An account on a server that is never contacted; ``user`` (default: ``name``) is its
    login and the local part of its address."""
    user = user or name
    store.add_account(
        AccountDraft(
            name=name,
            preset="generic",
            email=f"{user}@example.test",
            username=user,
            imap_host="imap.example.test",
            imap_port=143,
            imap_security="starttls",
            smtp_host=None,
            smtp_port=587,
            smtp_security="starttls",
        ),
        "pw",
    )


def test_lease_claim_renew_expire_release(store: Store) -> None:
    for name in ("a0", "a1", "a2", "a3"):
        _plain_account(store, name)
    leases = AccountLeases(store.engine)
    t0 = utcnow()
    assert [h.name for h in leases.claim("w1", 10, names=["a2"], now=t0)] == ["a2"]
    # A limit keeps what the worker already runs (a2), rather than the free lower ids.
    assert [h.name for h in leases.claim("w1", 10, limit=1, now=t0)] == ["a2"]
    leases.pause("a3")
    # w2 gets the free runnable ones; not w1's (unexpired), not the paused one.
    assert [h.name for h in leases.claim("w2", 10, now=t0)] == ["a0", "a1"]
    assert leases.holder("a2", now=t0) is not None
    # Renewal moves the expiry; after expiry without renewal, another worker takes it.
    renewed = leases.claim("w1", 10, now=t0 + timedelta(seconds=8))
    assert [h.name for h in renewed] == ["a2"]
    assert renewed[0].expires_at == t0 + timedelta(seconds=18)
    assert "a2" not in [h.name for h in leases.claim("w2", 10, now=t0 + timedelta(seconds=9))]
    late = t0 + timedelta(seconds=19)
    assert [h.name for h in leases.claim("w2", 10, now=late)] == ["a0", "a1", "a2"]
    assert leases.claim("w1", 10, now=late) == []
    assert leases.holder("a2", now=late) == ("w2", late + timedelta(seconds=10))
    # Only the holder writes sync states, and never over a pause.
    assert not leases.set_state_if_held("a2", "w1", "live", "stale worker")
    assert leases.set_state_if_held("a2", "w2", "live", "Up to date")
    assert store.get_account("a2").state == "live"
    leases.pause("a2")
    assert not leases.set_state_if_held("a2", "w2", "live", "Up to date")
    assert store.get_account("a2").state == "paused"
    assert "a2" not in [h.name for h in leases.claim("w2", 10, now=late)]
    assert leases.resume("a2").state == "connecting"
    assert leases.resume("a0").state == "connecting"  # not paused: unchanged
    assert leases.release("w2", ["a0"]) == 1
    assert leases.holder("a0") is None
    assert leases.release("w2") == 2  # a1 and a2
    assert all(store.get_account(n).lease_owner is None for n in ("a0", "a1", "a2", "a3"))


def test_runner_refuses_a_lease_shorter_than_two_rounds(store: Store, settings: Settings) -> None:
    with pytest.raises(ConfigError, match="lease"):
        SyncRunner(store, settings, poll_seconds=5.0, lease_seconds=8.0)
