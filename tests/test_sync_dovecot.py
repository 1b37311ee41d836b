"""The mirror against a real (private) Dovecot: backfill, dedupe, resume, re-run, live changes.

Each test gets a fresh mailbox user and a fresh store (SQLite, and PostgreSQL for the invariant
tests). What the store holds is always compared with what the server says it has, read through
the stdlib ``imaplib`` (an independent client).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import imaplib
import random
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from correspond.mail.dedupe import dedupe_key
from correspond.mail.parse import parse_message
from correspond.settings import Settings
from correspond.store.blobs import BlobStore
from correspond.store.messages import MessageData, MessageStore, ThreadCandidate, ThreadChoice
from correspond.store.records import Account, Folder
from correspond.store.repository import Store
from correspond.store.secrets import SecretBox
from correspond.store.tables import AccountRow
from correspond.sync.engine import AccountSyncer, AccountSyncReport, default_thread_chooser
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.mail import plain_message
from correspond.testing.postgres import PostgresServer, temporary_database
from correspond.testing.store import add_dovecot_account, migrated_engine, sync_once

pytestmark = pytest.mark.dovecot

NOW = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
TODAY = NOW.date()

# --- fixtures -----------------------------------------------------------------------------------

# One key for the module: its PostgreSQL tests share a database, and the store refuses to
# seal a password under a key that opens none of the other accounts' secrets.
KEY = Fernet.generate_key()


def _sqlite(tmp_path: Path) -> contextlib.AbstractContextManager[Engine]:
    return migrated_engine(f"sqlite:///{tmp_path / 'store.db'}")


@pytest.fixture(scope="module")
def pg_engine(pg_server: PostgresServer) -> Iterator[Engine]:
    """One migrated PostgreSQL database for the module; tests stay apart by account."""
    with (
        temporary_database(pg_server, prefix="correspond_sync", migrated=True) as url,
        migrated_engine(url) as eng,
    ):
        yield eng


class Env:
    """A store, blob store and account wired to one Dovecot user."""

    def __init__(
        self,
        engine: Engine,
        server: DovecotServer,
        user: ImapUser,
        tmp_path: Path,
        *,
        key: bytes | None = None,
    ) -> None:
        self.server = server
        self.user = user
        self.settings = Settings(data_dir=tmp_path / "data", secret_key=None)
        self.store = Store(engine, SecretBox(key or KEY))
        self.messages = MessageStore(engine)
        self.blobs = BlobStore(tmp_path / "data" / "blobs")
        self.account: Account = add_dovecot_account(self.store, server, user)

    def syncer(self, **kw: object) -> AccountSyncer:
        kw.setdefault("today", TODAY)
        return AccountSyncer(self.store, self.messages, self.blobs, self.settings, **kw)  # type: ignore[arg-type]

    async def sync(
        self, syncer: AccountSyncer | None = None, *, max_batches: int | None = None
    ) -> AccountSyncReport:
        return await sync_once(syncer or self.syncer(), self.account, max_batches=max_batches)

    def folder(self, role_or_name: str) -> Folder:
        for f in self.store.list_folders(self.account.name):
            if f.role == role_or_name or f.name == role_or_name:
                return f
        raise AssertionError(f"no folder {role_or_name!r}")

    def stored(self, mailbox: str) -> dict[int, str]:
        return self.messages.folder_contents(self.folder(mailbox).id)

    def remote(self, mailbox: str, since: date | None = None) -> dict[int, str]:
        """UID -> dedupe key ("mid:...") of the server's mailbox, read with imaplib."""
        conn = self.server.imaplib_client(self.user)
        try:
            conn.select(f'"{mailbox}"', readonly=True)
            crit = f"SINCE {since.strftime('%d-%b-%Y')}" if since else "ALL"
            typ, data = conn.uid("SEARCH", crit)
            assert typ == "OK"
            uids = [int(u) for u in data[0].split()]
            out: dict[int, str] = {}
            if not uids:
                return out
            typ, data = conn.uid(
                "FETCH", ",".join(map(str, uids)), "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"
            )
            for item in data:
                if isinstance(item, tuple):
                    uid = int(re.search(rb"UID (\d+)", item[0]).group(1))  # type: ignore[union-attr]
                    mid = item[1].decode().split(":", 1)[1].strip().strip("<>")
                    out[uid] = f"mid:{mid}"
            return out
        finally:
            with contextlib.suppress(Exception):
                conn.logout()


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


