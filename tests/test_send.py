"""Sending from the CRM through the private Postfix into the private Dovecot (SQLite and
PostgreSQL): the loop end to end, exactly one copy for the recipients and in Sent, the reply
joining the thread, undo and scheduled sends, SMTP failures with the server's words."""

from __future__ import annotations

import asyncio
import email
import imaplib
from collections.abc import Iterator
from datetime import timedelta
from email import policy
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from correspond.auth import AuthService
from correspond.errors import Conflict
from correspond.outgoing import Compose, SendService
from correspond.settings import Settings
from correspond.store.message_tables import MessageLocationRow, MessageRow
from correspond.store.sends import SendRecord, SendStore
from correspond.store.tables import AccountRow, FolderRow, utcnow
from correspond.store.users import User
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.postfix import PostfixServer
from mirror_helpers import BACKENDS, Env, imap_quote, make_env
from mirror_helpers import pg_engine as pg_engine  # a fixture, used through make_env

pytestmark = pytest.mark.dovecot


@pytest.fixture(params=BACKENDS)
def env(
    request: pytest.FixtureRequest,
    dovecot: DovecotServer,
    imap_user: ImapUser,
    tmp_path: Path,
    postfix: PostfixServer,
) -> Iterator[Env]:
    for world in make_env(request, dovecot, imap_user, tmp_path):
        point_at_postfix(world, postfix)
        yield world


def point_at_postfix(env: Env, postfix: PostfixServer, **settings: object) -> None:
    """The account submits through the private Postfix; sends go at once (no undo grace)."""
    with Session(env.store.engine) as s, s.begin():
        s.execute(
            update(AccountRow)
            .where(AccountRow.id == env.account.id)
            .values(smtp_host=postfix.host, smtp_port=postfix.port, smtp_security="starttls")
        )
    env.account = env.store.get_account(env.account.name)
    chosen: dict[str, object] = {
        "send_undo_seconds": 0,
        "send_probe_seconds": 1.0,
        "send_receipt_wait_seconds": 5.0,
    }
    env.settings = env.settings.clone(**{**chosen, **settings})


def owner(env: Env) -> User:
    auth = AuthService(
        env.store, Settings(password_hash_time_cost=1, password_hash_memory_kib=1024)
    )
    user, _ = auth.create_user(f"owner-{env.account.id}-{env.user.username}@crm.test", None)
    auth.users.set_account_owner(env.account.name, user.id)
    return user


def service(env: Env) -> SendService:
    return SendService(env.store, env.settings, env.blobs)


async def apply(env: Env) -> None:
    """One pass of the account's outbox on a fresh connection (what the live session does)."""
    syncer = env.syncer()
    client = await syncer.connect(env.account)
    try:
        await syncer.apply_outbox(client, env.store.get_account(env.account.name))
    finally:
        await client.logout()


async def settle(env: Env, record: SendRecord, timeout: float = 15.0) -> SendRecord:
    """Outbox passes until the send's row is done (applied, failed or cancelled): the receipt
    removed too, where it arrived after the Sent copy was filed."""
    sends = SendStore(env.store.engine)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (found := sends.get(record.outbox.id)).outbox.state == "pending":
        assert loop.time() < deadline, found
        await apply(env)
        await asyncio.sleep(0.1)
    return found


def mailbox(server: DovecotServer, user: ImapUser, name: str) -> list[tuple[bytes, set[str]]]:
    """Every message of ``user``'s folder ``name``: raw bytes and flags (imaplib)."""
    conn = server.imaplib_client(user)
    try:
        typ, _ = conn.select(imap_quote(name), readonly=True)
        assert typ == "OK"
        typ, data = conn.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[])")
        out = []
        for item in data:
            if isinstance(item, tuple):
                flags = set(imaplib.ParseFlags(item[0]) or ())
                out.append((item[1], {f.decode() for f in flags}))
        return out
    finally:
        conn.logout()


def with_id(messages: list[tuple[bytes, set[str]]], mid: str) -> list[tuple[bytes, set[str]]]:
    found = []
    for raw, flags in messages:
        parsed = email.message_from_bytes(raw, policy=policy.default)
        if str(parsed.get("Message-ID", "")).strip().strip("<>") == mid:
            found.append((raw, flags))
    return found


