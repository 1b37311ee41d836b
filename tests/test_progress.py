"""Backfill progress read from the store: exact done/total per folder and in total, mid-way and
after the backfill, with rate and ETA from what was committed; the same through the API
(progress, account, pause and resume), on SQLite and PostgreSQL, over the private Dovecot."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from correspond.api import create_app
from correspond.settings import Settings
from correspond.store import Store
from correspond.store.blobs import BlobStore
from correspond.store.leases import AccountLeases
from correspond.store.messages import MessageStore
from correspond.store.progress import AccountProgress, ProgressReader
from correspond.store.tables import utcnow
from correspond.sync.engine import AccountSyncer
from correspond.sync.runner import sync_account_once
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.mail import plain_message
from correspond.testing.store import add_dovecot_account, sync_once
from helpers import authed_client

pytestmark = [pytest.mark.dovecot, pytest.mark.timeout(120)]

NOW = datetime.now(UTC).replace(microsecond=0)
INBOX_COUNT = 5


def raw_message(n: int | str) -> bytes:
    return plain_message(f"p{n}@example.test", when=NOW, subject=f"progress {n}", body="Body.\r\n")


def add_account(store: Store, server: DovecotServer, user: ImapUser) -> str:
    return add_dovecot_account(store, server, user).name


async def sync(
    store: Store, settings: Settings, name: str, *, max_batches: int | None = None
) -> None:
    syncer = AccountSyncer(
        store,
        MessageStore(store.engine),
        BlobStore.from_settings(settings),
        settings,
        batch_size=2,
    )
    await sync_once(syncer, store.get_account(name), max_batches=max_batches)


def by_role(p: AccountProgress, role: str) -> tuple[int, int | None, bool]:
    f = next(f for f in p.folders if f.role == role)
    return f.done, f.total, f.complete


@pytest.fixture
def mailbox(dovecot: DovecotServer, imap_user: ImapUser) -> ImapUser:
    for n in range(INBOX_COUNT):
        dovecot.deliver(imap_user, raw_message(n))
    dovecot.append(imap_user, "Sent", raw_message("sent"), flags=("\\Seen",))
    return imap_user


async def test_progress_is_exact_mid_way_and_after_backfill(
    store: Store, store_settings: Settings, dovecot: DovecotServer, mailbox: ImapUser
) -> None:
    name = add_account(store, dovecot, mailbox)
    reader = ProgressReader(store.engine)

    before = reader.account(name)
    assert before.folders == () and before.done == before.total == 0
    assert not before.total_known and not before.complete and before.fraction is None

    started = utcnow() - timedelta(milliseconds=1)
    store.set_account_state(name, "backfilling", "Syncing", connected_at=started)
    await sync(store, store_settings, name, max_batches=1)  # one batch of two per folder

    now = utcnow()
    mid = reader.account(name, now=now)
    assert by_role(mid, "inbox") == (2, INBOX_COUNT, False)
    assert by_role(mid, "sent") == (1, 1, True)
    others = [f for f in mid.folders if f.role not in ("inbox", "sent")]
    assert others and all((f.done, f.total, f.complete) == (0, 0, True) for f in others)
    assert (mid.done, mid.total) == (3, INBOX_COUNT + 1)
    assert mid.total_known and not mid.complete
    assert mid.fraction == pytest.approx(3 / 6)
    # The figures agree with what is stored: one location per committed UID.
    messages = MessageStore(store.engine)
    inbox = next(f for f in mid.folders if f.role == "inbox")
    assert messages.count_locations(inbox.folder_id) == inbox.done
    # Rate: the 3 locations committed since connected_at; ETA: what is left at that rate.
    elapsed = (now - started).total_seconds()
    assert mid.rate == pytest.approx(3 / elapsed)
    assert mid.eta_seconds == pytest.approx((INBOX_COUNT - 2) / (3 / elapsed))
    assert inbox.rate == pytest.approx(2 / elapsed)
    assert inbox.eta_seconds == pytest.approx((INBOX_COUNT - 2) / (2 / elapsed))
    sent = next(f for f in mid.folders if f.role == "sent")
    assert sent.rate is None and sent.eta_seconds is None  # finished: no rate

    # Long after the window, nothing was committed recently: rate 0, no ETA (stalled).
    stalled = reader.account(name, now=now + timedelta(minutes=5))
    assert stalled.rate == 0 and stalled.eta_seconds is None

    await sync(store, store_settings, name)  # the rest
    done = reader.account(name)
    assert by_role(done, "inbox") == (INBOX_COUNT, INBOX_COUNT, True)
    assert (done.done, done.total) == (INBOX_COUNT + 1, INBOX_COUNT + 1)
    assert done.complete and done.total_known and done.fraction == 1.0
    assert done.rate is None and done.eta_seconds is None
    assert all(f.done == f.total for f in done.folders)
    assert messages.count_messages(store.get_account(name).id) == INBOX_COUNT + 1
    assert [p.name for p in reader.all()] == [name]


async def test_progress_pause_and_resume_through_the_api(
    store: Store, store_settings: Settings, dovecot: DovecotServer, mailbox: ImapUser
) -> None:
    name = add_account(store, dovecot, mailbox)
    await sync(store, store_settings, name)
    store.set_account_state(name, "live", "Up to date", last_sync_at=utcnow())
    # "live" is shown only while a sync process holds the account (here: a worker named w1).
    AccountLeases(store.engine).claim("w1", 300, names=[name])
    app = create_app(store_settings, store=store)
    with authed_client(app) as client:
        r = client.get(f"/accounts/{name}/progress")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["state"] == "live" and body["state_detail"] == "Up to date"
        assert body["last_sync_at"] is not None
        assert (body["done"], body["total"], body["percent"]) == (6, 6, 100.0)
        assert body["complete"] is True and body["eta_seconds"] is None
        inbox = next(f for f in body["folders"] if f["role"] == "inbox")
        assert (inbox["done"], inbox["total"], inbox["complete"]) == (5, 5, True)

        account = client.get(f"/accounts/{name}").json()
        assert account["progress"]["done"] == 6
        assert account["progress"]["folders"] == body["folders"]
        listed = client.get("/accounts").json()
        assert listed[0]["progress"]["total"] == 6

        paused = client.post(f"/accounts/{name}/pause")
        assert paused.status_code == 200
        assert paused.json()["state"] == "paused"
        assert store.get_account(name).state == "paused"
        resumed = client.post(f"/accounts/{name}/resume")
        assert resumed.json()["state"] == "connecting"
        assert resumed.json()["progress"]["complete"] is True

        missing = client.get("/accounts/nobody/progress")
        assert missing.status_code == 404
        assert client.post("/accounts/nobody/pause").status_code == 404


async def test_progress_sampled_during_a_backfill_is_consistent(
    store: Store, store_settings: Settings, dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    total = 240
    conn = dovecot.imaplib_client(imap_user)
    try:
        for n in range(total):
            conn.append("INBOX", None, None, raw_message(f"bulk{n}"))
    finally:
        conn.logout()
    name = add_account(store, dovecot, imap_user)
    reader = ProgressReader(store.engine)
    job = asyncio.create_task(
        sync_account_once(store, store_settings, name, batch_size=20, owner="sampler")
    )
    samples: list[tuple[int, int | None]] = []
    while not job.done():
        p = await asyncio.to_thread(reader.account, name)
        if p.folders:
            inbox = next(f for f in p.folders if f.role == "inbox")
            samples.append((inbox.done, inbox.total))
            assert inbox.total is None or 0 <= inbox.done <= inbox.total
            assert inbox.done % 20 == 0 or inbox.done == total  # whole batches only
            if inbox.rate is not None and inbox.rate > 0 and inbox.total is not None:
                assert inbox.eta_seconds == pytest.approx((inbox.total - inbox.done) / inbox.rate)
        await asyncio.sleep(0.02)
    result = job.result()
    assert result.ok
    dones = [d for d, _t in samples]
    assert dones == sorted(dones)  # never goes back
    assert any(0 < d < total for d in dones), dones  # seen mid-way, not only at the ends
    assert {t for _d, t in samples if t is not None} <= {total}  # the total never moves
    final = reader.account(name)
    assert by_role(final, "inbox") == (total, total, True)
    assert final.complete and final.done == final.total == total