def raw_message(
    n: int | str,
    *,
    when: datetime = NOW,
    subject: str | None = None,
    extra_headers: str = "",
    body: str = "",
    sender: str = "Alice <alice@example.test>",
    to: str = "bob@example.test",
) -> bytes:
    return plain_message(
        f"m{n}@example.test",
        when=when,
        subject=subject or f"message {n}",
        body=body or f"Body of message {n}.\r\n",
        sender=sender,
        to=to,
        extra_headers=extra_headers,
    )


def append_many(env: Env, mailbox: str, items: Sequence[tuple[int | str, datetime]]) -> None:
    """APPEND many messages over one imaplib connection (faster than one per message)."""
    conn = env.server.imaplib_client(env.user)
    try:
        for n, when in items:
            typ, data = conn.append(
                f'"{mailbox}"', None, imaplib.Time2Internaldate(when), raw_message(n, when=when)
            )
            assert typ == "OK", data
    finally:
        conn.logout()


# --- backfill --------------------------------------------------------------------------------


async def test_window_inbox_and_sent_first(env: Env) -> None:
    append_many(
        env,
        "INBOX",
        [
            ("old61", NOW - timedelta(days=61)),
            ("in59", NOW - timedelta(days=59)),
            ("new", NOW - timedelta(hours=1)),
        ],
    )
    append_many(env, "Sent", [("sent10", NOW - timedelta(days=10))])
    append_many(env, "Archive", [("arch3", NOW - timedelta(days=3))])
    report = await env.sync()

    inbox, sent = env.folder("inbox"), env.folder("sent")
    folder_ids = [f.folder_id for f in report.folders]
    assert folder_ids[:2] == [inbox.id, sent.id]  # INBOX, then Sent, then the rest
    since = TODAY - timedelta(days=60)
    assert sorted(env.stored("INBOX").values()) == [
        "mid:min59@example.test",
        "mid:mnew@example.test",
    ]
    assert env.stored("INBOX") == env.remote("INBOX", since=since)
    assert "mid:mold61@example.test" not in env.stored("INBOX").values()
    assert env.stored("Sent") == env.remote("Sent")
    assert env.stored("Archive") == env.remote("Archive")
    assert env.messages.count_messages(env.account.id) == 4
    # sent mail is outbound, inbox mail inbound; bodies and raw blobs are there
    by_subject = {m.subject: m for m in env.messages.list_messages(env.account.id)}
    sent_detail = env.messages.get_message(by_subject["message sent10"].id)
    assert (sent_detail.text or "").strip() == "Body of message sent10."
    assert sent_detail.raw_blob_key is not None
    assert env.blobs.get(sent_detail.raw_blob_key).startswith(b"Message-ID: <msent10@")
    cp = env.messages.folder_checkpoint(inbox.id)
    assert cp.backfill_done
    assert cp.uidvalidity is not None


async def test_message_in_two_folders_is_one_message(env: Env) -> None:
    raw = raw_message("shared")
    # and one without a Message-ID: keyed by the hash of its stable headers and body
    no_id = b"\r\n".join(
        line for line in raw_message("anon").split(b"\r\n") if not line.startswith(b"Message-ID")
    )
    for mailbox in ("INBOX", "Archive"):
        env.server.append(env.user, mailbox, raw, date=NOW)
        env.server.append(env.user, mailbox, no_id, date=NOW)
    report = await env.sync()
    assert env.messages.count_messages(env.account.id) == 2
    assert report.created == 2
    assert report.linked == 2
    folders = {env.folder("inbox").id, env.folder("Archive").id}
    keys = set()
    for summary in env.messages.list_messages(env.account.id):
        detail = env.messages.get_message(summary.id)
        assert {fid for fid, _uid in detail.locations} == folders
        keys.add(detail.dedupe_key)
    # the same key any other caller computes from the whole message
    assert keys == {"mid:mshared@example.test", dedupe_key(parse_message(no_id))}


