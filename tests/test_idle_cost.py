"""What a live account costs while nothing happens (issue 7, section 6).

An edit of an account (by the CLI in another process, the API, ...) reaches its running session
through the runner's lease round, one query for every account of the worker, instead of each
session re-reading its account and folders on a timer of its own; IDLE connections wait without
a timer of their own too.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event

from correspond.errors import ConfigError
from correspond.imap.client import ImapClient
from correspond.imap.connect import ImapEndpoint, shared_ssl_context
from correspond.settings import Settings
from correspond.store import Store
from correspond.store.blobs import BlobStore
from correspond.store.messages import MessageStore
from correspond.sync.engine import AccountSyncer
from correspond.sync.runner import SyncRunner
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.store import add_dovecot_account

pytestmark = [pytest.mark.dovecot, pytest.mark.timeout(180)]

ACCOUNTS = 20


@pytest.fixture
def settings(store_settings: Settings, store_url: str) -> Settings:
    return store_settings.clone(database_url=store_url)


@pytest.fixture
def statements(store: Store) -> Iterator[list[str]]:
    """Every SQL statement the store's engine runs, in order."""
    seen: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", record)


def _cli() -> list[str]:
    exe = shutil.which("correspond", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "correspond.cli"]


def _cli_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRESPOND_")}
    env["CORRESPOND_SECRET_KEY"] = settings.secret_key or ""
    env["CORRESPOND_DATABASE_URL"] = settings.resolved_database_url
    env["CORRESPOND_DATA_DIR"] = str(settings.data_dir)
    return env


