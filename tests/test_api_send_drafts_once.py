"""Sending, polished (SQLite and PostgreSQL), against the private Postfix and Dovecot:

- a draft's send and the draft's end are one transaction: a crash between them (the step that
  ends the draft raising) leaves neither, and a draft whose send was queued but whose answer
  was lost (the process died after the commit, its claim left behind) answers a second send
  with the first one: one message, however often it is sent;
- templates on reply, reply-all and forward as on ``POST /messages`` (a missing merge field:
  422 naming it, nothing queued);
- ``correspond outbox list | mark-sent | resend``: a send whose fate is unknown decided from
  the shell, as through the API."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from correspond.drafts import DraftService
from correspond.errors import NotFound
from correspond.store import sends as sends_module
from correspond.store.draft_tables import DraftRow
from correspond.store.message_tables import MessageRow
from correspond.store.outbox_tables import OutboxRow
from correspond.store.users import User
from correspond.testing.dovecot import DovecotServer
from correspond.testing.postfix import PostfixServer
from helpers import StoreCli, user_client
from test_api_send import World, admin, app, settings, world  # noqa: F401 (fixtures)

pytestmark = pytest.mark.dovecot


def _sends(w: World) -> int:
    with Session(w.store.engine) as s:
        return int(
            s.scalar(select(func.count()).select_from(OutboxRow).where(OutboxRow.kind == "send"))
            or 0
        )


def _messages(w: World) -> int:
    with Session(w.store.engine) as s:
        return int(s.scalar(select(func.count()).select_from(MessageRow)) or 0)


def _me(client: TestClient, service: DraftService) -> User:
    user = service.users.get_user_by_id(client.get("/session").json()["id"])
    assert user is not None
    return user


def test_a_draft_is_sent_once_across_a_crash(
    world: World,  # noqa: F811
    admin: TestClient,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service: DraftService = admin.app.state.drafts  # type: ignore[attr-defined]
    user = _me(admin, service)
    body = {"account": world.account.name, "to": ["cy@example.test"], "subject": "Once"}
    draft_id = admin.post("/drafts", json=body).json()["id"]
    sends, messages = _sends(world), _messages(world)

    # The crash between the two steps: ending the draft fails after the message and its
    # outbox row were written, in the same transaction: neither stays, the draft does.
    def crash(*_args: Any) -> None:
        raise RuntimeError("the process died here")

    monkeypatch.setattr(sends_module.draft_store, "mark_draft_sent", crash)
    with pytest.raises(RuntimeError, match="died"):
        service.send(user, draft_id)
    monkeypatch.undo()
    assert (_sends(world), _messages(world)) == (sends, messages)
    kept = admin.get(f"/drafts/{draft_id}").json()
    assert kept["subject"] == "Once" and kept["sending"] is False

    # Sent again: one message; the draft is gone from every view of it.
    first = admin.post(f"/drafts/{draft_id}/send")
    assert first.status_code == 202, first.text
    assert (_sends(world), _messages(world)) == (sends + 1, messages + 1)
    assert admin.get(f"/drafts/{draft_id}").status_code == 404
    assert draft_id not in [d["id"] for d in admin.get("/drafts").json()]
    assert admin.put(f"/drafts/{draft_id}", json=body).status_code == 404
    # A retry (the answer was lost): the same send, not a second one.
    again = admin.post(f"/drafts/{draft_id}/send")
    assert again.status_code == 202, again.text
    assert again.json()["outbox_id"] == first.json()["outbox_id"]
    assert again.json()["message_id"] == first.json()["message_id"]
    assert (_sends(world), _messages(world)) == (sends + 1, messages + 1)


def test_a_draft_queued_before_a_crash_is_not_sent_twice(
    world: World,  # noqa: F811
    admin: TestClient,  # noqa: F811
) -> None:
    service: DraftService = admin.app.state.drafts  # type: ignore[attr-defined]
    user = _me(admin, service)
    draft_id = admin.post(
        "/drafts", json={"account": world.account.name, "to": ["cy@example.test"], "text": "x"}
    ).json()["id"]
    sends = _sends(world)
    # What DraftService.send does, up to the commit of the send; the process dies there
    # (no answer, the claim left behind). Then the claim goes stale and the user sends again.
    claimed = service.drafts.claim(user, draft_id)
    queued = service._queue(user, claimed)
    with Session(world.store.engine) as s, s.begin():
        s.execute(update(DraftRow).where(DraftRow.id == draft_id).values(sending_since=None))
    again = service.send(user, draft_id)
    assert again.outbox.id == queued.outbox.id and again.message_id == queued.message_id
    assert _sends(world) == sends + 1
    # Another user's id is still not found, sent or not.
    other, _ = service.users.create_user(
        "someone@example.test", display_name="", password_hash=None, role="member"
    )
    with pytest.raises(NotFound):
        service.send(other, draft_id)


async def test_templates_on_reply_reply_all_and_forward(
    admin: TestClient,  # noqa: F811
    world: World,  # noqa: F811
    dovecot: DovecotServer,
    postfix: PostfixServer,
) -> None:
    contact = dovecot.add_user()
    mid = f"tpl-{contact.username}@example.test"
    dovecot.deliver(
        world.user,
        (
            f"From: Cy <{contact.address}>\r\nTo: <{world.user.address}>\r\nSubject: Prices\r\n"
            f"Message-ID: <{mid}>\r\n\r\nWhat does it cost?\r\n"
        ).encode(),
        sender=contact.address,
    )
    await world.sync()
    question = admin.get(f"/accounts/{world.account.name}/messages").json()["messages"][0]
    person = admin.post("/contacts", json={"name": "Cy Contact", "emails": [contact.address]})
    assert person.status_code == 201, person.text
    contact_id = person.json()["id"]
    template = admin.post(
        "/templates",
        json={
            "name": "Quote",
            "subject": "Quote for {{deal.name}}",
            "text": "Dear {{contact.first_name}}, {{deal.name}} is ready.",
        },
    ).json()
    sends = _sends(world)
    for mode in ("reply", "reply-all", "forward"):
        missing = admin.post(
            f"/messages/{question['id']}/{mode}",
            json={"template_id": template["id"], "contact_id": contact_id},
        )
        assert missing.status_code == 422, (mode, missing.text)
        (problem,) = missing.json()["detail"]
        assert problem["type"] == "missing_merge_fields" and problem["fields"] == ["deal.name"]
        assert problem["loc"] == ["body", "template_id"]
    nobody = admin.post(
        f"/messages/{question['id']}/reply",
        json={"template_id": template["id"], "contact_id": 987654},
    )
    assert nobody.status_code == 422 and nobody.json()["detail"][0]["loc"] == ["body", "contact_id"]
    assert _sends(world) == sends  # nothing queued

    deal = admin.post("/deals", json={"name": "Renewal", "contact_ids": [contact_id]}).json()
    filled = {"template_id": template["id"], "contact_id": contact_id, "deal_id": deal["id"]}
    reply = admin.post(f"/messages/{question['id']}/reply", json=filled)
    assert reply.status_code == 202, reply.text
    shown = admin.get(f"/messages/{reply.json()['message_id']}").json()
    # The template's body above the quoted original; the thread's subject kept.
    assert shown["subject"] == "Re: Prices" and shown["in_reply_to"] == mid
    assert reply.json()["thread_id"] == question["thread_id"]
    text = shown["text"]
    assert text.index("Dear Cy, Renewal is ready.") < text.index("What does it cost?")
    assert [a["email"] for a in shown["to"]] == [contact.address]
    # A forward with no recipient goes to the contact, as a templated new message does.
    forward = admin.post(f"/messages/{question['id']}/forward", json=filled)
    assert forward.status_code == 202, forward.text
    shown = admin.get(f"/messages/{forward.json()['message_id']}").json()
    assert shown["subject"] == "Fwd: Prices" and "Dear Cy, Renewal is ready." in shown["text"]
    assert [a["email"] for a in shown["to"]] == [contact.address]
    typed = admin.post(
        f"/messages/{question['id']}/reply-all", json={**filled, "subject": "Our quote"}
    )
    assert typed.status_code == 202, typed.text
    assert admin.get(f"/messages/{typed.json()['message_id']}").json()["subject"] == "Our quote"
    assert _sends(world) == sends + 3


def _cut_during_data(w: World, outbox_id: int, error: str) -> None:
    """The row as ``sync.sender`` leaves an outbound-only identity's send cut during DATA
    (the crash itself is tests/test_send_crash.py's): failed at stage ``data``."""
    with Session(w.store.engine) as s, s.begin():
        row = s.get(OutboxRow, outbox_id)
        assert row is not None
        row.state, row.last_error = "failed", error
        row.payload = {**row.payload, "transport": "identity", "stage": "data"}


def test_cli_outbox_list_mark_sent_and_resend(
    world: World,  # noqa: F811
    admin: TestClient,  # noqa: F811
) -> None:
    cli = StoreCli(world.settings, world.store.engine.url.render_as_string(hide_password=False))
    me = admin.get("/session").json()["email"]
    body = {"account": world.account.name, "to": ["cy@example.test"], "text": "t"}
    later = {**body, "subject": "Later", "send_at": "2999-01-01T00:00:00Z"}
    bounced = admin.post("/messages", json=later).json()["outbox_id"]
    went = admin.post("/messages", json={**body, "subject": "Went?"}).json()["outbox_id"]
    lost = admin.post("/messages", json={**body, "subject": "Lost?"}).json()["outbox_id"]
    for outbox_id in (went, lost):
        _cut_during_data(world, outbox_id, "connection lost during DATA")
    with Session(world.store.engine) as s, s.begin():
        s.execute(
            update(OutboxRow)
            .where(OutboxRow.id == bounced)
            .values(state="failed", last_error="550 5.1.1 no such user")
        )

    listed = {r["outbox_id"]: r for r in cli.json("outbox", "list", "--user", me)}
    assert {i: r["status"] for i, r in listed.items()} == {
        bounced: "failed",
        went: "unknown",
        lost: "unknown",
    }
    assert listed[bounced]["error"] == "550 5.1.1 no such user"
    assert listed[went]["subject"] == "Went?" and listed[went]["to"] == ["cy@example.test"]
    table = cli("outbox", "list")
    assert table.exit_code == 0 and "unknown" in table.output and "mark-sent" in table.output
    # Another user has none; an unknown user is not found (exit 3).
    user_client(admin.app, "nosends@example.test")  # type: ignore[arg-type]
    assert cli.json("outbox", "list", "--user", "nosends@example.test") == []
    assert cli("outbox", "list", "--user", "ghost@example.test").exit_code == 3

    # It went: shown as sent, no longer listed; a second decision is refused (exit 2).
    assert cli.json("outbox", "mark-sent", str(went))["status"] == "sent"
    assert cli("outbox", "mark-sent", str(went)).exit_code == 2
    # It did not: queued again now, the same message.
    again = cli.json("outbox", "resend", str(lost))
    assert again["status"] == "sending" and again["message_id"] == listed[lost]["message_id"]
    with Session(world.store.engine) as s:
        row = s.get(OutboxRow, lost)
        assert row is not None and row.state == "pending" and row.payload["stage"] == "queued"
    # Only an unknown send is decided: a plainly failed one is not (exit 2); none: exit 3.
    refused = cli("outbox", "resend", str(bounced))
    assert refused.exit_code == 2 and "failed" in refused.output
    assert cli("outbox", "mark-sent", "987654321").exit_code == 3
    left = {r["outbox_id"]: r["status"] for r in cli.json("outbox", "list", "--user", me)}
    assert left == {bounced: "failed", lost: "sending"}
