"""Which mailbox messages are one message, end to end on Dovecot (SQLite and PostgreSQL).

* A Message-ID reused by another message (a spoofer, a broken mailer) never merges the two:
  only the same id, the same sender address and a Date within a day make one message.
  Mailing-list copies (same id and sender, a footer added) still merge.
* Mail without a Message-ID: a location is only linked without its body when the header
  block gives the key the whole message has; a header-only hash that equals another stored
  message's key must not swallow the new message.
"""

from __future__ import annotations

import email.utils
import imaplib
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from correspond.mail.dedupe import KeyFacts, distinct_key
from correspond.testing.dovecot import DovecotServer, ImapUser
from mirror_helpers import (
    BACKENDS,
    NOW,
    Env,
    audit_store,
    make_env,
    pg_engine,  # noqa: F401  (a fixture, used through make_env)
)

pytestmark = pytest.mark.dovecot


@pytest.fixture(params=BACKENDS)
def env(
    request: pytest.FixtureRequest, dovecot: DovecotServer, imap_user: ImapUser, tmp_path: Path
) -> Iterator[Env]:
    yield from make_env(request, dovecot, imap_user, tmp_path)


def message(
    body: str,
    *,
    mid: str | None = "x@example.test",
    sender: str = "Ann <ann@example.test>",
    when: datetime = NOW,
    subject: str = "Quarterly figures",
) -> bytes:
    head = f"Message-ID: <{mid}>\r\n" if mid else ""
    return (
        head + f"Date: {email.utils.format_datetime(when)}\r\nFrom: {sender}\r\n"
        f"To: bob@example.test\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body
    ).encode()


def append(env: Env, mailbox: str, raws: list[bytes]) -> None:
    conn = env.server.imaplib_client(env.user)
    try:
        for raw in raws:
            typ, data = conn.append(mailbox, None, imaplib.Time2Internaldate(NOW), raw)
            assert typ == "OK", data
    finally:
        conn.logout()


def texts_by_folder(env: Env, mailbox: str) -> dict[int, str | None]:
    """UID -> the stored text of the message at that location."""
    out: dict[int, str | None] = {}
    folder = env.folder(mailbox).id
    for uid, key in env.messages.folder_contents(folder).items():
        (mid,) = [
            m.id
            for m in env.messages.list_messages(env.account.id, folder_id=folder, limit=1000)
            if env.messages.get_message(m.id).dedupe_key == key
        ]
        out[uid] = env.messages.get_message(mid).text
    return out


async def test_a_reused_message_id_keeps_both_messages(env: Env) -> None:
    env.server.create_mailbox(env.user, "Lists")
    real = message("The real figures.\r\n")
    spoof = message("Pay this invoice.\r\n", sender="Ann <ann@evil.test>")
    reused = message("Next quarter's.\r\n", when=NOW - timedelta(days=3))
    append(env, "INBOX", [real, spoof, reused])
    report = await env.sync()
    assert [f.error for f in report.folders if f.error] == []
    assert env.messages.count_messages(env.account.id) == 3
    inbox = texts_by_folder(env, "INBOX")
    assert sorted(t or "" for t in inbox.values()) == [
        "Next quarter's.\n",
        "Pay this invoice.\n",
        "The real figures.\n",
    ]
    # Backfill runs newest first: whichever came first keeps the plain key, the others
    # take their distinct keys.
    keys = env.stored("INBOX")
    assert len(set(keys.values())) == 3 and "mid:x@example.test" in keys.values()
    assert keys[2] in (
        "mid:x@example.test",
        distinct_key(keys[2].split("#")[0], KeyFacts("ann@evil.test", NOW)),
    )
    text_of = {keys[uid]: text for uid, text in inbox.items()}

    # A list's copy (footer added) and a copy of the spoof arrive in another folder: each
    # links to its own message, without a body download (the metadata pass decides).
    footer = message("The real figures.\r\n--\r\nList footer: unsubscribe here.\r\n")
    append(env, "Lists", [footer, spoof])
    report = await env.sync()
    (lists,) = [f for f in report.folders if f.folder_id == env.folder("Lists").id]
    assert (lists.created, lists.linked) == (0, 2)
    assert env.messages.count_messages(env.account.id) == 3
    assert env.stored("Lists") == {1: keys[1], 2: keys[2]}
    assert [text_of[k] for _uid, k in sorted(env.stored("Lists").items())] == [
        "The real figures.\n",
        "Pay this invoice.\n",
    ]

    # Delivered later, a third sender with the same id is a message of its own too.
    append(env, "INBOX", [message("Third.\r\n", sender="eve@evil.test")])
    await env.sync()
    assert env.messages.count_messages(env.account.id) == 4
    assert texts_by_folder(env, "INBOX")[4] == "Third.\n"
    assert audit_store(env).problems == {}


