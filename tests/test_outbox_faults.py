"""The outbox on weaker servers and under faults, against real Dovecot (SQLite and PostgreSQL).

- Without MOVE: COPY + \\Deleted + UID EXPUNGE of that UID only; a message the user flagged
  \\Deleted in the same folder survives. Without UIDPLUS too: no EXPUNGE at all, the old copy is
  left flagged \\Deleted and the row says so.
- An archive where the mailbox has no Archive folder creates it, records it with its role, and
  asks for ``\\Archive`` with CREATE-SPECIAL-USE only where the server offers it.
- Exactly once: the connection cut after a command reached the server and before its reply
  (:class:`~correspond.testing.imap_proxy.ImapFaultProxy`, a TLS-terminating proxy in front of
  the real Dovecot), and a ``correspond worker`` process SIGKILLed at that point (the proxy
  holds the reply back): the next attempt re-reads the mailbox and the action takes effect
  once (one copy in the target folder, none left in the source, the row applied).

The mailbox side is read with the stdlib ``imaplib`` (the user's other client).
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from correspond.errors import CorrespondError
from correspond.rules.outbox_steps import LEFT_DELETED_NOTE, fallback_move_step
from correspond.store.outbox import OutboxStore
from correspond.store.outbox_tables import OutboxRow
from correspond.store.tables import AccountRow
from correspond.sync.outbox import OutboxPassReport
from correspond.sync.runner import SyncRunner
from correspond.testing.dovecot import DovecotServer, ImapUser, dovecot_binary
from correspond.testing.imap_proxy import ImapFaultProxy
from correspond.testing.postgres import PostgresServer, temporary_database
from correspond.testing.store import migrated_engine
from mirror_helpers import BACKENDS, NOW, Env, append_many, imap_quote
from mirror_helpers import pg_engine as pg_engine  # a fixture, used through the backends
from test_mirror_changes import message_ids, remote_flags, uid_of

pytestmark = pytest.mark.dovecot

DELETED = "\\Deleted"
SEEN = "\\Seen"
NO_ARCHIVE = ("Drafts", "Sent", "Trash", "Junk")


def _server(**kw: object) -> Iterator[DovecotServer]:
    if dovecot_binary() is None:
        pytest.skip("dovecot is not installed")
    server = DovecotServer(**kw)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def dovecot_no_uidplus() -> Iterator[DovecotServer]:
    """Neither MOVE nor UIDPLUS (nor CONDSTORE/QRESYNC)."""
    yield from _server(variant="basic", without={"UIDPLUS"})


@pytest.fixture(scope="module")
def dovecot_create_special_use() -> Iterator[DovecotServer]:
    """No Archive folder; CREATE-SPECIAL-USE advertised (Dovecot 2.3 takes ``USE``)."""
    yield from _server(extra_capabilities=["CREATE-SPECIAL-USE"], special_folders=NO_ARCHIVE)


@pytest.fixture(scope="module")
def dovecot_no_special_use() -> Iterator[DovecotServer]:
    """No Archive folder, and neither SPECIAL-USE nor CREATE-SPECIAL-USE advertised."""
    yield from _server(without={"SPECIAL-USE"}, special_folders=NO_ARCHIVE)


@contextlib.contextmanager
def world(
    request: pytest.FixtureRequest, backend: str, server: DovecotServer, tmp_path: Path
) -> Iterator[Env]:
    """An Env on ``server`` (a fresh user) and the ``backend`` store."""
    user = server.add_user()
    if backend == "postgresql":
        yield Env(request.getfixturevalue("pg_engine"), server, user, tmp_path)
        return
    with migrated_engine(f"sqlite:///{tmp_path / 'store.db'}") as engine:
        yield Env(engine, server, user, tmp_path)


def rows(env: Env, message_id: int) -> list[OutboxRow]:
    with Session(env.messages.engine) as s:
        return list(
            s.scalars(
                select(OutboxRow).where(OutboxRow.message_id == message_id).order_by(OutboxRow.id)
            )
        )


def make_due(env: Env) -> None:
    with Session(env.messages.engine) as s, s.begin():
        s.execute(
            update(OutboxRow)
            .where(OutboxRow.account_id == env.account.id)
            .values(next_attempt_at=NOW - timedelta(days=1))
        )


async def apply(env: Env) -> OutboxPassReport:
    """One pass of the applier on a connection of its own, with the account as stored."""
    syncer = env.syncer()
    account = env.store.get_account(env.account.name)
    client = await syncer.connect(account)
    try:
        return await syncer.apply_outbox(client, account)
    finally:
        with contextlib.suppress(Exception):
            await client.logout()


def via(env: Env, port: int, security: str = "tls") -> None:
    """Point the account at ``port`` (the proxy: implicit TLS, Dovecot's own certificate)."""
    with Session(env.messages.engine) as s, s.begin():
        s.execute(
            update(AccountRow)
            .where(AccountRow.id == env.account.id)
            .values(imap_port=port, imap_security=security)
        )


def direct(env: Env) -> None:
    via(env, env.server.port, "starttls")


def flag_by_user(env: Env, mailbox: str, uid: int, flag: str) -> None:
    conn = env.server.imaplib_client(env.user)
    try:
        assert conn.select(imap_quote(mailbox))[0] == "OK"
        assert conn.uid("STORE", str(uid), "+FLAGS", f"({flag})")[0] == "OK"
    finally:
        conn.logout()


def count(env: Env, mailbox: str, key: str) -> int:
    return list(env.remote(mailbox).values()).count(key)


async def seeded(env: Env, *, keep: bool = True) -> tuple[OutboxStore, int]:
    """Message "a" in INBOX (and, with ``keep``, message "keep" flagged \\Deleted by the
    user), synced; the CRM id of "a"."""
    day = NOW - timedelta(days=1)
    append_many(env, "INBOX", [("a", day)] + ([("keep", day)] if keep else []))
    if keep:
        flag_by_user(env, "INBOX", uid_of(env, "INBOX", "mkeep@example.test"), DELETED)
    await env.sync()
    return OutboxStore(env.messages.engine), message_ids(env)["ma@example.test"]


def assert_kept(env: Env) -> None:
    """The user's own \\Deleted message is still there, still flagged."""
    uid = uid_of(env, "INBOX", "mkeep@example.test")
    assert DELETED in remote_flags(env, "INBOX")[uid]


# -- the pure step, as a table ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_source", "started", "found", "step"),
    [
        (False, False, False, "done"),
        (False, True, True, "done"),
        (False, True, False, "done"),
        (True, False, False, "copy"),
        (True, True, False, "copy"),  # recorded, but the COPY never reached the server
        (True, True, True, "remove_source"),  # the COPY happened: never again
        (True, False, True, "copy"),  # found is only looked for after a recorded start
    ],
)
def test_fallback_move_step(in_source: bool, started: bool, found: bool, step: str) -> None:
    assert fallback_move_step(in_source=in_source, copy_started=started, copy_found=found) == step


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_pass_of_flag_rows_reads_flags_once_and_stays_exact(
    request: pytest.FixtureRequest, backend: str, dovecot: DovecotServer, tmp_path: Path
) -> None:
    """Many flag rows in one pass (their flags read with one FETCH per folder): one message
    the user expunged meanwhile fails alone, one already \\Seen is left as it is, the others
    get the flag; a read then an unread of one message in the same pass end unread."""
    with world(request, backend, dovecot, tmp_path) as env:
        day = NOW - timedelta(days=1)
        append_many(env, "INBOX", [(n, day) for n in ("a", "b", "c", "d", "e")])
        await env.sync()
        ids = message_ids(env)
        outbox = OutboxStore(env.messages.engine)
        for name in "abcd":
            outbox.record(ids[f"m{name}@example.test"], "read", user_id=None)
        outbox.record(ids["me@example.test"], "read", user_id=None)
        outbox.record(ids["me@example.test"], "unread", user_id=None)
        flag_by_user(env, "INBOX", uid_of(env, "INBOX", "mb@example.test"), SEEN)
        gone = uid_of(env, "INBOX", "mc@example.test")
        conn = env.server.imaplib_client(env.user)
        try:
            conn.select("INBOX")
            conn.uid("STORE", str(gone), "+FLAGS", "(\\Deleted)")
            conn.uid("EXPUNGE", str(gone))
        finally:
            conn.logout()
        report = await apply(env)
        assert (report.applied, report.failed) == (5, 1), report
        flags = remote_flags(env, "INBOX")
        for name in "abd":
            assert SEEN in flags[uid_of(env, "INBOX", f"m{name}@example.test")], name
        assert SEEN not in flags[uid_of(env, "INBOX", "me@example.test")]
        [failed] = outbox.outcome(ids["mc@example.test"]).actions
        assert failed.state == "failed" and "gone" in (failed.last_error or "")