async def test_resume_after_failure_mid_batch(env: Env) -> None:
    """A crash inside a batch's transaction loses only that batch; resuming converges exactly."""
    append_many(env, "INBOX", [(i, NOW - timedelta(days=i % 50)) for i in range(23)])
    calls = 0

    def crashing(
        data: MessageData, related: Sequence[ThreadCandidate], same: Sequence[ThreadCandidate]
    ) -> ThreadChoice:
        nonlocal calls
        calls += 1
        if calls == 13:  # in the middle of the third batch of five
            raise RuntimeError("simulated crash mid-batch")
        return default_thread_chooser(data, related, same)

    with pytest.raises(RuntimeError, match="simulated crash"):
        await env.sync(env.syncer(batch_size=5, chooser=crashing))
    inbox = env.folder("inbox")
    partial = env.stored("INBOX")
    assert len(partial) == 10  # two whole batches, nothing of the third
    assert sorted(partial) == sorted(env.remote("INBOX"))[-10:]  # newest (highest UIDs) first
    cp = env.messages.folder_checkpoint(inbox.id)
    assert cp.backfill_low_uid == min(partial)
    assert not cp.backfill_done

    report = await env.sync(env.syncer(batch_size=5))
    assert env.stored("INBOX") == env.remote("INBOX")
    assert env.messages.count_messages(env.account.id) == 23
    inbox_report = next(f for f in report.folders if f.folder_id == inbox.id)
    assert inbox_report.created == 13  # only what was missing was fetched
    assert env.messages.folder_checkpoint(inbox.id).backfill_done


#: A process that backfills one account once (for the SIGKILL tests). argv: database URL,
#: secret-box key, account name, data dir, "today" (ISO date), batch size.
SYNC_CHILD = """
import asyncio, sys
from datetime import date
from pathlib import Path
from correspond.settings import Settings
from correspond.store.blobs import BlobStore
from correspond.store.engine import create_store_engine
from correspond.store.messages import MessageStore
from correspond.store.repository import Store
from correspond.store.secrets import SecretBox
from correspond.sync.engine import AccountSyncer

url, key, name, data_dir, today, batch_size = sys.argv[1:7]
if sys.argv[7:] == ["--wait"] and sys.stdin.readline() != "go\\n":
    sys.exit(0)  # imported and ready, but the test ended without starting this run
engine = create_store_engine(url)
store = Store(engine, SecretBox(key.encode()))
syncer = AccountSyncer(
    store, MessageStore(engine), BlobStore(Path(data_dir) / "blobs"),
    Settings(data_dir=Path(data_dir)), batch_size=int(batch_size),
    today=date.fromisoformat(today),
)

async def main():
    account = store.get_account(name)
    client = await syncer.connect(account)
    await syncer.sync_once(client, account)

asyncio.run(main())
"""


async def test_killed_process_mid_backfill_converges(
    dovecot: DovecotServer, imap_user: ImapUser, tmp_path: Path
) -> None:
    """SIGKILL a backfilling process at a random point; a restart converges to the mailbox."""
    key = Fernet.generate_key()
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with _sqlite(tmp_path) as engine:
        env = Env(engine, dovecot, imap_user, tmp_path, key=key)
        append_many(env, "INBOX", [(i, NOW - timedelta(days=i % 40)) for i in range(60)])
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                SYNC_CHILD,
                url,
                key.decode(),
                env.account.name,
                str(tmp_path / "data"),
                TODAY.isoformat(),
                "3",
            ]
        )
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            # Kill it once it has committed something but is far from done.
            while env.messages.count_messages(env.account.id) < 7:
                assert child.poll() is None, "the child finished or died before the kill"
                assert loop.time() < deadline
                await asyncio.sleep(0.01)
            await asyncio.sleep(random.uniform(0, 0.05))
            child.kill()
        finally:
            child.wait(timeout=30)
        partial = env.messages.count_messages(env.account.id)
        assert 0 < partial < 60
        await env.sync(env.syncer(batch_size=3))
        assert env.stored("INBOX") == env.remote("INBOX")
        assert env.messages.count_messages(env.account.id) == 60


async def test_resume_after_stopping_between_batches(env: Env) -> None:
    append_many(env, "INBOX", [(i, NOW - timedelta(days=1)) for i in range(12)])
    first = await env.sync(env.syncer(batch_size=4), max_batches=1)
    inbox = env.folder("inbox")
    assert len(env.stored("INBOX")) == 4
    assert next(f for f in first.folders if f.folder_id == inbox.id).done is False
    await env.sync(env.syncer(batch_size=4))
    assert env.stored("INBOX") == env.remote("INBOX")


