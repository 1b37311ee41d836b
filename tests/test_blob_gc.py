"""Removing an account deletes the blobs only it used; ``correspond doctor`` finds and removes
orphaned blobs and stale temporary files. Real Dovecot, real blobs."""

from __future__ import annotations

import base64
import email.utils
import json
import os
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from correspond.api import create_app
from correspond.mailbox import MailboxReader
from correspond.settings import Settings
from correspond.store.blob_gc import check_blobs, referenced_keys
from correspond.store.blobs import BlobStore
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.postgres import temporary_database
from correspond.testing.store import add_dovecot_account, migrated_engine, sync_once
from helpers import StoreCli, authed_client
from test_sync_dovecot import KEY, NOW, Env, _sqlite

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def with_attachment(n: str, payload: bytes, *, shared_id: str | None = None) -> bytes:
    """A multipart message with one attachment (``payload``)."""
    mid = shared_id or f"{n}@example.test"
    b64 = base64.encodebytes(payload).decode().replace("\n", "\r\n")
    return (
        f"Message-ID: <{mid}>\r\n"
        f"Date: {email.utils.format_datetime(NOW - timedelta(days=1))}\r\n"
        "From: Alice <alice@example.test>\r\nTo: bob@example.test\r\n"
        f"Subject: report {n}\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="BOUND"\r\n\r\n'
        "--BOUND\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"See attached, {n}.\r\n"
        "--BOUND\r\nContent-Type: application/octet-stream\r\n"
        f'Content-Disposition: attachment; filename="{n}.bin"\r\n'
        f"Content-Transfer-Encoding: base64\r\n\r\n{b64}"
        "--BOUND--\r\n"
    ).encode()


def append(server: DovecotServer, user: ImapUser, messages: list[bytes]) -> None:
    conn = server.imaplib_client(user)
    try:
        for raw in messages:
            typ, data = conn.append("INBOX", None, None, raw)
            assert typ == "OK", data
    finally:
        conn.logout()


def blob_files(root: Path) -> dict[str, int]:
    return {
        p.name: p.stat().st_size
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }


@pytest.fixture(params=BACKENDS)
def env(
    request: pytest.FixtureRequest, dovecot: DovecotServer, imap_user: ImapUser, tmp_path: Path
) -> Iterator[Env]:
    if request.param == "postgresql":
        # A database of its own: the doctor compares the blob directory with every row.
        server = request.getfixturevalue("pg_server")
        with temporary_database(server, migrated=True) as url, migrated_engine(url) as engine:
            yield Env(engine, dovecot, imap_user, tmp_path)
        return
    with _sqlite(tmp_path) as engine:
        yield Env(engine, dovecot, imap_user, tmp_path)


@pytest.fixture
def cli(env: Env) -> StoreCli:
    settings = Settings(data_dir=env.settings.data_dir, secret_key=KEY.decode())
    return StoreCli(settings, env.store.engine.url.render_as_string(hide_password=False))


async def two_accounts(env: Env) -> tuple[str, str, bytes]:
    """Account A (the env's) with two messages of its own and one shared with account B; B
    with the shared one and one of its own. Both synced. Returns A, B and the shared raw."""
    other = env.server.add_user()
    shared = with_attachment("shared", os.urandom(20_000), shared_id="shared@example.test")
    append(
        env.server,
        env.user,
        [
            with_attachment("a1", os.urandom(30_000)),
            with_attachment("a2", os.urandom(30_000)),
            shared,
        ],
    )
    append(env.server, other, [shared, with_attachment("b1", os.urandom(10_000))])
    b = add_dovecot_account(env.store, env.server, other)
    await env.sync()
    await sync_once(env.syncer(), b)
    return env.account.name, b.name, shared


async def test_remove_deletes_own_blobs_and_keeps_shared_ones(env: Env, cli: StoreCli) -> None:
    a, b, shared = await two_accounts(env)
    root = env.settings.blob_dir
    before = blob_files(root)
    # A: 3 raw + 3 attachments; B: 2 raw + 2 attachments, of which the shared message's two
    # are the same files as A's.
    assert len(before) == 8
    result = cli("account", "remove", a, "--yes")
    assert result.exit_code == 0, result.output
    after = blob_files(root)
    assert len(after) == 4, result.output
    freed = sum(before.values()) - sum(after.values())
    assert "4 stored files deleted" in result.output
    assert "2 kept" in result.output
    assert freed > 60_000
    # Every blob left is B's, and B still reads its whole mail, the shared message included.
    assert set(after) == referenced_keys(env.store.engine, before)
    reader = MailboxReader(env.store, env.settings)
    page = reader.list_messages(b, limit=10)
    assert len(page.items) == 2
    raws = {reader.raw(m.id) for m in page.items}
    assert shared in raws
    for m in page.items:
        for att in reader.get_message(m.id).attachments:
            assert reader.attachment(m.id, att.id)[1]


