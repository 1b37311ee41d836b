"""\\Answered when the CRM sends a reply (issue 9), against the private Postfix and Dovecot, on
SQLite and PostgreSQL: once the reply is sent, the message it answers has \\Answered in the CRM
and, through an ``answered`` outbox row, on every location in the mailbox, which another IMAP
client sees; applying the row again changes nothing, and the sync's echo is no change."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from correspond.store.outbox_tables import OutboxRow
from correspond.testing.dovecot import DovecotServer
from correspond.testing.postfix import PostfixServer
from test_api_send import World, admin, app, settings, world  # noqa: F401 (fixtures)
from test_send import mailbox

pytestmark = pytest.mark.dovecot


def _answered_rows(found: World) -> list[tuple[int, str]]:
    with Session(found.store.engine) as s:
        return [
            (int(r.id), r.state)
            for r in s.scalars(select(OutboxRow).where(OutboxRow.kind == "answered"))
        ]


async def test_a_reply_sent_from_the_crm_marks_the_original_answered(
    admin: TestClient,  # noqa: F811
    world: World,  # noqa: F811
    dovecot: DovecotServer,
    postfix: PostfixServer,
) -> None:
    contact = dovecot.add_user()
    mid = f"q-{contact.username}@example.test"
    inbound = (
        f"From: Cy <{contact.address}>\r\nTo: <{world.user.address}>\r\nSubject: Question\r\n"
        f"Message-ID: <{mid}>\r\n\r\nCan you help?\r\n"
    ).encode()
    dovecot.deliver(world.user, inbound, sender=contact.address)
    await world.sync()
    question = next(
        m
        for m in admin.get(f"/accounts/{world.account.name}/messages").json()["messages"]
        if m["subject"] == "Question"
    )
    assert "\\Answered" not in admin.get(f"/messages/{question['id']}").json()["flags"]

    # A forward answers nothing; a reply does, once it is sent (not while it is queued).
    forward = admin.post(
        f"/messages/{question['id']}/forward",
        json={"to": [contact.address], "text": "FYI", "send_at": "2000-01-01T00:00:00Z"},
    )
    assert forward.status_code == 202, forward.text
    replied = admin.post(
        f"/messages/{question['id']}/reply",
        json={"text": "Sure.", "send_at": "2000-01-01T00:00:00Z"},
    )
    assert replied.status_code == 202, replied.text
    assert "\\Answered" not in admin.get(f"/messages/{question['id']}").json()["flags"]
    assert _answered_rows(world) == []
    await world.apply()
    reply = replied.json()
    assert admin.get(f"/messages/{reply['message_id']}/send").json()["status"] == "sent"
    # Sent: the CRM shows \Answered at once; the mailbox gets it through the outbox.
    assert "\\Answered" in admin.get(f"/messages/{question['id']}").json()["flags"]
    ((row_id, state),) = _answered_rows(world)
    assert state == "pending"
    await world.apply()
    assert _answered_rows(world) == [(row_id, "applied")]
    postfix.wait_queue_empty()
    # Another IMAP client sees it on the original (and only on it) in INBOX.
    inbox = mailbox(dovecot, world.user, "INBOX")
    flagged = [raw for raw, flags in inbox if "\\Answered" in flags]
    assert len(flagged) == 1 and f"<{mid}>".encode() in flagged[0]

    # The echo: a sync sees no change; the CRM keeps \Answered.
    await world.sync()
    shown = admin.get(f"/messages/{question['id']}").json()
    assert "\\Answered" in shown["flags"]
    # Applied twice (a crash before the row was marked): harmless, nothing new queued.
    with Session(world.store.engine) as s, s.begin():
        s.execute(update(OutboxRow).where(OutboxRow.id == row_id).values(state="pending"))
    await world.apply()
    assert _answered_rows(world) == [(row_id, "applied")]
    again = mailbox(dovecot, world.user, "INBOX")
    assert sum("\\Answered" in flags for _, flags in again) == 1
    await world.sync()
    assert "\\Answered" in admin.get(f"/messages/{question['id']}").json()["flags"]
    # Nothing else was queued for the original (a send may still wait for its receipt).
    with Session(world.store.engine) as s:
        pending = s.scalar(
            select(func.count())
            .select_from(OutboxRow)
            .where(OutboxRow.state == "pending", OutboxRow.message_id == question["id"])
        )
    assert pending == 0