# -- weaker servers -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
async def test_without_move_copies_and_expunges_only_that_uid(
    request: pytest.FixtureRequest, backend: str, dovecot_basic: DovecotServer, tmp_path: Path
) -> None:
    with world(request, backend, dovecot_basic, tmp_path) as env:
        outbox, mid = await seeded(env)
        outbox.record(mid, "archive", user_id=None)
        report = await apply(env)
        assert report.applied == 1, report
        assert count(env, "Archive", "mid:ma@example.test") == 1
        assert count(env, "INBOX", "mid:ma@example.test") == 0
        assert_kept(env)
        [row] = rows(env, mid)
        assert row.state == "applied" and "note" not in row.payload
        await env.sync()
        assert message_ids(env)["ma@example.test"] == mid
        assert outbox.outcome(mid).state == "archived"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_without_uidplus_the_old_copy_is_left_deleted(
    request: pytest.FixtureRequest,
    backend: str,
    dovecot_no_uidplus: DovecotServer,
    tmp_path: Path,
) -> None:
    with world(request, backend, dovecot_no_uidplus, tmp_path) as env:
        outbox, mid = await seeded(env)
        outbox.record(mid, "archive", user_id=None)
        report = await apply(env)
        assert report.applied == 1, report
        assert count(env, "Archive", "mid:ma@example.test") == 1
        # No EXPUNGE of any kind: the old copy is flagged \Deleted, the user's message stays.
        old = uid_of(env, "INBOX", "ma@example.test")
        assert DELETED in remote_flags(env, "INBOX")[old]
        assert_kept(env)
        [row] = rows(env, mid)
        assert row.state == "applied" and row.payload["note"] == LEFT_DELETED_NOTE
        # Applied again (a crash before it was marked): no second copy.
        with Session(env.messages.engine) as s, s.begin():
            s.execute(update(OutboxRow).where(OutboxRow.id == row.id).values(state="pending"))
        await apply(env)
        assert count(env, "Archive", "mid:ma@example.test") == 1
        # The sync sees no change of meaning: still archived, still one CRM message.
        await env.sync()
        assert outbox.outcome(mid).state == "archived"
        assert message_ids(env)["ma@example.test"] == mid
        # Unarchive: the \Deleted copy in INBOX is not where the message lives, so the
        # Archive copy goes back to INBOX (never are both copies left \Deleted: nothing lost).
        outbox.record(mid, "unarchive", user_id=None)
        report = await apply(env)
        assert report.applied == 1, report
        inbox = remote_flags(env, "INBOX")
        keys = env.remote("INBOX")
        alive = [
            u for u, k in keys.items() if k == "mid:ma@example.test" and DELETED not in inbox[u]
        ]
        assert len(alive) == 1, (keys, inbox)
        assert_kept(env)