async def wait_for(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def mid_of(record: SendRecord) -> str:
    return str(record.outbox.payload["message_id_header"])


async def test_the_loop_sends_once_files_once_and_the_reply_joins_the_thread(
    env: Env, dovecot: DovecotServer, postfix: PostfixServer
) -> None:
    contact, hidden = dovecot.add_user(), dovecot.add_user()
    await env.sync()
    user = owner(env)
    record = service(env).send_new(
        user,
        env.account.name,
        Compose(
            to=(("Cy Contact", contact.address),),
            bcc=(("", hidden.address),),
            subject="Quarterly numbers",
            text="Here they are.",
        ),
    )
    # In the CRM at once, as sending, with its Bcc kept.
    assert record.status == "sending"
    with Session(env.store.engine) as s:
        row = s.get(MessageRow, record.message_id)
        assert row is not None
        assert row.direction == "outbound" and row.thread_id == record.thread_id
        assert [a["email"] for a in row.bcc_addrs] == [hidden.address]
    await apply(env)
    sends = SendStore(env.store.engine)
    assert sends.get(record.outbox.id).status == "sent"
    done = await settle(env, record)
    assert done.status == "sent", done
    assert str(done.outbox.payload["smtp_reply"]).startswith("250")
    postfix.wait_queue_empty()
    mid = mid_of(record)
    # The contact and the Bcc recipient each got it once; no Bcc header reached them.
    for who in (contact, hidden):
        got = with_id(mailbox(dovecot, who, "INBOX"), mid)
        assert len(got) == 1, who
        assert b"\nBcc:" not in got[0][0] and hidden.address.encode() not in got[0][0]
    # Exactly one copy in Sent, read, with the Bcc kept; the receipt is gone from INBOX.
    sent = with_id(mailbox(dovecot, env.user, "Sent"), mid)
    assert len(sent) == 1 and "\\Seen" in sent[0][1]
    assert hidden.address.encode() in sent[0][0]
    assert with_id(mailbox(dovecot, env.user, "INBOX"), mid) == []
    assert sends.sent_copy(env.account.id) == "append"  # the probe's finding, recorded

    # The copy in Sent comes back through the sync and joins the CRM row: no duplicate.
    await env.sync()
    with Session(env.store.engine) as s:
        rows = s.scalars(select(MessageRow).where(MessageRow.message_id_header == mid)).all()
        assert [r.id for r in rows] == [record.message_id]
        roles = s.scalars(
            select(FolderRow.role)
            .join(MessageLocationRow, MessageLocationRow.folder_id == FolderRow.id)
            .where(MessageLocationRow.message_id == record.message_id)
        ).all()
        assert roles == ["sent"]

    # The contact replies; the reply comes back into the CRM user's INBOX and joins the thread.
    reply = (
        f"From: Cy Contact <{contact.address}>\r\nTo: <{env.user.address}>\r\n"
        f"Subject: Re: Quarterly numbers\r\nMessage-ID: <reply-{mid}>\r\n"
        f"In-Reply-To: <{mid}>\r\nReferences: <{mid}>\r\n"
        f"Date: {email.utils.format_datetime(utcnow())}\r\n\r\nThanks!\r\n"
    ).encode()
    dovecot.deliver(env.user, reply, sender=contact.address)
    await env.sync()
    with Session(env.store.engine) as s:
        answer = s.scalars(
            select(MessageRow).where(MessageRow.message_id_header == f"reply-{mid}")
        ).one()
        assert answer.thread_id == record.thread_id

    # Applying again (a second pass, a restart) sends nothing more.
    await apply(env)
    postfix.wait_queue_empty()
    assert len(with_id(mailbox(dovecot, contact, "INBOX"), mid)) == 1
    assert len(with_id(mailbox(dovecot, env.user, "Sent"), mid)) == 1


async def test_undo_and_schedule_ride_on_the_outbox(env: Env, dovecot: DovecotServer) -> None:
    contact = dovecot.add_user()
    await env.sync()
    user = owner(env)
    env.settings = env.settings.clone(send_undo_seconds=30)
    undone = service(env).send_new(
        user, env.account.name, Compose(to=(("", contact.address),), subject="oops", text="x")
    )
    later = service(env).send_new(
        user,
        env.account.name,
        Compose(
            to=(("", contact.address),),
            subject="later",
            text="y",
            send_at=utcnow() + timedelta(hours=1),
        ),
    )
    assert undone.status == later.status == "scheduled"
    await apply(env)  # neither is due
    sends = SendStore(env.store.engine)
    assert sends.get(undone.outbox.id).status == "scheduled"
    cancelled = sends.cancel(undone.outbox.id)
    assert cancelled.status == "cancelled"
    with pytest.raises(Conflict):
        sends.cancel(undone.outbox.id)
    with Session(env.store.engine) as s:
        assert s.get(MessageRow, undone.message_id).state == "deleted"  # type: ignore[union-attr]
    # The scheduled one comes due: it goes.
    with Session(env.store.engine) as s, s.begin():
        from correspond.store.outbox_tables import OutboxRow

        s.execute(
            update(OutboxRow)
            .where(OutboxRow.id == later.outbox.id)
            .values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )
    await apply(env)
    assert sends.get(later.outbox.id).status == "sent"
    await settle(env, later)
    assert sends.get(undone.outbox.id).status == "cancelled"
    subjects = [
        email.message_from_bytes(raw)["Subject"] for raw, _ in mailbox(dovecot, contact, "INBOX")
    ]
    assert subjects == ["later"]
    with pytest.raises(Conflict):
        sends.cancel(later.outbox.id)


async def test_a_refused_recipient_fails_with_the_servers_words_and_a_deferred_one_retries(
    env: Env, dovecot: DovecotServer, postfix: PostfixServer
) -> None:
    contact = dovecot.add_user()
    await env.sync()
    user = owner(env)
    refused = service(env).send_new(
        user,
        env.account.name,
        Compose(to=(("", contact.address), ("", postfix.REFUSED)), subject="no", text="x"),
    )
    deferred = service(env).send_new(
        user, env.account.name, Compose(to=(("", postfix.DEFERRED),), subject="later", text="y")
    )
    await apply(env)
    sends = SendStore(env.store.engine)
    failed = sends.get(refused.outbox.id)
    assert failed.status == "failed"
    assert failed.error is not None
    assert postfix.REFUSED in failed.error and "no such person here" in failed.error
    # Nobody got it (the whole message is refused when one recipient is).
    postfix.wait_queue_empty()
    assert with_id(mailbox(dovecot, contact, "INBOX"), mid_of(refused)) == []
    waiting = sends.get(deferred.outbox.id)
    assert waiting.status == "sending" and waiting.stage == "queued"
    assert waiting.outbox.attempts == 1 and "try again later" in (waiting.outbox.last_error or "")
    assert waiting.outbox.next_attempt_at > utcnow()
    # A send waiting for its retry may still be taken back.
    assert sends.cancel(deferred.outbox.id).status == "cancelled"


async def test_a_message_over_the_servers_size_is_refused_before_sending(
    env: Env, dovecot: DovecotServer
) -> None:
    small = PostfixServer(dovecot, message_size_limit=4000).start()
    try:
        point_at_postfix(env, small)
        contact = dovecot.add_user()
        await env.sync()
        record = service(env).send_new(
            owner(env),
            env.account.name,
            Compose(to=(("", contact.address),), subject="big", text="x" * 6000),
        )
        await apply(env)
        failed = SendStore(env.store.engine).get(record.outbox.id)
        assert failed.status == "failed"
        assert "the server takes at most 4,000 (SIZE)" in (failed.error or "")
    finally:
        small.stop()


async def test_the_live_session_sends_after_the_undo_grace(
    env: Env, dovecot: DovecotServer, postfix: PostfixServer
) -> None:
    """As the runner runs it: the send is queued with an undo grace; the runner's round
    reports the account changed (the event, set by hand), the session notes when the row is
    due, wakes then and sends; the Sent copy comes back through the session's own poll."""
    contact = dovecot.add_user()
    env.settings = env.settings.clone(send_undo_seconds=1.0)
    user = owner(env)
    syncer = env.syncer()
    stop, changed = asyncio.Event(), asyncio.Event()
    synced: list[object] = []
    task = asyncio.create_task(
        syncer.run_account(
            env.account.name, stop=stop, poll_seconds=0.5, changed=changed, on_synced=synced.append
        )
    )
    sends = SendStore(env.store.engine)
    try:
        await wait_for(lambda: bool(synced) or task.done(), 15)
        record = service(env).send_new(
            user, env.account.name, Compose(to=(("", contact.address),), subject="live", text="x")
        )
        assert record.status == "scheduled"
        changed.set()
        await wait_for(lambda: sends.get(record.outbox.id).status == "sent", 15)
        assert record.send_at <= sends.get(record.outbox.id).outbox.applied_at  # type: ignore[operator]

        def in_crm_sent() -> bool:
            with Session(env.store.engine) as s:
                return bool(
                    s.scalars(
                        select(FolderRow.role)
                        .join(MessageLocationRow, MessageLocationRow.folder_id == FolderRow.id)
                        .where(MessageLocationRow.message_id == record.message_id)
                    ).all()
                    == ["sent"]
                )

        await wait_for(in_crm_sent, 15)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    postfix.wait_queue_empty()
    assert len(with_id(mailbox(dovecot, contact, "INBOX"), mid_of(record))) == 1
    assert len(with_id(mailbox(dovecot, env.user, "Sent"), mid_of(record))) == 1


async def test_correspond_send_queues_and_the_syncer_sends(
    env: Env, dovecot: DovecotServer, postfix: PostfixServer, tmp_path: Path
) -> None:
    from helpers import StoreCli
    from test_sync_dovecot import KEY

    contact = dovecot.add_user()
    await env.sync()
    owner(env)
    cli = StoreCli(
        Settings(data_dir=env.settings.data_dir, secret_key=KEY.decode()),
        env.store.engine.url.render_as_string(hide_password=False),
    )
    notes = tmp_path / "notes.txt"
    notes.write_text("the notes")
    bad = cli("send", "--from", env.account.name, "--to", "a@b@c.test", "--text", "x")
    assert bad.exit_code == 2 and "a@b@c.test" in bad.output
    shown = cli.json(
        "send", "--from", env.account.name, "--to", f"Cy <{contact.address}>",
        "--subject", "From the shell", "--text", "Hello", "--attach", str(notes),
        "--at", "2000-01-01T00:00:00",
    )  # fmt: skip
    assert shown["status"] == "sending"  # due at once (the time given is past)
    record = SendStore(env.store.engine).get(shown["outbox_id"])
    await settle(env, record)
    postfix.wait_queue_empty()
    (got,) = with_id(mailbox(dovecot, contact, "INBOX"), mid_of(record))
    parsed = email.message_from_bytes(got[0], policy=policy.default)
    assert parsed["Subject"] == "From the shell"
    assert [a.get_filename() for a in parsed.iter_attachments()] == ["notes.txt"]


async def test_a_server_that_cannot_be_reached_is_retried_without_a_lookup(
    env: Env, dovecot: DovecotServer
) -> None:
    from correspond.testing.net import free_port

    contact = dovecot.add_user()
    await env.sync()
    with Session(env.store.engine) as s, s.begin():
        s.execute(
            update(AccountRow).where(AccountRow.id == env.account.id).values(smtp_port=free_port())
        )
    env.account = env.store.get_account(env.account.name)
    record = service(env).send_new(
        owner(env), env.account.name, Compose(to=(("", contact.address),), text="x")
    )
    await apply(env)
    waiting = SendStore(env.store.engine).get(record.outbox.id)
    # Nothing reached a server: no receipt to wait for; the next attempt simply sends.
    assert waiting.status == "sending" and waiting.stage == "queued"
    assert "connecting to" in (waiting.outbox.last_error or "")
    assert waiting.outbox.attempts == 1