async def test_api_delete_deletes_own_blobs_and_keeps_shared_ones(env: Env) -> None:
    """``DELETE /accounts/{name}`` frees the same files as ``account remove``."""
    a, b, shared = await two_accounts(env)
    root = env.settings.blob_dir
    before = blob_files(root)
    assert len(before) == 8
    with authed_client(create_app(env.settings, store=env.store)) as client:
        preview = client.delete(f"/accounts/{a}", params={"dry_run": "true"})
        assert preview.status_code == 200
        assert blob_files(root) == before  # a preview deletes nothing
        assert client.delete(f"/accounts/{a}").status_code == 204
        assert client.get(f"/accounts/{a}").status_code == 404
        after = blob_files(root)
        assert len(after) == 4
        assert set(after) == referenced_keys(env.store.engine, before)
        listed = client.get(f"/accounts/{b}/messages").json()["messages"]
        assert len(listed) == 2
        raws = {client.get(f"/messages/{m['id']}/raw").content for m in listed}
        assert shared in raws


async def test_doctor_finds_and_removes_orphans_left_by_a_crash(env: Env, cli: StoreCli) -> None:
    a, _b, _shared = await two_accounts(env)
    root = env.settings.blob_dir
    before = blob_files(root)
    # A crash between the two steps of a removal: the rows are gone, the blobs are not.
    env.store.remove_account(a)
    assert blob_files(root) == before
    old = time.time() - 3600
    for name in before:
        os.utime(root / name[:2] / name, (old, old))
    stale = root / before.__iter__().__next__()[:2] / ".tmp-123-abc-0-000001"
    stale.write_bytes(b"x" * 1000)
    os.utime(stale, (old, old))
    young = root / "00" / ".tmp-456-def-0-000002"
    young.parent.mkdir(exist_ok=True)
    young.write_bytes(b"y" * 10)

    checked = cli("doctor", "--json")
    assert checked.exit_code == 1  # something to fix
    report = json.loads(checked.stdout)
    assert report["orphaned"] == 4
    orphan_bytes = sum(
        size for key, size in before.items() if key not in referenced_keys(env.store.engine, before)
    )
    assert report["orphaned_bytes"] == orphan_bytes
    assert report["temp_files"] == 1 and report["temp_bytes"] == 1000
    assert report["recent_temp_files"] == 1
    plain = cli("doctor")
    assert plain.exit_code == 1
    assert "Orphaned blobs (no message uses them): 4" in plain.output
    assert "doctor --fix" in plain.output

    fixed = cli("doctor", "--fix")
    assert fixed.exit_code == 0, fixed.output
    assert "removed 5 files" in fixed.output
    assert len(blob_files(root)) == 4
    assert not stale.exists() and young.exists()
    again = cli.json("doctor")
    assert again["orphaned"] == 0 and again["temp_files"] == 0 and again["missing"] == 0


async def test_doctor_leaves_young_orphans_alone(env: Env, cli: StoreCli) -> None:
    """A blob a sync wrote a moment ago has no row yet: not an orphan until the grace ends."""
    BlobStore(env.settings.blob_dir).put(b"written by a sync about to commit" * 100)
    report = cli.json("doctor", "--fix")
    assert report["orphaned"] == 0 and report["recent_unreferenced"] == 1
    assert len(blob_files(env.settings.blob_dir)) == 1


def test_a_blob_reserved_by_a_writer_survives_collection(tmp_path: Path) -> None:
    """A writer that finds content already stored (another account's) reserves it: a
    collection that started before, and found it unreferenced, keeps it."""
    blobs = BlobStore(tmp_path / "blobs")
    data = b"an attachment two accounts share" * 100
    key = blobs.put(data)
    old = time.time() - 3600
    os.utime(blobs.path_for(key), (old, old))
    started = time.time()
    assert blobs.put_many([data]) == [key]  # the other account's sync: already there
    deleted, _ = blobs.delete_unreferenced([key], lambda keys: set(), touched_after=started)
    assert deleted == 0 and blobs.get(key) == data
    # Without a writer, the same collection deletes it.
    os.utime(blobs.path_for(key), (old, old))
    deleted, freed = blobs.delete_unreferenced([key], lambda keys: set(), touched_after=started)
    assert deleted == 1 and freed > 0 and not blobs.exists(key)