@pytest.fixture(scope="module")
def dovecot_no_uidplus_no_trash() -> Iterator[DovecotServer]:
    """Neither MOVE nor UIDPLUS, and no Trash folder."""
    yield from _server(
        variant="basic", without={"UIDPLUS"}, special_folders=("Drafts", "Sent", "Archive")
    )


def set_toggle(env: Env, name: str, value: bool) -> None:
    with Session(env.messages.engine) as s, s.begin():
        s.execute(update(AccountRow).where(AccountRow.id == env.account.id).values({name: value}))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("server_fixture", "trash", "expunged"),
    [
        ("dovecot_basic", True, True),  # COPY to Trash + UID EXPUNGE
        ("dovecot_no_uidplus", True, False),  # COPY to Trash, old copy left \Deleted
        ("dovecot_no_uidplus_no_trash", False, False),  # no Trash: \Deleted where it is
    ],
)
async def test_delete_on_weaker_servers_keeps_the_users_deleted_mail(
    request: pytest.FixtureRequest,
    backend: str,
    server_fixture: str,
    trash: bool,
    expunged: bool,
    tmp_path: Path,
) -> None:
    server: DovecotServer = request.getfixturevalue(server_fixture)
    with world(request, backend, server, tmp_path) as env:
        outbox, mid = await seeded(env)
        set_toggle(env, "delete_remote_on_crm_delete", True)
        outbox.record(mid, "delete", user_id=None)
        for attempt in range(2):  # applied twice (a crash before the mark): the effect of once
            if attempt:
                with Session(env.messages.engine) as s, s.begin():
                    s.execute(
                        update(OutboxRow).where(OutboxRow.message_id == mid).values(state="pending")
                    )
            report = await apply(env)
            assert report.applied == 1 and report.failed == 0, report
        assert [r.state for r in rows(env, mid)] == ["applied"]
        if trash:
            assert count(env, "Trash", "mid:ma@example.test") == 1
        left = count(env, "INBOX", "mid:ma@example.test")
        if expunged:
            assert left == 0
        else:
            assert left == 1
            old = uid_of(env, "INBOX", "ma@example.test")
            assert DELETED in remote_flags(env, "INBOX")[old]
        assert_kept(env)
        await env.sync()
        assert outbox.outcome(mid).state == "deleted"
        assert message_ids(env)["ma@example.test"] == mid


