"""A sync against a server that lies or sends values that do not parse.

A loopback proxy in front of the private Dovecot rewrites the server's lines (plaintext, so it
can): ``RFC822.SIZE`` claims 100 bytes for every message, ``[UIDVALIDITY n]`` becomes ``-1``,
a folder name gets a NUL byte. The sync must end in a clear account state (or store what it
can), never in a TypeError/ValueError traceback, and never keep a body above the size limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from correspond.accounts import AccountService
from correspond.store.message_tables import MessageRow
from correspond.store.tables import AccountRow
from correspond.sync.runner import sync_account_once
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.net import FakeImapServer
from test_sync_dovecot import NOW, Env, _sqlite, raw_message

pytestmark = pytest.mark.dovecot

Rewrite = Callable[[bytes], bytes]


class RewritingProxy:
    """Plaintext loopback proxy: each server→client line starting with ``*`` goes through
    ``rewrite`` (literal data is passed through unchanged, byte-counted)."""

    host = "127.0.0.1"

    def __init__(self, target_port: int, rewrite: Rewrite) -> None:
        self.target_port = target_port
        self.rewrite = rewrite
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> RewritingProxy:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)

        async def upstream() -> None:
            while data := await reader.read(65536):
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        async def downstream() -> None:
            while line := await up_reader.readline():
                if line.startswith(b"*"):
                    line = self.rewrite(line)
                writer.write(line)
                m = re.search(rb"\{(\d+)\}\r\n$", line)
                if m:
                    writer.write(await up_reader.readexactly(int(m.group(1))))
                await writer.drain()
            writer.close()

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        self._tasks.update(tasks)
        try:
            await asyncio.gather(*tasks)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            for task in tasks:
                task.cancel()
            self._tasks.difference_update(tasks)
            writer.close()
            up_writer.close()


@pytest.fixture
def env(dovecot: DovecotServer, imap_user: ImapUser, tmp_path: Path) -> Iterator[Env]:
    with _sqlite(tmp_path) as engine:
        yield Env(engine, dovecot, imap_user, tmp_path)


def through_proxy(env: Env, port: int) -> None:
    """Point the account at the proxy, in plaintext (Dovecot lets a loopback client log in
    without TLS; only the proxy can rewrite what it cannot read)."""
    with Session(env.messages.engine) as s, s.begin():
        s.execute(
            update(AccountRow)
            .where(AccountRow.id == env.account.id)
            .values(imap_port=port, imap_security="plain", allow_plaintext=True)
        )
    env.account = env.store.get_account(env.account.name)


def append(env: Env, *messages: bytes) -> None:
    conn = env.server.imaplib_client(env.user)
    try:
        for raw in messages:
            typ, data = conn.append("INBOX", None, None, raw)
            assert typ == "OK", data
    finally:
        conn.logout()


async def test_a_body_over_the_limit_is_dropped_whatever_rfc822_size_claimed(env: Env) -> None:
    # Every message claims RFC822.SIZE 100, so all take the whole-body path; the 200 KB one
    # arrives over max_message_bytes and is stored like any message above the limit: headers
    # and text parts up to the limit, no raw blob, with the reason. The small ones are stored
    # whole.
    big_text = "A line of a big message that a lying server claims is tiny.\r\n" * 3500
    big = raw_message("big", subject="big one", body=big_text, when=NOW)
    small = [raw_message(f"s{n}", subject=f"small {n}", when=NOW) for n in range(3)]
    append(env, big, *small)
    assert len(big) > 200_000

    def lie(line: bytes) -> bytes:
        return re.sub(rb"RFC822\.SIZE \d+", b"RFC822.SIZE 100", line)

    settings = env.settings.clone(max_message_bytes=50_000)
    async with RewritingProxy(env.server.port, lie) as proxy:
        through_proxy(env, proxy.port)
        result = await asyncio.wait_for(
            sync_account_once(env.store, settings, env.account.name), 60
        )
    assert result.ok, result.account.state_detail
    with Session(env.messages.engine) as s:
        rows = {r.subject: r for r in s.scalars(select(MessageRow))}
    assert set(rows) == {"big one", "small 0", "small 1", "small 2"}
    big_row = rows["big one"]
    assert big_row.truncated and big_row.raw_blob_key is None
    assert any("size limit" in d for d in big_row.defects)
    assert big_row.size >= len(big)  # the bytes the server really sent, not its claim
    for n in range(3):
        assert rows[f"small {n}"].raw_blob_key is not None and not rows[f"small {n}"].truncated


def uidvalidity_minus_one(line: bytes) -> bytes:
    return re.sub(rb"\[UIDVALIDITY \d+\]", b"[UIDVALIDITY -1]", line)


def nul_in_folder_name(line: bytes) -> bytes:
    if line.startswith(b"* LIST") and b"Archive" in line:
        return line.replace(b"Archive", b"Arc\x00hive")
    return line


@pytest.mark.parametrize(
    ("rewrite", "words"),
    [(uidvalidity_minus_one, "UIDVALIDITY"), (nul_in_folder_name, "NUL")],
    ids=["uidvalidity-minus-one", "nul-in-folder-name"],
)
async def test_values_that_do_not_parse_end_in_a_clear_account_state(
    env: Env, rewrite: Rewrite, words: str
) -> None:
    # Before: [UIDVALIDITY -1] raised TypeError (int(None)) out of SELECT, a traceback that
    # aborted the sync with the account left "backfilling".
    append(env, raw_message("one", when=NOW))
    async with RewritingProxy(env.server.port, rewrite) as proxy:
        through_proxy(env, proxy.port)
        result = await asyncio.wait_for(
            sync_account_once(env.store, env.settings, env.account.name), 60
        )
    assert not result.ok
    assert result.account.state == "error"
    assert words in result.account.state_detail


def trickle_for_ever(tag: bytes) -> Iterator[bytes | float]:
    """An answer that never ends: one byte every 50 ms."""
    yield b"* OK "
    while True:
        yield b"z"
        yield 0.05


def trickling_login(line: bytes) -> Iterator[bytes | float] | None:
    tag, _, rest = line.partition(b" ")
    if rest.upper().startswith((b"LOGIN", b"AUTHENTICATE")):
        return trickle_for_ever(tag)
    return None


async def test_sync_once_against_a_trickling_server_ends(env: Env) -> None:
    # Before: each byte reset the silence timeout, and `sync --once` never ended.
    settings = env.settings.clone(imap_command_timeout=0.5, imap_command_min_rate=1000.0)
    greeting = b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] trickle\r\n"
    async with FakeImapServer(greeting, reply=trickling_login) as fake:
        through_proxy(env, fake.port)
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await asyncio.wait_for(
            sync_account_once(env.store, settings, env.account.name), 30
        )
        assert loop.time() - started < 5
    assert not result.ok
    assert result.account.state == "disconnected"
    assert "did not complete in time" in result.account.state_detail


async def test_account_test_against_a_trickling_server_ends(env: Env) -> None:
    # `account test` and POST /accounts/{name}/test run AccountService.test_account: its
    # overall deadline comes from the settings.
    settings = env.settings.clone(
        imap_command_timeout=0.5, imap_command_min_rate=1.0, connection_test_timeout=1.5
    )
    greeting = b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] trickle\r\n"
    async with FakeImapServer(greeting, reply=trickling_login) as fake:
        through_proxy(env, fake.port)
        loop = asyncio.get_running_loop()
        started = loop.time()
        report = await AccountService(env.store, settings).test_account(env.account.name)
        assert loop.time() - started < 4
    assert (report.ok, report.problem) == (False, "timeout")
    assert "did not finish within 1.5 s" in report.message


async def test_a_search_flood_ends_in_a_clear_account_state(env: Env) -> None:
    # "* ESEARCH ... ALL 1:10000000" once took 735 MB; now the sync stops with the setting
    # named, and the process never expands the range.
    append(env, raw_message("one", when=NOW))

    def flood(line: bytes) -> bytes:
        return re.sub(rb"^(\* ESEARCH .*?) ALL \S+", rb"\1 ALL 1:10000000", line)

    settings = env.settings.clone(imap_max_search_results=5000)
    async with RewritingProxy(env.server.port, flood) as proxy:
        through_proxy(env, proxy.port)
        result = await asyncio.wait_for(
            sync_account_once(env.store, settings, env.account.name), 60
        )
    assert not result.ok
    assert result.account.state == "error"
    assert "more than 5000" in result.account.state_detail
    assert "CORRESPOND_IMAP_MAX_SEARCH_RESULTS" in result.account.state_detail