async def test_rerun_creates_no_duplicates(env: Env) -> None:
    append_many(env, "INBOX", [(i, NOW - timedelta(days=2)) for i in range(6)])
    append_many(env, "Sent", [(f"s{i}", NOW - timedelta(days=2)) for i in range(3)])
    await env.sync()
    count = env.messages.count_messages(env.account.id)
    threads = env.messages.count_threads(env.account.id)
    again = await env.sync()
    assert env.messages.count_messages(env.account.id) == count == 9
    assert env.messages.count_threads(env.account.id) == threads
    assert again.created == 0
    assert all(f.kind in ("none", "condstore", "fallback") for f in again.folders)
    assert env.stored("INBOX") == env.remote("INBOX")
    assert env.stored("Sent") == env.remote("Sent")


async def test_uidvalidity_change_relinks_without_duplicates(sqlite_env: Env) -> None:
    env = sqlite_env
    env.server.create_mailbox(env.user, "Projects")
    append_many(env, "Projects", [(f"p{i}", NOW - timedelta(days=1)) for i in range(4)])
    await env.sync()
    before = env.messages.folder_checkpoint(env.folder("Projects").id).uidvalidity
    assert env.messages.count_messages(env.account.id) == 4
    # Delete and re-create the mailbox under the same name: a new UIDVALIDITY, same messages.
    conn = env.server.imaplib_client(env.user)
    try:
        assert conn.delete('"Projects"')[0] == "OK"
    finally:
        conn.logout()
    env.server.create_mailbox(env.user, "Projects")
    append_many(env, "Projects", [(f"p{i}", NOW - timedelta(days=1)) for i in (3, 2, 1, 0)])
    report = await env.sync()
    projects = env.folder("Projects")
    assert env.messages.folder_checkpoint(projects.id).uidvalidity != before
    assert next(f for f in report.folders if f.folder_id == projects.id).kind == "reset"
    assert env.messages.count_messages(env.account.id) == 4
    assert env.stored("Projects") == env.remote("Projects")


async def test_renamed_folder_relinks_and_old_locations_go(sqlite_env: Env) -> None:
    env = sqlite_env
    env.server.create_mailbox(env.user, "Clients")
    append_many(env, "Clients", [(f"c{i}", NOW - timedelta(days=1)) for i in range(3)])
    await env.sync()
    old = env.folder("Clients")
    assert len(env.stored("Clients")) == 3
    conn = env.server.imaplib_client(env.user)
    try:
        assert conn.rename('"Clients"', '"Customers"')[0] == "OK"
    finally:
        conn.logout()
    await env.sync()
    assert env.messages.count_locations(old.id) == 0  # the old name's UIDs are void
    assert env.stored("Customers") == env.remote("Customers")
    assert env.messages.count_messages(env.account.id) == 3  # re-linked, not duplicated


async def test_a_folder_that_refuses_select_does_not_stop_the_others(sqlite_env: Env) -> None:
    env = sqlite_env
    env.server.create_mailbox(env.user, "Doomed")
    append_many(env, "INBOX", [("keep", NOW - timedelta(days=1))])
    syncer = env.syncer()
    client = await syncer.connect(env.account)
    try:
        folders = await syncer.refresh_folders(client, env.account)
        conn = env.server.imaplib_client(env.user)
        try:
            assert conn.delete('"Doomed"')[0] == "OK"
        finally:
            conn.logout()
        # The folder list is now stale: SELECT "Doomed" gets a tagged NO.
        report = await syncer.sync_once(client, env.account, folders=folders)
    finally:
        await client.logout()
    doomed = env.folder("Doomed")
    failed = [f for f in report.folders if f.kind == "error"]
    assert [f.folder_id for f in failed] == [doomed.id]
    assert failed[0].error and "NO" in failed[0].error
    assert env.stored("INBOX") == env.remote("INBOX")


async def test_threads_reply_and_parent(sqlite_env: Env) -> None:
    env = sqlite_env
    conn = env.server.imaplib_client(env.user)
    try:
        for raw, when in (
            (raw_message("root", subject="Budget 2027", when=NOW - timedelta(days=3)), 3),
            (
                raw_message(
                    "reply",
                    subject="Re: Budget 2027",
                    sender="bob@example.test",
                    to="alice@example.test",
                    extra_headers="In-Reply-To: <mroot@example.test>\r\n"
                    "References: <mroot@example.test>\r\n",
                    when=NOW - timedelta(days=2),
                ),
                2,
            ),
            (raw_message("other", subject="Lunch", when=NOW - timedelta(days=1)), 1),
        ):
            conn.append("INBOX", None, imaplib.Time2Internaldate(NOW - timedelta(days=when)), raw)
    finally:
        conn.logout()
    await env.sync()  # newest first: the reply is stored before its parent
    threads = {m.subject: m.thread_id for m in env.messages.list_messages(env.account.id)}
    assert threads["Budget 2027"] == threads["Re: Budget 2027"]
    assert threads["Lunch"] != threads["Budget 2027"]
    assert env.messages.count_threads(env.account.id) == 2