@pytest.mark.parametrize("backend", BACKENDS)
async def test_archive_folder_created_with_special_use_where_offered(
    request: pytest.FixtureRequest,
    backend: str,
    dovecot_create_special_use: DovecotServer,
    tmp_path: Path,
) -> None:
    with world(request, backend, dovecot_create_special_use, tmp_path) as env:
        outbox, mid = await seeded(env, keep=False)
        assert all(f.role != "archive" for f in env.store.list_folders(env.account.name))
        outbox.record(mid, "archive", user_id=None)
        async with ImapFaultProxy(env.server) as proxy:
            via(env, proxy.port)
            report = await apply(env)
        assert report.applied == 1, report
        creates = [c for c in proxy.commands if c.upper().startswith(b"CREATE")]
        assert creates == [b"CREATE Archive (USE (\\Archive))"], creates
        archive = env.folder("archive")
        assert archive.name == "Archive" and archive.selected
        assert count(env, "Archive", "mid:ma@example.test") == 1
        assert count(env, "INBOX", "mid:ma@example.test") == 0
        # A second archive finds the folder by its role: no second CREATE.
        direct(env)
        append_many(env, "INBOX", [("b", NOW - timedelta(days=1))])
        await env.sync()
        second = message_ids(env)["mb@example.test"]
        outbox.record(second, "archive", user_id=None)
        async with ImapFaultProxy(env.server) as proxy:
            via(env, proxy.port)
            await apply(env)
        assert not [c for c in proxy.commands if c.upper().startswith(b"CREATE")]
        assert count(env, "Archive", "mid:mb@example.test") == 1


@pytest.mark.parametrize("backend", BACKENDS)
async def test_archive_folder_created_without_special_use(
    request: pytest.FixtureRequest,
    backend: str,
    dovecot_no_special_use: DovecotServer,
    tmp_path: Path,
) -> None:
    with world(request, backend, dovecot_no_special_use, tmp_path) as env:
        outbox, mid = await seeded(env, keep=False)
        outbox.record(mid, "archive", user_id=None)
        async with ImapFaultProxy(env.server) as proxy:
            via(env, proxy.port)
            report = await apply(env)
        assert report.applied == 1, report
        creates = [c for c in proxy.commands if c.upper().startswith(b"CREATE")]
        assert creates == [b"CREATE Archive"], creates  # no USE: the server would refuse it
        assert env.folder("archive").name == "Archive"
        assert count(env, "Archive", "mid:ma@example.test") == 1
        direct(env)
        await env.sync()
        assert message_ids(env)["ma@example.test"] == mid
        assert outbox.outcome(mid).state == "archived"


async def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_live_archive_creates_the_folder_and_syncs_it(
    request: pytest.FixtureRequest,
    backend: str,
    dovecot_no_special_use: DovecotServer,
    tmp_path: Path,
) -> None:
    """In a running worker: the archive creates Archive, and the session then syncs the new
    folder, so the message has its location there again (its CRM identity kept)."""
    with world(request, backend, dovecot_no_special_use, tmp_path) as env:
        outbox, mid = await seeded(env, keep=False)
        runner = SyncRunner(env.store, env.settings, poll_seconds=0.3, lease_seconds=5.0)
        runner.start()
        try:
            await eventually(
                lambda: env.store.get_account(env.account.name).state == "live", 30, "live"
            )
            outbox = OutboxStore(env.messages.engine, on_recorded=runner.wake)
            outbox.record(mid, "archive", user_id=None)

            def moved() -> bool:
                try:
                    return count(env, "Archive", "mid:ma@example.test") == 1
                except imaplib.IMAP4.error:
                    return False  # not created yet

            await eventually(moved, 15, "moved")
            await eventually(
                lambda: "mid:ma@example.test" in env.stored("Archive").values(),
                15,
                "the new Archive folder synced",
            )
        finally:
            await runner.shutdown()
        assert count(env, "INBOX", "mid:ma@example.test") == 0
        assert env.folder("archive").name == "Archive"
        assert message_ids(env)["ma@example.test"] == mid
        assert outbox.outcome(mid).state == "archived"


