"""The mirror follows what happens in the mailbox: folder choice, look-alike folders, changes
made by the user's other mail client, and sent mail coming back through Sent.

Every test works against the private Dovecot and compares the store with what the stdlib
``imaplib`` (an independent client, standing in for the user's phone or desktop client) reads.
Store-dependent tests run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import email.utils
import imaplib
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from correspond.rules.folders import leaf_name
from correspond.store.crm import CrmStore
from correspond.store.linker import LinkerStore, LinkPolicy
from correspond.store.message_tables import MessageRow
from correspond.testing.dovecot import DovecotServer, ImapUser
from helpers import Who
from mirror_helpers import (
    BACKENDS,
    NOW,
    Env,
    append_many,
    audit_store,
    imap_quote,
    make_env,
    pg_engine,  # noqa: F401  (a fixture, used through make_env)
    raw_message,
)

pytestmark = pytest.mark.dovecot

ALL_FLAGS = ("\\Seen", "\\Flagged", "\\Answered", "\\Draft")


@pytest.fixture(params=BACKENDS)
def env(
    request: pytest.FixtureRequest, dovecot: DovecotServer, imap_user: ImapUser, tmp_path: Path
) -> Iterator[Env]:
    yield from make_env(request, dovecot, imap_user, tmp_path)


def message_ids(env: Env) -> dict[str, int]:
    """Message-ID (without brackets) -> CRM message id, for the whole account."""
    with Session(env.messages.engine) as s:
        return {
            mid: int(i)
            for i, mid in s.execute(
                select(MessageRow.id, MessageRow.message_id_header).where(
                    MessageRow.account_id == env.account.id
                )
            )
        }


def uid_of(env: Env, mailbox: str, message_id: str) -> int:
    """The server's UID of the message with ``message_id`` in ``mailbox`` (imaplib)."""
    conn = env.server.imaplib_client(env.user)
    try:
        assert conn.select(imap_quote(mailbox), readonly=True)[0] == "OK"
        typ, data = conn.uid("SEARCH", "HEADER", "Message-ID", f"<{message_id}>")
        assert typ == "OK"
        uids = [int(u) for u in data[0].split()]
        assert len(uids) == 1, (mailbox, message_id, uids)
        return uids[0]
    finally:
        conn.logout()


def remote_flags(env: Env, mailbox: str) -> dict[int, frozenset[str]]:
    conn = env.server.imaplib_client(env.user)
    try:
        assert conn.select(imap_quote(mailbox), readonly=True)[0] == "OK"
        typ, data = conn.uid("FETCH", "1:*", "(UID FLAGS)")
        assert typ == "OK"
        out: dict[int, frozenset[str]] = {}
        for line in data:
            if not isinstance(line, bytes):
                continue
            match = re.search(rb"UID (\d+) FLAGS \(([^)]*)\)|FLAGS \(([^)]*)\) UID (\d+)", line)
            if match is None and b"UID" not in line:
                # An unsolicited "* n FETCH (FLAGS ...)" (the engine changed a flag meanwhile):
                # the solicited line for that message follows with its UID.
                continue
            assert match is not None, line
            if match.group(1):
                uid, flags = int(match.group(1)), match.group(2)
            else:
                uid, flags = int(match.group(4)), match.group(3)
            out[uid] = frozenset(f for f in flags.decode().split() if f != "\\Recent")
        return out
    finally:
        conn.logout()


# --- which folders -------------------------------------------------------------------------------