async def test_large_message_keeps_text_and_attachment_metadata_only(sqlite_env: Env) -> None:
    env = sqlite_env
    env.settings = env.settings.clone(max_message_bytes=4000)
    boundary = "b0undary"
    payload = ("QUJD" * 19 + "\r\n") * 200  # ~16 KB of base64
    raw = (
        "Message-ID: <big@example.test>\r\n"
        f"Date: {email.utils.format_datetime(NOW)}\r\n"
        "From: alice@example.test\r\nTo: bob@example.test\r\nSubject: big one\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\nCaf=E9 au lait\r\n"
        f'--{boundary}\r\nContent-Type: application/pdf; name="report.pdf"\r\n'
        'Content-Disposition: attachment; filename="report.pdf"\r\n'
        f"Content-Transfer-Encoding: base64\r\n\r\n{payload}"
        f"--{boundary}--\r\n"
    ).encode()
    env.server.append(env.user, "INBOX", raw, date=NOW)
    env.server.append(env.user, "INBOX", raw_message("small"), date=NOW)
    report = await env.sync()
    by_subject = {m.subject: m for m in env.messages.list_messages(env.account.id)}
    big = env.messages.get_message(by_subject["big one"].id)
    assert big.truncated
    assert big.raw_blob_key is None
    assert (big.text or "").strip() == "Café au lait"
    assert [(a.filename, a.content_type, a.blob_key, a.section) for a in big.attachments] == [
        ("report.pdf", "application/pdf", None, "2")
    ]
    small = env.messages.get_message(by_subject["message small"].id)
    assert not small.truncated and small.raw_blob_key is not None
    # the big body was never downloaded
    inbox_report = report.folders[0]
    assert inbox_report.bytes_fetched < len(raw)


# --- live changes ------------------------------------------------------------------------------


def _mutate(env: Env) -> None:
    """Flag one message, expunge another, and deliver a new one."""
    conn = env.server.imaplib_client(env.user)
    try:
        conn.select("INBOX")
        typ, data = conn.uid("SEARCH", "ALL")
        assert typ == "OK"
        uids = data[0].split()
        assert conn.uid("STORE", uids[0], "+FLAGS", "(\\Seen \\Flagged)")[0] == "OK"
        assert conn.uid("STORE", uids[1], "+FLAGS", "(\\Deleted)")[0] == "OK"
        assert conn.expunge()[0] == "OK"
    finally:
        conn.logout()
    env.server.deliver(env.user, raw_message("live-new"))


@pytest.mark.parametrize(
    ("variant", "extensions", "kind"),
    [
        ("full", ("CONDSTORE", "QRESYNC"), "condstore"),  # CHANGEDSINCE + VANISHED
        ("full", ("CONDSTORE",), "condstore"),  # CHANGEDSINCE + UID set diff for expunges
        ("full", (), "fallback"),  # a CONDSTORE server used without it
        ("basic", ("CONDSTORE", "QRESYNC"), "fallback"),  # a server without CONDSTORE
    ],
)
async def test_live_changes(
    variant: str,
    extensions: tuple[str, ...],
    kind: str,
    dovecot: DovecotServer,
    dovecot_basic: DovecotServer,
    tmp_path: Path,
) -> None:
    server = dovecot if variant == "full" else dovecot_basic
    user = server.add_user()
    with _sqlite(tmp_path) as engine:
        env = Env(engine, server, user, tmp_path)
        append_many(env, "INBOX", [(f"l{i}", NOW - timedelta(days=1)) for i in range(3)])
        await env.sync(env.syncer(extensions=extensions))
        assert env.stored("INBOX") == env.remote("INBOX")
        first_uid = min(env.stored("INBOX"))
        _mutate(env)
        report = await env.sync(env.syncer(extensions=extensions))
        inbox_report = report.folders[0]
        assert inbox_report.kind == kind
        assert env.stored("INBOX") == env.remote("INBOX")
        flags = env.messages.location_flags(env.folder("inbox").id)
        assert flags[first_uid] == frozenset({"\\Seen", "\\Flagged"})
        assert inbox_report.created == 1
        assert inbox_report.removed == 1
        assert inbox_report.flag_updates == 1
        # nothing further: a third pass changes nothing
        third = await env.sync(env.syncer(extensions=extensions))
        assert third.folders[0].created == third.folders[0].removed == 0
        assert third.folders[0].flag_updates == 0
        if kind == "condstore":
            assert third.folders[0].kind == "none"