# -- exactly once under faults ------------------------------------------------------------------

CUTS = [
    # (server fixture, action, the command after which the connection is cut)
    ("dovecot", "archive", b"UID MOVE"),
    ("dovecot_basic", "archive", b"UID COPY"),
    ("dovecot_basic", "archive", b"UID EXPUNGE"),
    ("dovecot", "read", b"UID STORE"),
    ("dovecot_basic", "archive", b"UID STORE"),  # the \\Deleted after the COPY
    ("dovecot_no_uidplus", "archive", b"UID COPY"),
    ("dovecot_create_special_use", "archive", b"CREATE"),  # the Archive folder's creation
]


def live_copies(env: Env, mailbox: str, key: str) -> int:
    """Copies of ``key`` in ``mailbox`` not flagged \\Deleted."""
    flags = remote_flags(env, mailbox)
    return sum(1 for u, k in env.remote(mailbox).items() if k == key and DELETED not in flags[u])


def check_done(env: Env, outbox: OutboxStore, mid: int, action: str) -> None:
    """Both sides after the action took effect once."""
    if action == "archive":
        assert count(env, "Archive", "mid:ma@example.test") == 1
        # Without UIDPLUS the old copy stays, flagged \Deleted (never a bare EXPUNGE).
        expunges = "UIDPLUS" not in env.server.without
        assert count(env, "INBOX", "mid:ma@example.test") == (0 if expunges else 1)
        assert live_copies(env, "INBOX", "mid:ma@example.test") == 0
    else:
        uid = uid_of(env, "INBOX", "ma@example.test")
        assert SEEN in remote_flags(env, "INBOX")[uid]
    assert [r.state for r in rows(env, mid)] == ["applied"]
    assert outbox.outcome(mid).actions == ()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("server_fixture", "action", "command"), CUTS)
async def test_cut_after_the_command_takes_effect_once(
    request: pytest.FixtureRequest,
    backend: str,
    server_fixture: str,
    action: str,
    command: bytes,
    tmp_path: Path,
) -> None:
    server: DovecotServer = request.getfixturevalue(server_fixture)
    with world(request, backend, server, tmp_path) as env:
        outbox, mid = await seeded(env)
        outbox.record(mid, action, user_id=None)  # type: ignore[arg-type]
        async with ImapFaultProxy(env.server) as proxy:
            via(env, proxy.port)
            proxy.arm(command, "cut")
            with pytest.raises(CorrespondError) as raised:
                await apply(env)
            assert raised.value.transient
            assert proxy.fired.is_set() and proxy.fired_reply is not None
            assert b" OK" in proxy.fired_reply  # the server did it; the client never heard
            [row] = rows(env, mid)
            assert row.state == "pending" and row.attempts == 1
            # The next attempt, through the same proxy, once due.
            make_due(env)
            report = await apply(env)
        assert report.applied == 1, report
        check_done(env, outbox, mid, action)
        assert_kept(env)
        direct(env)
        await env.sync()
        assert message_ids(env)["ma@example.test"] == mid


