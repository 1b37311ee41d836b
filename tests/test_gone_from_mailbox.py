"""A message expunged on the server and one moved to a folder that is not synced are told apart:
``locations: []`` with ``gone_from_mailbox_at`` and a reason, in ``messages show`` and the API,
instead of looking identical. Real Dovecot."""

from __future__ import annotations

import email.utils
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from correspond.api import create_app
from correspond.mailbox import MailboxReader
from correspond.settings import Settings
from correspond.testing.dovecot import DovecotServer, ImapUser
from helpers import StoreCli, authed_client
from test_sync_dovecot import NOW, Env, _sqlite, raw_message

KEY = Fernet.generate_key()


@pytest.fixture
def env(dovecot: DovecotServer, imap_user: ImapUser, tmp_path: Path) -> Iterator[Env]:
    with _sqlite(tmp_path) as engine:
        yield Env(engine, dovecot, imap_user, tmp_path, key=KEY)


def no_message_id(n: str) -> bytes:
    return (
        f"Date: {email.utils.format_datetime(NOW - timedelta(days=1))}\r\n"
        "From: Carol <carol@example.test>\r\nTo: bob@example.test\r\n"
        f"Subject: no id {n}\r\n\r\nA body without a Message-ID, {n}.\r\n"
    ).encode()


def by_subject(env: Env) -> dict[str, int]:
    reader = MailboxReader(env.store, env.settings)
    page = reader.list_messages(env.account.name, limit=50)
    return {m.subject: m.id for m in page.items}


def uid_of(conn: object, subject: str) -> bytes:
    typ, data = conn.uid("SEARCH", "SUBJECT", f'"{subject}"')  # type: ignore[attr-defined]
    assert typ == "OK" and data[0], subject
    return bytes(data[0].split()[0])


async def test_expunged_and_moved_are_told_apart(env: Env) -> None:
    conn = env.server.imaplib_client(env.user)
    try:
        for n in ("expunged", "moved", "stays"):
            conn.append("INBOX", None, None, raw_message(n, subject=f"about {n}"))
        conn.append("INBOX", None, None, no_message_id("x"))
    finally:
        conn.logout()
    await env.sync()  # Junk is not synced (not selected by default)
    ids = by_subject(env)
    assert set(ids) == {"about expunged", "about moved", "about stays", "no id x"}

    conn = env.server.imaplib_client(env.user)
    try:
        conn.select("INBOX")
        for subject in ("about expunged", "no id x"):
            conn.uid("STORE", uid_of(conn, subject), "+FLAGS", "(\\Deleted)")
        conn.expunge()
        typ, _ = conn.uid("MOVE", uid_of(conn, "about moved"), "Junk")
        assert typ == "OK"
    finally:
        conn.logout()
    await env.sync()

    reader = MailboxReader(env.store, env.settings)
    expunged = reader.get_message(ids["about expunged"])
    moved = reader.get_message(ids["about moved"])
    stays = reader.get_message(ids["about stays"])
    unknown = reader.get_message(ids["no id x"])
    assert expunged.locations == () and moved.locations == () and unknown.locations == ()
    assert expunged.gone_from_mailbox_at is not None and moved.gone_from_mailbox_at is not None
    assert (expunged.gone_reason, moved.gone_reason, unknown.gone_reason) == (
        "expunged",
        "moved",
        "unknown",
    )
    assert stays.locations and stays.gone_from_mailbox_at is None and stays.gone_reason is None

    # The API says the same.
    with authed_client(create_app(env.settings, store=env.store)) as client:
        body = client.get(f"/messages/{ids['about moved']}").json()
        assert body["locations"] == [] and body["gone_from_mailbox_at"] is not None
        assert body["gone_reason"] == "moved to an unsynced folder"
        body = client.get(f"/messages/{ids['about expunged']}").json()
        assert body["locations"] == [] and body["gone_reason"] == "expunged"
        body = client.get(f"/messages/{ids['about stays']}").json()
        assert body["locations"] and body["gone_from_mailbox_at"] is None
    # And messages show.
    url = env.store.engine.url.render_as_string(hide_password=False)
    cli = StoreCli(Settings(data_dir=env.settings.data_dir, secret_key=KEY.decode()), url)
    shown = cli("messages", "show", str(ids["about moved"]))
    assert shown.exit_code == 0, shown.output
    assert "gone from the mailbox since" in shown.output
    assert "moved to an unsynced folder" in shown.output
    shown = cli("messages", "show", str(ids["about expunged"]))
    assert "(expunged)" in shown.output

    # Moved back into a synced folder: in the mailbox again.
    conn = env.server.imaplib_client(env.user)
    try:
        conn.select("Junk")
        typ, _ = conn.uid("MOVE", uid_of(conn, "about moved"), "INBOX")
        assert typ == "OK"
    finally:
        conn.logout()
    await env.sync()
    back = reader.get_message(ids["about moved"])
    assert back.locations and back.gone_from_mailbox_at is None and back.gone_reason is None


async def test_a_move_to_a_synced_folder_not_in_this_pass_stays_open(env: Env) -> None:
    """A live pass syncs only the folder that changed: a message moved from INBOX to Archive
    (synced, its turn later) is neither called expunged nor moved away; Archive's pass links
    it."""
    from correspond.testing.store import sync_once

    conn = env.server.imaplib_client(env.user)
    try:
        conn.append("INBOX", None, None, raw_message("filed", subject="about filed"))
    finally:
        conn.logout()
    await env.sync()
    mid = by_subject(env)["about filed"]
    conn = env.server.imaplib_client(env.user)
    try:
        conn.select("INBOX")
        typ, _ = conn.uid("MOVE", uid_of(conn, "about filed"), "Archive")
        assert typ == "OK"
    finally:
        conn.logout()
    await sync_once(env.syncer(), env.account, folders=[env.folder("inbox")])
    reader = MailboxReader(env.store, env.settings)
    pending = reader.get_message(mid)
    assert pending.locations == () and pending.gone_reason is None
    await env.sync()
    filed = reader.get_message(mid)
    assert [loc.folder_name for loc in filed.locations] == ["Archive"]
    assert filed.gone_from_mailbox_at is None