async def test_only_selected_folders_sync_and_lookalikes_are_their_own(env: Env) -> None:
    """A user's ``Clients/Sent`` and a flat ``Sent Items`` (while ``\\Sent`` is ``Sent``) are
    folders of their own: no role, synced separately, their mail located there only."""
    for name in ("Clients", "Clients/Sent", "Sent Items"):
        env.server.create_mailbox(env.user, name)
    day = NOW - timedelta(days=1)
    append_many(env, "INBOX", [("in1", day)])
    append_many(env, "Sent", [("real-sent", day)])
    append_many(env, "Clients/Sent", [("client-sent", day)])
    append_many(env, "Sent Items", [("sent-items", day)])
    append_many(env, "Archive", [("archived", day)])

    syncer = env.syncer()
    client = await syncer.connect(env.account)
    try:
        await syncer.refresh_folders(client, env.account)
    finally:
        await client.logout()
    env.store.select_folders(env.account.name, refs=["INBOX", "Clients/Sent"])
    report = await env.sync()

    inbox, sent = env.folder("inbox"), env.folder("sent")
    clients_sent, sent_items = env.folder("Clients/Sent"), env.folder("Sent Items")
    assert {f.folder_id for f in report.folders} == {inbox.id, clients_sent.id}
    # The look-alikes are separate rows with no role, though one shows the same leaf name.
    assert len({sent.id, clients_sent.id, sent_items.id}) == 3
    assert (sent.role, clients_sent.role, sent_items.role) == ("sent", None, None)
    assert leaf_name(clients_sent.name, clients_sent.delimiter) == sent.name == "Sent"
    assert env.stored("INBOX") == env.remote("INBOX")
    assert env.stored("Clients/Sent") == env.remote("Clients/Sent")
    for unselected in ("Sent", "Sent Items", "Archive"):
        assert env.stored(unselected) == {}, unselected
    ids = message_ids(env)
    assert set(ids) == {"min1@example.test", "mclient-sent@example.test"}
    located = env.messages.get_message(ids["mclient-sent@example.test"]).locations
    assert [fid for fid, _uid in located] == [clients_sent.id]
    # Mail in a user's folder is not sent mail just because of the folder's name.
    with Session(env.messages.engine) as s:
        direction = s.scalar(
            select(MessageRow.direction).where(MessageRow.id == ids["mclient-sent@example.test"])
        )
    assert direction == "inbound"

    # Then all folders: each look-alike keeps its own mail, nothing moves into Sent.
    env.store.select_folders(env.account.name, all_folders=True)
    await env.sync()
    for mailbox in ("INBOX", "Sent", "Clients/Sent", "Sent Items", "Archive"):
        assert env.stored(mailbox) == env.remote(mailbox), mailbox
    ids = message_ids(env)
    assert len(ids) == env.messages.count_messages(env.account.id) == 5
    where = {
        mid: [fid for fid, _uid in env.messages.get_message(i).locations] for mid, i in ids.items()
    }
    assert where["mreal-sent@example.test"] == [sent.id]
    assert where["mclient-sent@example.test"] == [clients_sent.id]
    assert where["msent-items@example.test"] == [sent_items.id]
    assert audit_store(env).problems == {}


async def test_junk_and_trash_mail_stays_off_customer_timelines_by_default(env: Env) -> None:
    """A new account syncs neither Junk nor Trash (one flag away), so a customer's spam and
    binned mail never reach their timeline; their INBOX mail does."""
    day = NOW - timedelta(days=1)
    # A sender of this test's own: the PostgreSQL store is shared by the module's tests.
    sender = "Carol <carol.junktest@example.test>"
    conn = env.server.imaplib_client(env.user)
    try:
        for mailbox, tag in (("INBOX", "hello"), ("Junk", "spam"), ("Trash", "binned")):
            raw = raw_message(tag, when=day, sender=sender)
            typ, data = conn.append(mailbox, None, imaplib.Time2Internaldate(day), raw)
            assert typ == "OK", data
    finally:
        conn.logout()
    await env.sync()
    selected = {f.name for f in env.store.list_folders(env.account.name) if f.selected}
    assert "INBOX" in selected and not {"Junk", "Trash"} & selected
    crm = CrmStore(env.store.engine)
    carol = crm.create_contact(name="Carol", emails=["carol.junktest@example.test"])
    LinkerStore(env.store.engine, LinkPolicy()).run_until_idle()
    timeline = crm.timeline("contact", carol.id, Who(1, is_admin=True), limit=50)
    assert [m.id for m in timeline.items] == [message_ids(env)["mhello@example.test"]]
    assert set(message_ids(env)) == {"mhello@example.test"}  # the others were never fetched


# --- changed elsewhere ---------------------------------------------------------------------------