async def test_without_message_id_a_header_hash_never_links_another_message(env: Env) -> None:
    env.server.create_mailbox(env.user, "Other")
    # Two messages without a Message-ID that share every header: the first has no text (a
    # bounce with a broken multipart reads like that), the second has some.
    first = message("", mid=None, subject="Undelivered Mail")
    second = message("The second one's own words.\r\n", mid=None, subject="Undelivered Mail")
    append(env, "INBOX", [first])
    await env.sync()
    assert env.messages.count_messages(env.account.id) == 1
    append(env, "Other", [second, first])
    report = await env.sync()
    assert [f.error for f in report.folders if f.error] == []
    # The second is its own message with its text; the copy of the first is linked to it.
    assert env.messages.count_messages(env.account.id) == 2
    other = env.stored("Other")
    assert other[2] == env.stored("INBOX")[1]
    assert other[1] != other[2]
    assert texts_by_folder(env, "Other")[1] == "The second one's own words.\n"
    assert audit_store(env).problems == {}


async def test_without_message_id_above_the_size_limit(env: Env) -> None:
    # The same, for mail whose body is never downloaded (the BODYSTRUCTURE path): another
    # size is another message; a copy (same bytes) in another folder is the same message.
    env.server.create_mailbox(env.user, "Other")
    env.settings = env.settings.clone(max_message_bytes=1024)
    first = message("First report.\r\n" * 60, mid=None, subject="Scan")
    second = message("Second, longer report.\r\n" * 40, mid=None, subject="Scan")
    append(env, "INBOX", [first])
    await env.sync()
    append(env, "Other", [second, first])
    report = await env.sync()
    assert [f.error for f in report.folders if f.error] == []
    assert env.messages.count_messages(env.account.id) == 2
    other = env.stored("Other")
    assert other[2] == env.stored("INBOX")[1] != other[1]
    assert texts_by_folder(env, "Other")[1] == "Second, longer report.\n" * 40
    assert audit_store(env).problems == {}


async def test_uidvalidity_reset_relinks_each_message_of_a_reused_id(env: Env) -> None:
    # The folder is re-created (new UIDVALIDITY) with the same three messages in another
    # order: each location goes back to its own message, nothing is fetched or stored twice.
    env.server.create_mailbox(env.user, "Projects")
    raws = [
        message("Real.\r\n"),
        message("Spoof.\r\n", sender="mallory@evil.test"),
        message("Later reuse.\r\n", when=NOW - timedelta(days=5)),
    ]
    append(env, "Projects", raws)
    await env.sync()
    before = {
        text: key
        for key, text in zip(
            env.stored("Projects").values(), texts_by_folder(env, "Projects").values(), strict=True
        )
    }
    assert len(before) == 3 and env.messages.count_messages(env.account.id) == 3
    conn = env.server.imaplib_client(env.user)
    try:
        assert conn.delete('"Projects"')[0] == "OK"
    finally:
        conn.logout()
    env.server.create_mailbox(env.user, "Projects")
    append(env, "Projects", list(reversed(raws)))
    report = await env.sync()
    (projects,) = [f for f in report.folders if f.folder_id == env.folder("Projects").id]
    assert projects.kind == "reset" and (projects.created, projects.linked) == (0, 3)
    after = {
        text: key
        for key, text in zip(
            env.stored("Projects").values(), texts_by_folder(env, "Projects").values(), strict=True
        )
    }
    assert after == before
    assert env.messages.count_messages(env.account.id) == 3
    assert audit_store(env).problems == {}
