"""Sending through the API (SQLite and PostgreSQL): POST /messages (JSON and multipart),
replies, undo with POST /outbox/{id}/cancel, who may send, and refusals with clear errors. The
sends go through the private Postfix into the private Dovecot."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from correspond.api import create_app
from correspond.settings import Settings
from correspond.store import Store
from correspond.store.tables import AccountRow
from correspond.sync.engine import AccountSyncer
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.postfix import PostfixServer
from correspond.testing.store import add_dovecot_account, sync_once
from helpers import authed_client, user_client
from test_send import mailbox, with_id

pytestmark = pytest.mark.dovecot


@pytest.fixture
def settings(store_settings: Settings) -> Settings:
    return store_settings.clone(
        password_hash_time_cost=1, password_hash_memory_kib=1024, send_probe_seconds=1.0
    )


@pytest.fixture
def app(store: Store, settings: Settings) -> FastAPI:
    return create_app(settings, store=store)


@pytest.fixture
def admin(app: FastAPI) -> Iterator[TestClient]:
    with authed_client(app) as client:
        yield client


class World:
    def __init__(
        self, store: Store, settings: Settings, dovecot: DovecotServer, user: ImapUser
    ) -> None:
        self.store, self.settings, self.dovecot, self.user = store, settings, dovecot, user
        self.account = add_dovecot_account(store, dovecot, user)

    def syncer(self) -> AccountSyncer:
        from correspond.store.blobs import BlobStore
        from correspond.store.messages import MessageStore

        return AccountSyncer(
            self.store,
            MessageStore(self.store.engine),
            BlobStore.from_settings(self.settings),
            self.settings,
        )

    async def sync(self) -> None:
        await sync_once(self.syncer(), self.store.get_account(self.account.name))

    async def apply(self) -> None:
        syncer = self.syncer()
        account = self.store.get_account(self.account.name)
        client = await syncer.connect(account)
        try:
            await syncer.apply_outbox(client, account)
        finally:
            await client.logout()


@pytest.fixture
def world(
    store: Store,
    settings: Settings,
    dovecot: DovecotServer,
    imap_user: ImapUser,
    postfix: PostfixServer,
    admin: TestClient,
) -> World:
    found = World(store, settings, dovecot, imap_user)
    with Session(store.engine) as s, s.begin():
        s.execute(
            update(AccountRow)
            .where(AccountRow.id == found.account.id)
            .values(smtp_host=postfix.host, smtp_port=postfix.port, smtp_security="starttls")
        )
    admin_id = admin.get("/session").json()["id"]
    admin.app.state.auth.users.set_account_owner(found.account.name, admin_id)  # type: ignore[attr-defined]
    return found


async def test_send_undo_and_reply_through_the_api(
    app: FastAPI, admin: TestClient, world: World, dovecot: DovecotServer, postfix: PostfixServer
) -> None:
    contact, hidden = dovecot.add_user(), dovecot.add_user()
    inbound = (
        f"From: Cy <{contact.address}>\r\nTo: <{world.user.address}>\r\nSubject: Question\r\n"
        f"Message-ID: <q-{contact.username}@example.test>\r\n\r\nCan you help?\r\n"
    ).encode()
    dovecot.deliver(world.user, inbound, sender=contact.address)
    await world.sync()
    name = world.account.name

    # Multipart, with a file whose name is a path: 202, scheduled for the undo grace.
    message = {
        "account": name,
        "to": [f"Cy <{contact.address}>"],
        "bcc": [hidden.address],
        "subject": "Proposal",
        "html": "<p>Please find it <b>attached</b>.</p>",
    }
    answer = admin.post(
        "/messages",
        data={"message": json.dumps(message)},
        files=[("attachments", ("../../etc/proposal.txt", b"the offer", "text/plain"))],
    )
    assert answer.status_code == 202, answer.text
    first = answer.json()
    assert first["status"] == "scheduled" and first["error"] is None
    shown = admin.get(f"/messages/{first['message_id']}").json()
    assert [a["email"] for a in shown["bcc"]] == [hidden.address]
    assert [a["filename"] for a in shown["attachments"]] == ["proposal.txt"]
    assert admin.get(f"/messages/{first['message_id']}/send").json()["status"] == "scheduled"
    # Undo it.
    undone = admin.post(f"/outbox/{first['outbox_id']}/cancel")
    assert undone.status_code == 200 and undone.json()["status"] == "cancelled"
    assert admin.post(f"/outbox/{first['outbox_id']}/cancel").status_code == 409

    # Again, to go at once (send_at now), and a reply to the inbound question.
    answer = admin.post("/messages", json={**message, "send_at": "2000-01-01T00:00:00Z"})
    assert answer.status_code == 202, answer.text
    sent = answer.json()
    question = next(
        m
        for m in admin.get(f"/accounts/{name}/messages").json()["messages"]
        if m["subject"] == "Question"
    )
    replied = admin.post(
        f"/messages/{question['id']}/reply",
        json={"text": "Sure.", "send_at": "2000-01-01T00:00:00Z"},
    )
    assert replied.status_code == 202, replied.text
    reply = replied.json()
    assert reply["thread_id"] == question["thread_id"]
    await world.apply()
    for record in (sent, reply):
        status = admin.get(f"/messages/{record['message_id']}/send").json()
        assert status["status"] == "sent", status
    postfix.wait_queue_empty()
    got = mailbox(dovecot, contact, "INBOX")
    assert [m.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0] for m, _ in got] == [
        b"Proposal",
        b"Re: Question",
    ]
    assert b"In-Reply-To: <q-" in got[1][0]
    assert len(mailbox(dovecot, hidden, "INBOX")) == 1
    reply_mid = admin.get(f"/messages/{reply['message_id']}").json()
    assert reply_mid["thread_id"] == question["thread_id"]
    assert len(with_id(mailbox(dovecot, world.user, "Sent"), reply_mid["message_id"])) == 1


def test_who_may_send_and_clear_refusals(app: FastAPI, admin: TestClient, world: World) -> None:
    name = world.account.name
    member = user_client(app, "member@example.test")
    body = {"account": name, "to": ["x@example.test"], "subject": "s", "text": "t"}
    # Another member does not see the account: 404, as for no account at all.
    hidden = member.post("/messages", json=body)
    ghost = admin.post("/messages", json={**body, "account": "no-such-account"})
    assert hidden.status_code == ghost.status_code == 404
    # The same words (only the name the caller gave is echoed).
    assert hidden.text.replace(name, "<n>") == ghost.text.replace("no-such-account", "<n>")
    # Injection and bad recipients: refused, naming what is wrong; nothing queued.
    evil = admin.post("/messages", json={**body, "subject": "Hi\r\nBcc: victim@example.com"})
    assert evil.status_code == 400 and "line break" in evil.json()["detail"]
    bad = admin.post("/messages", json={**body, "to": ["a@example.com>\r\nRCPT TO:<b@x.test"]})
    assert bad.status_code == 422 and "address" in bad.text
    nobody = admin.post("/messages", json={**body, "to": []})
    assert nobody.status_code == 400 and "no recipient" in nobody.json()["detail"]
    # Neither an account nor an identity: the caller's default identity (here the account's).
    default = admin.post("/messages", json={"to": ["x@example.test"]})
    assert default.status_code == 202, default.text
    assert admin.post("/messages", json={"to": "x@example.test"}).status_code == 422
    assert admin.post("/messages", content=b"not json").status_code == 422


def test_identities_and_templates_through_the_api(
    app: FastAPI, admin: TestClient, world: World, dovecot: DovecotServer, postfix: PostfixServer
) -> None:
    """``identity_id`` (the caller's: another user's is a 404 in the same words as none),
    ``template_id`` with ``contact_id`` / ``deal_id`` (a missing field: 422 naming it, nothing
    queued), and a send whose fate is unknown decided by its sender only."""
    contact = dovecot.add_user()
    listed = admin.get("/identities").json()
    mine = next(i for i in listed if i["account"] == world.account.name)
    member = user_client(app, "member@example.test")
    body = {"to": [contact.address], "subject": "s", "text": "t", "identity_id": mine["id"]}
    theirs = member.post("/messages", json=body)
    ghost = member.post("/messages", json={**body, "identity_id": 987654})
    assert theirs.status_code == ghost.status_code == 404
    assert theirs.json()["detail"].replace(str(mine["id"]), "<id>") == ghost.json()[
        "detail"
    ].replace("987654", "<id>")
    chosen = admin.post("/messages", json=body)
    assert chosen.status_code == 202, chosen.text

    person = admin.post("/contacts", json={"name": "Cy Contact", "emails": [contact.address]})
    assert person.status_code == 201, person.text
    template = admin.post(
        "/templates",
        json={"name": "Hello", "subject": "Hi {{contact.first_name}}", "text": "{{deal.name}}"},
    ).json()
    before = admin.get(f"/accounts/{world.account.name}/messages").json()["messages"]
    missing = admin.post(
        "/messages", json={"template_id": template["id"], "contact_id": person.json()["id"]}
    )
    assert missing.status_code == 422, missing.text
    (problem,) = missing.json()["detail"]
    assert problem["type"] == "missing_merge_fields" and problem["fields"] == ["deal.name"]
    assert "{{deal.name}}" in problem["msg"]
    assert admin.get(f"/accounts/{world.account.name}/messages").json()["messages"] == before
    nobody = admin.post("/messages", json={"template_id": template["id"], "contact_id": 987654})
    assert nobody.status_code == 422 and nobody.json()["detail"][0]["loc"] == [
        "body",
        "contact_id",
    ]
    deal = admin.post(
        "/deals", json={"name": "Renewal", "contact_ids": [person.json()["id"]]}
    ).json()
    filled = admin.post(
        "/messages",
        json={
            "template_id": template["id"],
            "deal_id": deal["id"],
            "send_at": "2000-01-01T00:00:00Z",
        },
    )
    assert filled.status_code == 202, filled.text
    shown = admin.get(f"/messages/{filled.json()['message_id']}").json()
    assert shown["subject"] == "Hi Cy" and [a["email"] for a in shown["to"]] == [contact.address]
    # mark-sent / resend: only for a send whose fate is unknown; only its sender.
    outbox = filled.json()["outbox_id"]
    assert member.post(f"/outbox/{outbox}/resend").status_code == 404
    conflict = admin.post(f"/outbox/{outbox}/mark-sent")
    assert conflict.status_code == 409 and "unknown" in conflict.json()["detail"]