@pytest.mark.parametrize("backend", BACKENDS)
async def test_restore_from_unsynced_trash_cut_after_copy_takes_effect_once(
    request: pytest.FixtureRequest, backend: str, dovecot_basic: DovecotServer, tmp_path: Path
) -> None:
    """Without MOVE, a restore from a Trash the account does not sync (found by Message-ID)
    is COPY + removal: cut after the COPY, the next attempt finds the copy back in INBOX and
    only removes the Trash copy."""
    with world(request, backend, dovecot_basic, tmp_path) as env:
        outbox, mid = await seeded(env)
        assert not env.folder("trash").selected  # Trash is not synced by default
        set_toggle(env, "delete_remote_on_crm_delete", True)
        outbox.record(mid, "delete", user_id=None)
        assert (await apply(env)).applied == 1
        assert count(env, "Trash", "mid:ma@example.test") == 1
        assert count(env, "INBOX", "mid:ma@example.test") == 0
        await env.sync()
        outbox.record(mid, "restore", user_id=None)
        async with ImapFaultProxy(env.server) as proxy:
            via(env, proxy.port)
            proxy.arm(b"UID COPY", "cut")
            with pytest.raises(CorrespondError):
                await apply(env)
            assert proxy.fired_reply is not None and b" OK" in proxy.fired_reply
            make_due(env)
            report = await apply(env)
        assert report.applied == 1, report
        assert count(env, "INBOX", "mid:ma@example.test") == 1
        assert count(env, "Trash", "mid:ma@example.test") == 0
        assert_kept(env)
        assert [r.state for r in rows(env, mid)] == ["applied", "applied"]
        direct(env)
        await env.sync()
        assert message_ids(env)["ma@example.test"] == mid
        assert outbox.outcome(mid).state == "active"


# -- SIGKILL at that point ----------------------------------------------------------------------


@contextlib.contextmanager
def kill_world(
    request: pytest.FixtureRequest, backend: str, server: DovecotServer, tmp_path: Path
) -> Iterator[tuple[Env, str, bytes]]:
    """An Env on its own database (a worker takes every account it finds), its URL and key."""
    key = Fernet.generate_key()
    user: ImapUser = server.add_user()
    if backend == "postgresql":
        pg: PostgresServer = request.getfixturevalue("pg_server")
        with temporary_database(pg, prefix="correspond_kill") as url, migrated_engine(url) as e:
            yield Env(e, server, user, tmp_path, key=key), url, key
        return
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with migrated_engine(url) as engine:
        yield Env(engine, server, user, tmp_path, key=key), url, key


def engine_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


KILLS = [
    ("dovecot", b"UID MOVE"),
    ("dovecot_basic", b"UID COPY"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("server_fixture", "command"), KILLS)
async def test_worker_killed_after_the_command_takes_effect_once(
    request: pytest.FixtureRequest,
    backend: str,
    server_fixture: str,
    command: bytes,
    tmp_path: Path,
) -> None:
    """``correspond worker`` sends the command; the proxy lets the server do it and holds the
    reply back; the worker is SIGKILLed while it waits. The row is still pending; the next
    attempt re-reads the mailbox and does not repeat what happened."""
    server: DovecotServer = request.getfixturevalue(server_fixture)
    with kill_world(request, backend, server, tmp_path) as (env, url, key):
        outbox, mid = await seeded(env)
        outbox.record(mid, "archive", user_id=None)
        async with ImapFaultProxy(env.server) as proxy:
            via(env, proxy.port)
            proxy.arm(command, "hold")
            environ = {
                **os.environ,
                "CORRESPOND_DATABASE_URL": url,
                "CORRESPOND_SECRET_KEY": key.decode(),
                "CORRESPOND_DATA_DIR": str(tmp_path / "data"),
            }
            child = subprocess.Popen(
                [sys.executable, "-m", "correspond", "worker"],
                env=environ,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            try:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 60
                while not proxy.fired.is_set():
                    if child.poll() is not None or loop.time() > deadline:
                        child.kill()
                        _out, err = child.communicate(timeout=10)
                        raise AssertionError(f"no {command!r} from the worker: {err[-3000:]!r}")
                    await asyncio.sleep(0.05)
                assert child.poll() is None, "the worker ended on its own"
                child.send_signal(signal.SIGKILL)
            finally:
                child.wait(timeout=30)
                if child.stderr is not None:
                    child.stderr.close()
        assert child.returncode == -signal.SIGKILL
        assert proxy.fired_reply is not None and b" OK" in proxy.fired_reply
        # The server did it; the store never heard: the row is pending, never attempted.
        [row] = rows(env, mid)
        assert row.state == "pending" and row.attempts == 0
        assert count(env, "Archive", "mid:ma@example.test") == 1
        direct(env)
        report = await apply(env)
        assert report.applied == 1, report
        check_done(env, outbox, mid, "archive")
        assert_kept(env)
        await env.sync()
        assert message_ids(env)["ma@example.test"] == mid
        assert outbox.outcome(mid).state == "archived"
