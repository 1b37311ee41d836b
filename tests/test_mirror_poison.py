"""Poison mail: a message the engine cannot take never stops a folder or an account.

A message too deep, too big, refused by the database or that crashes the parser is stored as
far as possible (headers, size, the reason as a defect) and the folder goes on: the innocent
messages of the same batch are all stored and the account never ends in ``error``. Real
Dovecot, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import imaplib
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError

from correspond.imap._fetch import parse_bodystructure
from correspond.imap._lexer import Value
from correspond.imap.types import Multipart
from correspond.store.message_data import AddressData, MessageData
from correspond.store.messages import _refused_by_database, minimal_message
from correspond.store.records import Account
from correspond.sync.runner import make_parse_executor
from correspond.testing.dovecot import DovecotServer, ImapUser
from mirror_helpers import (
    BACKENDS,
    NOW,
    Env,
    audit_store,
    make_env,
    pg_engine,  # noqa: F401  (a fixture, used through make_env)
    raw_message,
)
from test_prepare import FragileBuilder

pytestmark = pytest.mark.dovecot


@pytest.fixture(params=BACKENDS)
def env(
    request: pytest.FixtureRequest, dovecot: DovecotServer, imap_user: ImapUser, tmp_path: Path
) -> Iterator[Env]:
    yield from make_env(request, dovecot, imap_user, tmp_path)


def nested_bomb(depth: int, size: int, *, message_id: str = "bomb@example.test") -> bytes:
    """A message of about ``size`` bytes whose one attachment sits ``depth`` multiparts deep."""
    head = (
        f"Message-ID: <{message_id}>\r\nDate: {email.utils.format_datetime(NOW)}\r\n"
        "From: Mallory <mallory@example.test>\r\nTo: bob@example.test\r\n"
        "Subject: nested bomb\r\nMIME-Version: 1.0\r\n"
    ).encode()
    opening = b"".join(
        f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode()
        for i in range(depth)
    )
    line = base64.b64encode(bytes(range(256))[:57]) + b"\r\n"  # 78 bytes a line
    payload = line * (size // len(line))
    inner = (
        b'Content-Type: application/octet-stream; name="deep.bin"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + payload
    )
    closing = b"".join(f"\r\n--b{i}--".encode() for i in reversed(range(depth))) + b"\r\n"
    return head + opening + inner + closing


def append(env: Env, mailbox: str, raws: list[bytes]) -> None:
    conn = env.server.imaplib_client(env.user)
    try:
        for n, raw in enumerate(raws):
            when = NOW - timedelta(minutes=len(raws) - n)
            typ, data = conn.append(mailbox, None, imaplib.Time2Internaldate(when), raw)
            assert typ == "OK", data
    finally:
        conn.logout()


def stored_by_key(env: Env) -> dict[str, int]:
    """dedupe key -> message id of every message of the account."""
    inbox = env.stored("INBOX")
    detail = {uid: key for uid, key in inbox.items()}
    out: dict[str, int] = {}
    for msg in env.messages.list_messages(env.account.id, limit=1000):
        out[env.messages.get_message(msg.id).dedupe_key] = msg.id
    assert set(out) == set(detail.values())
    return out


async def run_until_live(env: Env, timeout: float = 60) -> Account:
    """Run the account loop as the runner does until its first pass is done; its state then."""
    stop = asyncio.Event()
    passes: list[object] = []
    task = asyncio.create_task(
        env.syncer().run_account(
            env.account.name, stop=stop, poll_seconds=600, on_synced=passes.append
        )
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while not passes and not task.done():
            assert loop.time() < deadline, "no pass finished in time"
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    return env.store.get_account(env.account.name)


async def test_deep_and_big_message_among_innocent_ones(env: Env) -> None:
    # 26 MB (above the 25 MB whole-message limit) with its attachment 70 multiparts deep,
    # between innocent messages of the same batch.
    bomb = nested_bomb(70, 26 * 1024 * 1024)
    assert len(bomb) > env.settings.max_message_bytes
    raws = [raw_message(n) for n in range(3)] + [bomb] + [raw_message(n) for n in range(3, 6)]
    append(env, "INBOX", raws)

    account = await run_until_live(env)

    assert account.state == "live", (account.state, account.state_detail)
    keys = stored_by_key(env)
    assert set(keys) == {f"mid:m{n}@example.test" for n in range(6)} | {"mid:bomb@example.test"}
    assert env.messages.folder_checkpoint(env.folder("inbox").id).backfill_done
    bad = env.messages.get_message(keys["mid:bomb@example.test"])
    assert bad.truncated
    assert bad.summary.subject == "nested bomb"
    assert bad.summary.from_email == "mallory@example.test"
    assert any("above the size limit" in d for d in bad.defects), bad.defects
    assert any("nested" in d for d in bad.defects), bad.defects
    assert audit_store(env).problems == {}


async def test_deeper_than_the_server_describes(env: Env) -> None:
    # 120 levels: Dovecot describes ~100 of them, deeper than any limit of ours. A small
    # size limit sends it down the BODYSTRUCTURE path without a 26 MB message.
    env.settings = env.settings.clone(max_message_bytes=100_000)
    raws = [raw_message("a"), nested_bomb(120, 200_000), raw_message("b")]
    append(env, "INBOX", raws)
    report = await env.sync()
    assert [f.error for f in report.folders if f.error] == []
    keys = stored_by_key(env)
    assert set(keys) == {"mid:ma@example.test", "mid:mb@example.test", "mid:bomb@example.test"}
    bad = env.messages.get_message(keys["mid:bomb@example.test"])
    assert bad.truncated
    assert any("nested too deeply" in d for d in bad.defects), bad.defects


async def test_deep_message_below_the_size_limit(env: Env) -> None:
    # Whole-message path: the parser walks 50 levels and keeps the rest as one part.
    raws = [raw_message("a"), nested_bomb(70, 200_000), raw_message("b")]
    append(env, "INBOX", raws)
    report = await env.sync()
    assert [f.error for f in report.folders if f.error] == []
    keys = stored_by_key(env)
    assert set(keys) == {"mid:ma@example.test", "mid:mb@example.test", "mid:bomb@example.test"}
    bad = env.messages.get_message(keys["mid:bomb@example.test"])
    assert any("nested deeper" in d for d in bad.defects), bad.defects


def refuse_rows_containing(env: Env, marker: str) -> None:
    """Make the database refuse any message row whose text body holds ``marker`` (a trigger:
    what a constraint, an index limit or a type check does to one row, on either backend)."""
    with env.messages.engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_poison BEFORE INSERT ON messages "
                    f"WHEN NEW.text_body LIKE '%{marker}%' "
                    "BEGIN SELECT RAISE(ABORT, 'row refused'); END"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE OR REPLACE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN "
                    f"IF NEW.text_body LIKE '%{marker}%' THEN "
                    "RAISE EXCEPTION 'row refused' USING ERRCODE = '23514'; END IF; "
                    "RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            conn.execute(text("DROP TRIGGER IF EXISTS refuse_poison ON messages"))
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_poison BEFORE INSERT ON messages "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
                )
            )


def drop_refusal(env: Env) -> None:
    with env.messages.engine.begin() as conn:
        conn.execute(
            text(
                "DROP TRIGGER IF EXISTS refuse_poison"
                + ("" if conn.dialect.name == "sqlite" else " ON messages")
            )
        )


async def test_a_row_the_database_refuses_is_stored_minimal(env: Env) -> None:
    poison = raw_message("poison", body="REFUSE-ME: the database will not take this row.\r\n")
    raws = [raw_message(n) for n in range(3)] + [poison] + [raw_message(n) for n in range(3, 6)]
    append(env, "INBOX", raws)
    refuse_rows_containing(env, "REFUSE-ME")
    try:
        account = await run_until_live(env)
    finally:
        drop_refusal(env)
    assert account.state == "live", (account.state, account.state_detail)
    keys = stored_by_key(env)
    assert set(keys) == {f"mid:m{n}@example.test" for n in range(6)} | {"mid:mpoison@example.test"}
    bad = env.messages.get_message(keys["mid:mpoison@example.test"])
    assert bad.text is None
    assert bad.summary.subject == "message poison"
    assert any("database refused" in d for d in bad.defects), bad.defects
    good = env.messages.get_message(keys["mid:m3@example.test"])
    assert good.text == "Body of message 3.\n"
    assert good.defects == ()
    assert audit_store(env).problems == {}


@pytest.mark.postgres
@pytest.mark.parametrize("env", [pytest.param("postgresql")], indirect=True)
async def test_values_postgresql_refuses(env: Env) -> None:
    # A From address longer than the column (varchar 320) and a subject too big for a btree
    # index entry: PostgreSQL refuses both rows; SQLite would take them.
    noise = base64.b32encode(bytes(range(256)) * 40).decode()  # incompressible, ~16 KB
    long_from = raw_message("longfrom", sender=f"Spammer <{'x' * 400}@example.test>")
    long_subject = raw_message("longsubject", subject="Re: " + noise[:9000])
    raws = [raw_message(1), long_from, raw_message(2), long_subject, raw_message(3)]
    append(env, "INBOX", raws)
    account = await run_until_live(env)
    assert account.state == "live", (account.state, account.state_detail)
    keys = stored_by_key(env)
    assert set(keys) == {
        "mid:m1@example.test",
        "mid:m2@example.test",
        "mid:m3@example.test",
        "mid:mlongfrom@example.test",
        "mid:mlongsubject@example.test",
    }
    for name in ("longfrom", "longsubject"):
        bad = env.messages.get_message(keys[f"mid:m{name}@example.test"])
        assert any("database refused" in d for d in bad.defects), bad.defects
    assert audit_store(env).problems == {}


# --- pure pieces ---------------------------------------------------------------------------------


def test_bodystructure_nested_too_deeply_is_cut_not_an_error() -> None:
    depth = 70
    leaf: Value = [b"application", b"octet-stream", None, None, None, b"base64", b"100"]
    value: Value = leaf
    for _ in range(depth):
        value = [value, b"mixed"]
    structure = parse_bodystructure(value)
    levels = 0
    node = structure
    while isinstance(node, Multipart) and node.parts:
        node = node.parts[0]
        levels += 1
    assert isinstance(node, Multipart) and node.parts == ()  # the cut, kept as a marker
    assert 50 <= levels < depth
    assert node.section == ".".join(["1"] * levels)


def _wrapped(orig: BaseException) -> DBAPIError:
    return DBAPIError("INSERT ...", {}, orig)  # type: ignore[arg-type]


def test_refused_data_is_told_from_an_unavailable_database() -> None:
    busy = sqlite3.OperationalError("database is locked")
    busy.sqlite_errorname = "SQLITE_BUSY"  # type: ignore[attr-defined]
    trigger = sqlite3.IntegrityError("row refused")
    trigger.sqlite_errorname = "SQLITE_CONSTRAINT_TRIGGER"  # type: ignore[attr-defined]
    assert not _refused_by_database(_wrapped(busy))
    assert _refused_by_database(_wrapped(trigger))
    assert _refused_by_database(_wrapped(OverflowError("int too big")))
    assert not _refused_by_database(_wrapped(ConnectionResetError()))

    class PgError(Exception):
        def __init__(self, sqlstate: str) -> None:
            super().__init__(sqlstate)
            self.sqlstate = sqlstate

    lost = OperationalError("INSERT ...", {}, PgError(""))
    assert not _refused_by_database(lost)  # psycopg: connection lost, no SQLSTATE

    for state, refused in [
        ("22001", True),  # string data right truncation
        ("54000", True),  # program limit exceeded (index row size)
        ("23514", True),  # check violation
        ("08006", False),  # connection failure
        ("40001", False),  # serialisation failure
        ("53100", False),  # disk full
        ("57P01", False),  # admin shutdown
    ]:
        assert _refused_by_database(_wrapped(PgError(state))) is refused, state


def test_minimal_message_is_bounded() -> None:
    data = MessageData(
        dedupe_key="mid:x@example.test",
        message_id="y" * 5000,
        subject="s" * 10_000,
        normalized_subject="s" * 10_000,
        from_=AddressData("n" * 5000, "a" * 400 + "@example.test"),
        text="body",
        references=("r" * 5000,),
        gm_msgid=2**63,
        defects=tuple(f"d{n}" * 500 for n in range(50)),
    )
    small = minimal_message(data, "the reason")
    assert small.dedupe_key == data.dedupe_key
    assert small.message_id is None and small.from_ is None and small.text is None
    assert small.references == () and small.gm_msgid is None and small.truncated
    assert len(small.subject) == 255
    assert small.defects[-1] == "the reason" and len(small.defects) == 21
    assert all(len(d) <= 200 for d in small.defects)


async def test_a_message_that_crashes_the_parse_worker_costs_only_itself(env: Env) -> None:
    # The builder fails on subject "Contract": in the parse pool the worker process dies
    # (a hard crash), in the parent it raises. Both paths, whole and above the size limit.
    env.settings = env.settings.clone(max_message_bytes=4000)
    small = raw_message("small", subject="Contract")
    large = raw_message("large", subject="Contract", body="Too big to fetch whole.\r\n" * 300)
    raws = [raw_message("a"), small, raw_message("b"), large, raw_message("c")]
    append(env, "INBOX", raws)
    executor = make_parse_executor(1)
    assert executor is not None
    try:
        syncer = env.syncer(parse_executor=executor)
        syncer.builder = FragileBuilder()
        report = await env.sync(syncer)
    finally:
        executor.shutdown(wait=True)
    assert [f.error for f in report.folders if f.error] == []
    keys = stored_by_key(env)
    assert set(keys) == {f"mid:m{n}@example.test" for n in ("a", "b", "c", "small", "large")}
    for name in ("small", "large"):
        bad = env.messages.get_message(keys[f"mid:m{name}@example.test"])
        assert bad.defects[-1] == "could not be read: ValueError: builder bug", bad.defects
    good = env.messages.get_message(keys["mid:mb@example.test"])
    assert good.text == "Body of message b.\n"
    whole = env.messages.get_message(keys["mid:msmall@example.test"])
    assert whole.raw_blob_key is not None  # the raw message is kept: readable on demand
    assert audit_store(env).problems == {}