async def test_parse_in_a_process_pool(sqlite_env: Env) -> None:
    """The same result with parsing in worker processes (the 2-core overlap path)."""
    from concurrent.futures import ProcessPoolExecutor

    env = sqlite_env
    append_many(env, "INBOX", [(i, NOW - timedelta(days=1)) for i in range(30)])
    with ProcessPoolExecutor(max_workers=2) as pool:
        await env.sync(env.syncer(parse_executor=pool, batch_size=10))
    assert env.stored("INBOX") == env.remote("INBOX")
    assert {m.snippet for m in env.messages.list_messages(env.account.id, limit=100)} == {
        f"Body of message {i}." for i in range(30)
    }


# --- the account loop: IDLE, states, failures ---------------------------------------------------


async def _wait_until(predicate: Callable[[], bool], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def test_run_account_goes_live_and_idle_brings_new_mail(sqlite_env: Env) -> None:
    env = sqlite_env
    append_many(env, "INBOX", [("before", NOW - timedelta(days=1))])
    stop = asyncio.Event()
    reports: list[AccountSyncReport] = []
    task = asyncio.create_task(
        env.syncer().run_account(
            env.account.name, stop=stop, poll_seconds=600, on_synced=reports.append
        )
    )
    try:
        await _wait_until(lambda: len(reports) >= 1, 30)
        assert env.store.get_account(env.account.name).state == "live"
        assert set(env.stored("INBOX").values()) == {"mid:mbefore@example.test"}
        await asyncio.sleep(0.3)  # let the loop enter IDLE
        started = time.perf_counter()
        await asyncio.to_thread(env.server.deliver, env.user, raw_message("pushed"))
        await _wait_until(lambda: "mid:mpushed@example.test" in env.stored("INBOX").values(), 15)
        latency = time.perf_counter() - started
        # An INBOX-only pass, triggered by IDLE long before the 600 s poll (its report comes
        # right after its commit).
        await _wait_until(lambda: len(reports) >= 2, 5)
        assert [f.folder_id for f in reports[1].folders] == [env.folder("inbox").id]
        assert latency < 10
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    assert env.stored("INBOX") == env.remote("INBOX")


async def test_run_account_wrong_password_is_auth_failed(sqlite_env: Env) -> None:
    env = sqlite_env
    env.store.set_account_secret(env.account.name, "not-the-password")
    stop = asyncio.Event()
    # A refused login is retried with backoff (the user may fix the password), so the loop
    # keeps running; the state says why, in the server's words.
    task = asyncio.create_task(env.syncer().run_account(env.account.name, stop=stop))
    try:
        await _wait_until(
            lambda: env.store.get_account(env.account.name).state == "auth_failed", 15
        )
        account = env.store.get_account(env.account.name)
        assert "Authentication failed." in account.state_detail
        assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def test_run_account_unreachable_server_backs_off(
    dovecot: DovecotServer, tmp_path: Path
) -> None:
    user = dovecot.add_user()
    with _sqlite(tmp_path) as engine:
        env = Env(engine, dovecot, user, tmp_path)
        # Point the account at a port where nothing listens.
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            dead_port = sock.getsockname()[1]
        with Session(engine) as s, s.begin():
            row = s.get(AccountRow, env.account.id)
            assert row is not None
            row.imap_port = dead_port
        stop = asyncio.Event()
        task = asyncio.create_task(
            env.syncer(rng=random.Random(7)).run_account(env.account.name, stop=stop)
        )
        try:
            await _wait_until(
                lambda: env.store.get_account(env.account.name).state == "disconnected", 15
            )
            assert "retrying in" in env.store.get_account(env.account.name).state_detail
            assert not task.done()  # still trying: a refused connection is transient
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)