@pytest.mark.parametrize("extensions", [("CONDSTORE", "QRESYNC"), ()], ids=["qresync", "plain"])
async def test_changes_made_by_another_client_reach_the_crm(
    env: Env, extensions: tuple[str, ...]
) -> None:
    """Flags set and cleared, an expunge, a MOVE and a new folder, all done over another IMAP
    connection, then ONE sync pass: the CRM shows each."""
    day = NOW - timedelta(days=1)
    append_many(env, "INBOX", [(f"c{i}", day) for i in range(6)])
    env.server.append(env.user, "INBOX", raw_message("flagged"), flags=ALL_FLAGS, date=day)
    syncer = env.syncer(extensions=extensions)
    await env.sync(syncer)
    before = message_ids(env)
    assert len(before) == 7

    # The user's other mail client at work.
    conn = env.server.imaplib_client(env.user)
    try:
        assert conn.select("INBOX")[0] == "OK"
        uid = {mid: uid_of(env, "INBOX", f"m{mid}@example.test") for mid in ("c0", "c2", "c3")}
        uid["flagged"] = uid_of(env, "INBOX", "mflagged@example.test")
        assert conn.uid("STORE", str(uid["c0"]), "+FLAGS", f"({' '.join(ALL_FLAGS)})")[0] == "OK"
        assert conn.uid("STORE", str(uid["flagged"]), "-FLAGS", f"({' '.join(ALL_FLAGS)})")[0] == (
            "OK"
        )
        assert conn.uid("STORE", str(uid["c2"]), "+FLAGS", "(\\Deleted)")[0] == "OK"
        assert conn.uid("EXPUNGE", str(uid["c2"]))[0] == "OK"
        assert conn.uid("MOVE", str(uid["c3"]), "Archive")[0] == "OK"
        assert conn.create("Projects")[0] == "OK"
        assert conn.uid("COPY", str(uid_of(env, "INBOX", "mc4@example.test")), "Projects")[0] == (
            "OK"
        )
    finally:
        conn.logout()
    append_many(env, "Projects", [("p0", day)])

    report = await env.sync(syncer)

    inbox, archive, projects = env.folder("inbox"), env.folder("Archive"), env.folder("Projects")
    assert projects.selected and projects.id in {f.folder_id for f in report.folders}
    for mailbox in ("INBOX", "Archive", "Projects"):
        assert env.stored(mailbox) == env.remote(mailbox), mailbox
        # Flags as the server has them, on every location.
        assert env.messages.location_flags(env.folder(mailbox).id) == remote_flags(env, mailbox)
    after = message_ids(env)
    assert after == {**before, "mp0@example.test": after["mp0@example.test"]}  # same rows
    detail = {mid: env.messages.get_message(i) for mid, i in after.items()}
    # flags: all four set on one message, all four cleared on another (the CRM copy too)
    assert set(detail["mc0@example.test"].summary.flags) == set(ALL_FLAGS)
    assert detail["mflagged@example.test"].summary.flags == ()
    # expunged: no location left, and gone from the INBOX listing
    assert detail["mc2@example.test"].locations == ()
    in_inbox = {m.id for m in env.messages.list_messages(env.account.id, folder_id=inbox.id)}
    assert after["mc2@example.test"] not in in_inbox
    # moved: the same CRM row, now located in Archive only
    assert [fid for fid, _uid in detail["mc3@example.test"].locations] == [archive.id]
    assert after["mc3@example.test"] not in in_inbox
    # the new folder: its own mail, and a copy of a known message linked (not duplicated)
    assert {fid for fid, _uid in detail["mc4@example.test"].locations} == {inbox.id, projects.id}
    assert [fid for fid, _uid in detail["mp0@example.test"].locations] == [projects.id]
    assert env.messages.count_messages(env.account.id) == 8
    problems = audit_store(env).problems
    assert problems == {"messages_without_location": [after["mc2@example.test"]]}


# --- sent mail coming back -----------------------------------------------------------------------


def _sent_pair(env: Env, n: str) -> tuple[bytes, bytes]:
    """One message as the user's client filed it in Sent (with Bcc) and as it arrived in the
    user's INBOX (the user was in Cc): same Message-ID, different bytes."""
    me = env.user.address
    head = (
        f"Message-ID: <sent-{n}@example.test>\r\n"
        f"Date: {email.utils.format_datetime(NOW - timedelta(hours=2))}\r\n"
        f"From: Me <{me}>\r\nTo: alice@example.test\r\nCc: {me}\r\n"
        f"Subject: proposal {n}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
    )
    body = "\r\nHere is the proposal.\r\n"
    sent = (head + "Bcc: boss@example.test\r\n" + body).encode()
    received = (
        f"Return-Path: <{me}>\r\nReceived: from mx.example.test by imap.example.test;"
        f" {email.utils.format_datetime(NOW)}\r\n" + head + body
    ).encode()
    return sent, received


@pytest.mark.parametrize("order", ["received_first", "sent_first", "same_pass"])
async def test_a_sent_copy_coming_back_joins_its_crm_row(env: Env, order: str) -> None:
    sent, received = _sent_pair(env, order)
    if order in ("received_first", "same_pass"):
        env.server.deliver(env.user, received)
    if order in ("sent_first", "same_pass"):
        env.server.append(env.user, "Sent", sent, flags=("\\Seen",))
    await env.sync()
    if order == "received_first":
        env.server.append(env.user, "Sent", sent, flags=("\\Seen",))
    elif order == "sent_first":
        env.server.deliver(env.user, received)
    await env.sync()

    ids = message_ids(env)
    assert list(ids) == [f"sent-{order}@example.test"]
    detail = env.messages.get_message(ids[f"sent-{order}@example.test"])
    inbox, sent_folder = env.folder("inbox"), env.folder("sent")
    assert {fid for fid, _uid in detail.locations} == {inbox.id, sent_folder.id}
    assert env.stored("INBOX") == env.remote("INBOX")
    assert env.stored("Sent") == env.remote("Sent")
    with Session(env.messages.engine) as s:
        row = s.get(MessageRow, detail.summary.id)
        assert row is not None
        # It is the user's own mail whichever copy came first, and the Bcc that only the Sent
        # copy carries is kept (the timeline links Bcc recipients of sent mail).
        assert row.direction == "outbound"
        assert [a["email"] for a in row.bcc_addrs] == ["boss@example.test"]
    assert audit_store(env).problems == {}