async def _eventually(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(check):  # type: ignore[arg-type]
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_edits_arrive_by_the_lease_round_not_by_per_account_polling(
    store: Store,
    settings: Settings,
    statements: list[str],
    dovecot: DovecotServer,
) -> None:
    users: list[ImapUser] = [dovecot.add_user() for _ in range(ACCOUNTS)]
    names = [add_dovecot_account(store, dovecot, u).name for u in users]
    states: list[tuple[str, str, str]] = []

    def fast_timer_engine(*args: object) -> AccountSyncer:
        # A session that still re-read its account on a timer would do it every 0.2 s here.
        store_, messages, blobs, settings_, executor, batch = args
        return AccountSyncer(
            store_,  # type: ignore[arg-type]
            messages,  # type: ignore[arg-type]
            blobs,  # type: ignore[arg-type]
            settings_,  # type: ignore[arg-type]
            parse_executor=executor,  # type: ignore[arg-type]
            batch_size=batch,  # type: ignore[arg-type]
            selection_check_interval=0.2,
        )

    runner = SyncRunner(
        store,
        settings,
        poll_seconds=0.5,
        lease_seconds=5.0,
        stop_grace_seconds=3.0,
        syncer_factory=fast_timer_engine,
        on_state=lambda name, state, detail: states.append((name, state, detail)),
    )
    # Another process will edit one account. It starts now: Python, the CLI's imports and the
    # store take seconds, and it waits (having only read the account) for the password on its
    # standard input, which the test writes when the edit is due.
    target, user = names[7], users[7]
    editor = subprocess.Popen(
        [
            *_cli(),
            "account",
            "update",
            target,
            "--imap-port",
            str(dovecot.tls_port),
            "--imap-security",
            "tls",
            "--password-stdin",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_cli_env(settings),
        text=True,
    )
    runner.start()
    try:
        await _eventually(
            lambda: all(a.state == "live" for a in (store.get_account(n) for n in names)),
            90,
            "every account live",
        )
        await asyncio.sleep(1.0)  # the last IDLE connections settle

        # Idle: only the runner's lease rounds touch the database, whatever the account count.
        rounds = runner.stats.rounds
        statements.clear()
        await asyncio.sleep(3.0)
        idle, rounds = list(statements), runner.stats.rounds - rounds
        assert rounds >= 3
        per_account = [s for s in idle if "folders" in s or "accounts.name = " in s]
        assert per_account == [], per_account[:3]
        # The CRM linker's poll (one per process, not per account: its watermark and queue)
        # is counted apart.
        linker = [s for s in idle if "crm_" in s or "FROM messages" in s or "advisory" in s]
        polls = 3.0 / settings.linker_poll_seconds + 1
        assert len(linker) <= 6 * polls, linker
        # A round: the dead same-host holders, the claim, the renewal, what is held.
        leases = [s for s in idle if s not in linker]
        assert len(leases) <= 4 * (rounds + 1), leases
        # Idle: one task per account (its session, in IDLE) and the runner's few. The stop and
        # "changed" flags interrupt IDLE by callback: no task waiting on each of them.
        tasks = asyncio.all_tasks()
        waiting = [t for t in tasks if t.get_coro().__qualname__.endswith(".wait")]
        assert len(waiting) <= 3, waiting[:3]  # the CRM linker's and the purger's
        sessions = [t for t in tasks if t.get_name().startswith("sync ")]
        assert len(sessions) == ACCOUNTS
        assert len(tasks) - len(sessions) <= 10, sorted(t.get_name() for t in tasks)

        # Another process edits one account: its session (only) hears of it within a round
        # or two and reconnects with the new settings.
        started = time.monotonic()
        _out, err = await asyncio.to_thread(
            editor.communicate, input=user.password + "\n", timeout=60
        )
        assert editor.returncode == 0, err
        edited_at = time.monotonic()
        await _eventually(
            lambda: any(n == target and "Connection settings changed" in d for n, _s, d in states),
            10,
            "the session to see the change",
        )
        seen_after = time.monotonic() - edited_at
        assert seen_after < 3.0, seen_after
        await _eventually(
            lambda: (a := store.get_account(target)).state == "live" and a.imap_security == "tls",
            30,
            "the edited account live again over implicit TLS",
        )
        others = {n for n, _s, d in states if "Connection settings changed" in d}
        assert others == {target}
        assert time.monotonic() - started < 60
    finally:
        if editor.poll() is None:  # the test failed before the edit
            editor.kill()
            editor.communicate()
        await runner.shutdown()


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_an_idle_tls_connection_keeps_small_receive_buffers(
    dovecot: DovecotServer, imap_user: ImapUser, security: str
) -> None:
    """Every TLS connection used to hold 512 KiB of zero-filled receive buffers (ours and
    asyncio's, 256 KiB each) for its whole life, then 80 KiB (16 + 64): three per account.
    Now both start at 4 KiB, grow while a large message streams in and shrink afterwards."""
    big = b"x" * 1_500_000
    dovecot.deliver(imap_user, _message(big))
    endpoint = ImapEndpoint(
        dovecot.host,
        dovecot.tls_port if security == "tls" else dovecot.port,
        security,  # type: ignore[arg-type]
        trusted_cert_pem=dovecot.cert_pem,
    )
    async with await ImapClient.connect(endpoint) as client:
        await client.login(imap_user.username, imap_user.password)
        await client.select(b"INBOX")
        channel = client._channel
        ssl_protocol = channel.transport._ssl_protocol  # type: ignore[union-attr]
        assert len(ssl_protocol._ssl_buffer) <= 4 * 1024
        assert len(channel._buf) <= 4 * 1024  # type: ignore[attr-defined]
        grown: list[int] = []
        updated = ssl_protocol.buffer_updated

        def watch(nbytes: int) -> None:
            updated(nbytes)
            grown.append(len(ssl_protocol._ssl_buffer))

        ssl_protocol.buffer_updated = watch
        fetched = await client.uid_fetch_list("1:*", "(UID BODY.PEEK[])")
        assert len(fetched) == 1 and big in (fetched[0].sections[""] or b"")
        # While the body streamed in, recvs were large (not 4 KiB each)...
        assert max(grown) >= 64 * 1024
        await client.noop()
        # ...and once it was over both buffers went back to their idle size.
        assert len(channel._buf) <= 4 * 1024  # type: ignore[attr-defined]
        assert len(ssl_protocol._ssl_buffer) <= 4 * 1024


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_a_tls_connection_never_allocates_asyncios_256_kib_buffer(
    dovecot: DovecotServer, imap_user: ImapUser, security: str
) -> None:
    """asyncio's SSLProtocol allocates (and zero-fills) 256 KiB per connection when it is made;
    trimming it to 64 KiB after the handshake still held 80 KiB of buffers per connection and
    left the freed blocks in the heap. A connection now holds a few KiB once open, and opening
    one over implicit TLS never peaks near 256 KiB (STARTTLS's plaintext phase reads with
    asyncio's own 256 KiB ``recv`` first, a transient bytes object that is not TLS's)."""
    endpoint = ImapEndpoint(
        dovecot.host,
        dovecot.tls_port if security == "tls" else dovecot.port,
        security,  # type: ignore[arg-type]
        trusted_cert_pem=dovecot.cert_pem,
    )
    async with await ImapClient.connect(endpoint) as warm:  # imports, caches, the lexer...
        await warm.login(imap_user.username, imap_user.password)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        client = await ImapClient.connect(endpoint)
        held, peak = (n - before for n in tracemalloc.get_traced_memory())
    finally:
        tracemalloc.stop()
    async with client:
        await client.login(imap_user.username, imap_user.password)
    assert held < 40 * 1024
    if security == "tls":
        assert peak < 64 * 1024


def _message(body: bytes) -> bytes:
    return (
        b"From: a@example.test\r\nTo: b@example.test\r\nSubject: big\r\n"
        b"Message-ID: <big@example.test>\r\nDate: Thu, 03 Dec 2026 05:00:00 +0000\r\n\r\n"
        + body
        + b"\r\n"
    )


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_connections_share_their_tls_context_and_capability_set(
    dovecot: DovecotServer, imap_user: ImapUser, security: str
) -> None:
    """A TLS context holds its trust store for as long as a connection made with it lives:
    ~830 KB parsed from the system store, ~22 KB for one pinned certificate. Made per
    connection, that (and the ~4.5 KB capability set) was paid by every live account."""
    endpoint = ImapEndpoint(
        dovecot.host,
        dovecot.tls_port if security == "tls" else dovecot.port,
        security,  # type: ignore[arg-type]
        trusted_cert_pem=dovecot.cert_pem,
    )
    async with (
        await ImapClient.connect(endpoint) as one,
        await ImapClient.connect(endpoint) as two,
    ):
        await one.login(imap_user.username, imap_user.password)
        await two.login(imap_user.username, imap_user.password)
        contexts = [
            c._channel.transport.get_extra_info("ssl_object").context  # type: ignore[union-attr]
            for c in (one, two)
        ]
        assert contexts[0] is contexts[1]
        assert contexts[0] is shared_ssl_context(endpoint)
        assert one.capabilities is two.capabilities and "IMAP4REV1" in one.capabilities
    # Another trust is another context (the system store here).
    system = ImapEndpoint(dovecot.host, dovecot.tls_port, "tls")
    assert shared_ssl_context(system) is shared_ssl_context(system)
    assert shared_ssl_context(system) is not contexts[0]
    assert shared_ssl_context(system).check_hostname
    # A certificate that cannot be loaded is refused every time, never cached.
    bad = ImapEndpoint(dovecot.host, dovecot.tls_port, "tls", trusted_cert_pem="not a cert")
    for _ in range(2):
        with pytest.raises(ConfigError):
            shared_ssl_context(bad)


def test_an_accounts_syncer_shares_the_heavy_parts(store: Store, settings: Settings) -> None:
    """One AccountSyncer per live account, 1,000 to a worker: each used to make two
    sessionmakers (a Session subclass each, with SQLAlchemy's event dispatch: ~30 KB with
    their listener deques once used) and a random.Random (2.5 KB)."""
    messages = MessageStore(store.engine)
    blobs = BlobStore.from_settings(settings)

    def make() -> AccountSyncer:
        return AccountSyncer(store, messages, blobs, settings)

    first, second = make(), make()
    assert first.outbox.store._sessions is second.outbox.store._sessions
    assert first.outbox.sender.sends._sessions is second.outbox.sender.sends._sessions
    assert first.rng is second.rng
    for syncer in (first, second):  # the dispatch SQLAlchemy builds on first use
        with syncer.outbox.store._sessions() as s, syncer.outbox.sender.sends._sessions() as t:
            s.connection()
            t.connection()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        more = [make() for _ in range(20)]
        for syncer in more:
            with syncer.outbox.store._sessions() as s:
                s.connection()
        each = (tracemalloc.get_traced_memory()[0] - before) / len(more)
    finally:
        tracemalloc.stop()
    assert each < 8 * 1024, each
