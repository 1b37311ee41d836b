"""Drafts through the API (SQLite and PostgreSQL): saved, listed, changed, read, deleted and
sent through the private Postfix into the private Dovecot; a draft that answers a message goes
as a reply; inline images by content-id arrive as multipart/related whose ``cid:`` references
resolve; the limits (count, size) and another user's draft (404, as for none)."""

from __future__ import annotations

import email
import json
from email import policy
from email.message import EmailMessage

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from correspond.drafts import DraftService
from correspond.errors import ConfigError, Conflict
from correspond.store.drafts import DraftFields
from correspond.store.outbox_tables import OutboxRow
from correspond.store.tables import utcnow
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.postfix import PostfixServer
from helpers import StoreCli, user_client
from test_api_send import World, admin, app, settings, world  # noqa: F401 (fixtures)
from test_send import mailbox

pytestmark = pytest.mark.dovecot

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def _received(dovecot: DovecotServer, user: ImapUser, subject: str) -> EmailMessage:
    for raw, _flags in mailbox(dovecot, user, "INBOX"):
        parsed = email.message_from_bytes(raw, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        if parsed["Subject"] == subject:
            return parsed
    raise AssertionError(f"no message {subject!r} in the INBOX")


def _cid_resolves(message: EmailMessage) -> set[str]:
    """The content ids of the HTML's ``cid:`` references that a part of the same
    multipart/related carries (each checked to be in the HTML too)."""
    related = [p for p in message.walk() if p.get_content_type() == "multipart/related"]
    assert len(related) == 1, [p.get_content_type() for p in message.walk()]
    parts = related[0].get_payload()
    assert isinstance(parts, list)
    html = parts[0].get_content()
    found = set()
    for part in parts[1:]:
        cid = str(part["Content-ID"]).strip("<>")
        assert f"cid:{cid}" in html
        assert part.get_content() == PNG
        found.add(cid)
    return found


async def test_drafts_saved_changed_and_sent_with_inline_images(
    admin: TestClient,  # noqa: F811
    world: World,  # noqa: F811
    dovecot: DovecotServer,
    postfix: PostfixServer,
) -> None:
    contact = dovecot.add_user()
    name = world.account.name
    html = '<p>Our logo: <img src="cid:logo@x.test"></p>'
    draft = {
        "account": name,
        "to": [f"Cy <{contact.address}>"],
        "subject": "Draft one",
        "html": html,
        "inline_content_ids": ["logo@x.test"],
    }
    created = admin.post(
        "/drafts",
        data={"draft": json.dumps(draft)},
        files=[
            ("attachments", ("notes.txt", b"some notes", "text/plain")),
            ("inline", ("logo.png", PNG, "image/png")),
        ],
    )
    assert created.status_code == 201, created.text
    saved = created.json()
    assert saved["account_id"] == world.account.id and saved["sending"] is False
    assert sorted((f["filename"], f["content_id"]) for f in saved["files"]) == [
        ("logo.png", "logo@x.test"),
        ("notes.txt", None),
    ]
    assert saved["size"] >= len(PNG) + len(b"some notes")
    listed = admin.get("/drafts").json()
    assert [d["id"] for d in listed] == [saved["id"]]
    # Saved over (the composer's whole state): the text file dropped, the image kept.
    keep = [f["id"] for f in saved["files"] if f["filename"] == "logo.png"]
    changed = admin.put(
        f"/drafts/{saved['id']}",
        json={**draft, "subject": "Draft two", "keep_file_ids": keep, "inline_content_ids": []},
    )
    assert changed.status_code == 200, changed.text
    again = admin.get(f"/drafts/{saved['id']}").json()
    assert again["subject"] == "Draft two"
    assert [f["filename"] for f in again["files"]] == ["logo.png"]
    # Nobody else's: another user gets a 404, as for no draft; their list is empty.
    member = user_client(admin.app, "drafter@example.test")  # type: ignore[arg-type]
    assert member.get(f"/drafts/{saved['id']}").status_code == 404
    assert member.post(f"/drafts/{saved['id']}/send").status_code == 404
    assert member.get("/drafts").json() == []

    # Sent: queued like POST /messages (send_at now: the undo grace is the API's default);
    # the draft is gone.
    sent = admin.post(f"/drafts/{saved['id']}/send")
    assert sent.status_code == 202, sent.text
    assert sent.json()["status"] in ("scheduled", "sending")
    assert admin.get(f"/drafts/{saved['id']}").status_code == 404
    # Sent again (a retry): the same send, not a second message; another user's: 404.
    again = admin.post(f"/drafts/{saved['id']}/send")
    assert again.status_code == 202 and again.json()["outbox_id"] == sent.json()["outbox_id"]
    assert member.post(f"/drafts/{saved['id']}/send").status_code == 404
    # Due after the undo grace: made due now.
    with Session(world.store.engine) as s, s.begin():
        s.execute(
            update(OutboxRow)
            .where(OutboxRow.id == sent.json()["outbox_id"])
            .values(next_attempt_at=utcnow())
        )
    await world.apply()
    assert admin.get(f"/messages/{sent.json()['message_id']}/send").json()["status"] == "sent"
    postfix.wait_queue_empty()
    got = _received(dovecot, contact, "Draft two")
    assert _cid_resolves(got) == {"logo@x.test"}

    # POST /messages with a stored attachment as an inline image (by id, with a content id).
    stored = admin.get(f"/messages/{sent.json()['message_id']}").json()["attachments"]
    logo = next(a for a in stored if a["filename"] == "logo.png")
    direct = admin.post(
        "/messages",
        json={
            "account": name,
            "to": [contact.address],
            "subject": "Direct",
            "html": '<img src="cid:again">',
            "inline": [{"attachment_id": logo["id"], "content_id": "again"}],
            "send_at": "2000-01-01T00:00:00Z",
        },
    )
    assert direct.status_code == 202, direct.text
    await world.apply()
    postfix.wait_queue_empty()
    assert _cid_resolves(_received(dovecot, contact, "Direct")) == {"again"}
    # An inline image without HTML, or a bad content id: refused before anything is queued.
    nohtml = admin.post(
        "/messages",
        json={
            "account": name,
            "to": [contact.address],
            "text": "t",
            "inline": [{"attachment_id": logo["id"], "content_id": "x"}],
        },
    )
    assert nohtml.status_code == 400 and "HTML" in nohtml.text
    badcid = admin.post(
        "/messages",
        json={
            "account": name,
            "to": [contact.address],
            "html": "<p>x</p>",
            "inline": [{"attachment_id": logo["id"], "content_id": "a\r\nBcc: x@y.test"}],
        },
    )
    assert badcid.status_code == 400 and "content id" in badcid.text
    mismatch = admin.post(
        "/messages",
        data={"message": json.dumps({"account": name, "to": [contact.address], "html": "x"})},
        files=[("inline", ("logo.png", PNG, "image/png"))],
    )
    assert mismatch.status_code == 422 and "inline_content_ids" in mismatch.text


async def test_a_draft_answering_a_message_goes_as_a_reply(
    admin: TestClient,  # noqa: F811
    world: World,  # noqa: F811
    dovecot: DovecotServer,
    postfix: PostfixServer,
) -> None:
    contact = dovecot.add_user()
    mid = f"ask-{contact.username}@example.test"
    dovecot.deliver(
        world.user,
        (
            f"From: <{contact.address}>\r\nTo: <{world.user.address}>\r\nSubject: Ask\r\n"
            f"Message-ID: <{mid}>\r\n\r\nWell?\r\n"
        ).encode(),
        sender=contact.address,
    )
    await world.sync()
    question = admin.get(f"/accounts/{world.account.name}/messages").json()["messages"][0]
    made = admin.post(
        "/drafts", json={"in_reply_to_id": question["id"], "reply_mode": "reply", "text": "Yes."}
    )
    assert made.status_code == 201, made.text
    # A bad address is kept in the draft (it may be unfinished) and refused when sent; the
    # draft stays, and may be sent once fixed.
    draft_id = made.json()["id"]
    bad = {"in_reply_to_id": question["id"], "reply_mode": "reply", "cc": ["nobody-at-example"]}
    assert admin.put(f"/drafts/{draft_id}", json=bad).status_code == 200
    refused = admin.post(f"/drafts/{draft_id}/send")
    assert refused.status_code in (400, 422) and "nobody-at-example" in refused.text
    assert admin.get(f"/drafts/{draft_id}").json()["sending"] is False
    fixed = {"in_reply_to_id": question["id"], "reply_mode": "reply", "text": "Yes."}
    assert admin.put(f"/drafts/{draft_id}", json=fixed).status_code == 200
    sent = admin.post(f"/drafts/{draft_id}/send")
    assert sent.status_code == 202, sent.text
    assert sent.json()["thread_id"] == question["thread_id"]
    shown = admin.get(f"/messages/{sent.json()['message_id']}").json()
    assert shown["subject"] == "Re: Ask" and shown["in_reply_to"] == mid
    # A reply_mode needs the message it answers; a message one does not see is a 404.
    assert admin.post("/drafts", json={"reply_mode": "reply"}).status_code == 400
    assert admin.post("/drafts", json={"in_reply_to_id": 987654321}).status_code == 404


def test_draft_limits_and_claims(world: World, admin: TestClient) -> None:  # noqa: F811
    service: DraftService = admin.app.state.drafts  # type: ignore[attr-defined]
    user = service.users.get_user_by_id(admin.get("/session").json()["id"])
    assert user is not None
    small = DraftService(service.store, service.sending, max_drafts=2)
    small.drafts.max_bytes = 100
    for _ in range(2):
        small.create(user, DraftFields(subject="s"), [])
    with pytest.raises(ConfigError, match="drafts"):
        small.create(user, DraftFields(subject="s"), [])
    first = small.list(user)[0]
    with pytest.raises(ConfigError, match="at most 100"):
        small.replace(user, first.id, DraftFields(text="x" * 101), [])
    assert small.get(user, first.id).fields.subject == "s"  # nothing lost
    # A second send while the first is under way is refused.
    small.drafts.claim(user, first.id)
    assert small.get(user, first.id).sending
    with pytest.raises(Conflict):
        small.send(user, first.id)


def test_cli_drafts_and_outbox_cancel(world: World, admin: TestClient) -> None:  # noqa: F811
    cli = StoreCli(world.settings, world.store.engine.url.render_as_string(hide_password=False))
    me = admin.get("/session").json()["email"]
    made = admin.post(
        "/drafts",
        json={"account": world.account.name, "to": ["cy@example.test"], "subject": "From CLI"},
    ).json()
    listed = cli.json("drafts", "list", "--user", me)
    assert [d["id"] for d in listed] == [made["id"]]
    shown = cli("drafts", "show", str(made["id"]), "--user", me)
    assert shown.exit_code == 0 and "Subject: From CLI" in shown.output
    # Another user's draft is not found (exit 3), as for none.
    user_client(admin.app, "other@example.test")  # type: ignore[arg-type]
    assert cli.json("drafts", "list", "--user", "other@example.test") == []
    assert cli("drafts", "show", str(made["id"]), "--user", "other@example.test").exit_code == 3
    sent = cli.json("drafts", "send", str(made["id"]), "--user", me)
    assert sent["status"] == "scheduled"  # the undo grace
    assert cli("drafts", "show", str(made["id"]), "--user", me).exit_code == 3
    # Undo from the shell; too late a second time (exit 2), no such send (exit 3).
    cancelled = cli.json("outbox", "cancel", str(sent["outbox_id"]))
    assert cancelled["status"] == "cancelled"
    again = cli("outbox", "cancel", str(sent["outbox_id"]))
    assert again.exit_code == 2 and "cancelled" in again.output
    assert cli("outbox", "cancel", "987654321").exit_code == 3
    other = admin.post("/drafts", json={"subject": "Bin it"}).json()
    assert cli("drafts", "delete", str(other["id"]), "--user", me).exit_code == 0
    assert admin.get(f"/drafts/{other['id']}").status_code == 404