def test_a_blob_referenced_meanwhile_is_put_back(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    key = blobs.put(b"x" * 5000)
    old = time.time() - 3600
    os.utime(blobs.path_for(key), (old, old))
    deleted, _ = blobs.delete_unreferenced([key], lambda keys: set(keys), touched_after=old + 1)
    assert deleted == 0 and blobs.exists(key)
    assert not [p for p in blobs.root.rglob(".gc-*")]


async def test_doctor_settles_blobs_set_aside_by_a_crash(env: Env, cli: StoreCli) -> None:
    await env.sync()  # nothing in the mailbox: no blobs yet
    blobs = BlobStore(env.settings.blob_dir)
    append(env.server, env.user, [with_attachment("k", os.urandom(5000))])
    await env.sync()
    keys = list(blob_files(env.settings.blob_dir))
    assert len(keys) == 2
    lone = blobs.put(b"nobody uses this" * 100)
    # A deletion killed after setting blobs aside: one referenced, one not.
    for key in (keys[0], lone):
        path = blobs.path_for(key)
        os.rename(path, path.parent / f".gc-{key}-999")
    report = json.loads(cli("doctor", "--fix", "--json").stdout)
    assert report["set_aside"] == 2
    assert blobs.exists(keys[0]) and not blobs.exists(lone)
    assert not list(env.settings.blob_dir.rglob(".gc-*"))
    assert check_blobs(env.store.engine, blobs).missing == 0


async def test_doctor_purges_messages_deleted_past_their_retention(env: Env, cli: StoreCli) -> None:
    """A message deleted in the CRM 31 days ago (its ``deleted_at`` set back: the CLI runs on
    the real clock) is reported, and purged by ``--fix`` with the blobs only it used; the
    shared message's blobs stay for the other account."""
    from sqlalchemy import select, update
    from sqlalchemy.orm import Session

    from correspond.store.message_tables import MessageRow
    from correspond.store.outbox import OutboxStore
    from correspond.store.tables import utcnow

    a, b, _shared = await two_accounts(env)
    root = env.settings.blob_dir
    before = blob_files(root)
    account_a = env.store.get_account(a)
    with Session(env.store.engine) as s:
        ids = dict(
            s.execute(
                select(MessageRow.message_id_header, MessageRow.id).where(
                    MessageRow.account_id == account_a.id
                )
            )
            .tuples()
            .all()
        )
    outbox = OutboxStore(env.store.engine)
    for header in ("a1@example.test", "shared@example.test"):
        outbox.record(ids[header], "delete", user_id=None)
    assert cli.json("doctor")["deleted_past_retention"] == 0  # deleted just now: kept
    with Session(env.store.engine) as s, s.begin():
        s.execute(
            update(MessageRow)
            .where(MessageRow.id.in_([ids["a1@example.test"], ids["shared@example.test"]]))
            .values(deleted_at=utcnow() - timedelta(days=31))
        )
    checked = cli("doctor", "--json")
    assert checked.exit_code == 1
    assert json.loads(checked.stdout)["deleted_past_retention"] == 2
    assert "past their 30-day retention: 2" in cli("doctor").output

    fixed = cli("doctor", "--fix", "--json")
    assert fixed.exit_code == 0, fixed.output
    report = json.loads(fixed.stdout)
    assert report["purged"]["messages"] == 2
    # a1's raw message and attachment go; the shared message's two blobs stay (B uses them).
    assert report["purged"]["blobs_deleted"] == 2
    after = blob_files(root)
    assert len(after) == len(before) - 2
    assert set(after) == referenced_keys(env.store.engine, before)
    with Session(env.store.engine) as s:
        left = set(
            s.scalars(
                select(MessageRow.message_id_header).where(MessageRow.account_id == account_a.id)
            )
        )
    assert left == {"a2@example.test"}
    reader = MailboxReader(env.store, env.settings)
    assert len(reader.list_messages(b, limit=10).items) == 2
    assert cli.json("doctor")["deleted_past_retention"] == 0
