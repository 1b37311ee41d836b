"""Identities, templates and the composer's defaults, through the API, on SQLite and PostgreSQL.

Visibility follows the one rule (store.visibility): an identity is its owner's alone, of kind
``account`` only while the owner may send from the account (their own, their team inbox); a
template is its owner's and its team's, changed by its owner or an admin. SMTP identities are
tested on save against real servers (a closed port, the private Postfix where the checkout has
it); the secret rule (new server without a password drops it) is checked on the store.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from correspond.api import create_app
from correspond.composer import ComposeService
from correspond.rules.presets import draft_from_preset
from correspond.settings import Settings
from correspond.store import Store
from correspond.store.compose import IdentityChanges, IdentityStore, check_smtp_settings
from correspond.store.compose_tables import IdentityRow
from correspond.store.users import User
from correspond.sync.smtp_check import SmtpReport, check_smtp
from correspond.testing.dovecot import DovecotServer
from correspond.testing.net import free_port
from correspond.testing.postfix import PostfixServer
from helpers import authed_client, user_client

_SECRET = "s2 correct horse!"

NOW = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)


@pytest.fixture
def settings(store_settings: Settings) -> Settings:
    return store_settings.clone(
        password_hash_time_cost=1,
        password_hash_memory_kib=1024,
        imap_connect_timeout=2.0,
        connection_test_timeout=3.0,
    )


@pytest.fixture
def app(store: Store, settings: Settings) -> FastAPI:
    return create_app(settings, store=store)


@pytest.fixture
def admin(app: FastAPI) -> Iterator[TestClient]:
    with authed_client(app) as client:
        yield client


def _user(app: FastAPI, email: str) -> User:
    return app.state.auth.users.get_user(email)  # type: ignore[no-any-return]


def _account(store: Store, app: FastAPI, name: str, owner_email: str) -> None:
    draft = draft_from_preset("other", name=name, email=f"{name}@example.org", imap_host="imap.x")
    store.add_account(draft, "account-pw", owner_id=_user(app, owner_email).id)


def test_every_account_a_user_may_send_from_is_an_identity(
    app: FastAPI, admin: TestClient, store: Store
) -> None:
    ann = user_client(app, "ann@example.test")
    bob = user_client(app, "bob@example.test")
    _account(store, app, "ann-mail", "ann@example.test")
    _account(store, app, "bob-mail", "bob@example.test")
    _account(store, app, "support", "admin@example.test")
    team = admin.post("/teams", json={"name": "Sales"}).json()
    for email in ("ann@example.test", "bob@example.test"):
        member = admin.put(f"/teams/{team['id']}/members/{_user(app, email).id}")
        assert member.status_code in (200, 204), member.text
    # A team inbox: every member sends from it. Bob's account shared in full: read, not sent.
    assert admin.patch("/accounts/support", json={"team_id": team["id"]}).status_code == 200
    assert bob.patch("/accounts/bob-mail", json={"sharing": "team"}).status_code == 200

    listed = ann.get("/identities").json()
    assert [(i["kind"], i["account"], i["address"]) for i in listed] == [
        ("account", "ann-mail", "ann-mail@example.org"),
        ("account", "support", "support@example.org"),
    ]
    assert [i["is_default"] for i in listed] == [True, False]
    assert listed[0]["smtp"]["host"] == "imap.x" and listed[0]["has_password"]
    defaults = ann.get("/compose/defaults").json()
    assert defaults["identity"]["address"] == "ann-mail@example.org"
    assert len(defaults["identities"]) == 2 and defaults["size_limit"] == 25 * 1024 * 1024
    assert "contact.first_name" in defaults["merge_fields"]

    # Another user's identity is a 404, like one that does not exist: admins included.
    mine = listed[1]["id"]
    for other in (bob, admin):
        answer = other.get(f"/identities/{mine}")
        assert (
            answer.status_code == 404 and answer.json()["detail"] == f"no identity with id {mine}"
        )
        assert other.post(f"/identities/{mine}/default").status_code == 404
    assert admin.get("/identities/987654").json()["detail"] == "no identity with id 987654"

    # "Mark Default": one default, moved in one step.
    marked = ann.post(f"/identities/{mine}/default")
    assert marked.status_code == 200 and marked.json()["is_default"]
    assert [i["is_default"] for i in ann.get("/identities").json()] == [True, False]
    assert ann.get("/compose/defaults").json()["identity"]["address"] == "support@example.org"

    # Leaving the team: the team inbox's identity is no longer usable (nor listed).
    gone = admin.delete(f"/teams/{team['id']}/members/{_user(app, 'ann@example.test').id}")
    assert gone.status_code in (200, 204)
    assert ann.get(f"/identities/{mine}").status_code == 404
    assert [i["account"] for i in ann.get("/identities").json()] == ["ann-mail"]


def test_one_default_per_user_is_the_databases_rule(app: FastAPI, store: Store) -> None:
    ann = user_client(app, "ann@example.test")
    _account(store, app, "a1", "ann@example.test")
    _account(store, app, "a2", "ann@example.test")
    ids = [i["id"] for i in ann.get("/identities").json()]
    with Session(store.engine) as s, pytest.raises(Exception, match=r"(?i)unique"), s.begin():
        s.execute(update(IdentityRow).where(IdentityRow.id.in_(ids)).values(is_default=True))


def test_aliases_and_the_accounts_own_address(app: FastAPI, store: Store) -> None:
    ann = user_client(app, "ann@example.test")
    bob = user_client(app, "bob@example.test")
    _account(store, app, "ann-mail", "ann@example.test")
    own = ann.get("/identities").json()[0]
    alias = ann.post(
        "/identities",
        json={
            "kind": "account",
            "account": "ann-mail",
            "address": "Sales@Example.org",
            "display_name": "Ann\r\nBcc: x@example.org",
            "signature": "Ann\nSales",
            "make_default": True,
        },
    )
    assert alias.status_code == 201, alias.text
    body = alias.json()
    assert (
        body["address"] == "Sales@example.org" and body["display_name"] == "Ann Bcc: x@example.org"
    )
    assert body["is_default"] and body["signature"] == "Ann\nSales"
    again = ann.post(
        "/identities",
        json={"kind": "account", "account": "ann-mail", "address": "sales@example.org"},
    )
    assert again.status_code == 409
    bad = ann.post(
        "/identities", json={"kind": "account", "account": "ann-mail", "address": "a@b@c.org"}
    )
    assert bad.status_code == 422 and "a@b@c.org" in bad.text
    # Bob cannot send through Ann's account: it is not one he may send from.
    assert (
        bob.post("/identities", json={"kind": "account", "account": "ann-mail"}).status_code == 404
    )
    # The account's own address stays; the alias goes, and the default moves back.
    refused = ann.delete(f"/identities/{own['id']}")
    assert refused.status_code == 400 and "remove the account" in refused.json()["detail"]
    assert ann.delete(f"/identities/{body['id']}").status_code == 204
    left = ann.get("/identities").json()
    assert [(i["id"], i["is_default"]) for i in left] == [(own["id"], True)]
    edited = ann.patch(
        f"/identities/{own['id']}", json={"signature": "-- Ann", "display_name": "Ann L"}
    )
    assert edited.json()["signature"] == "-- Ann" and edited.json()["display_name"] == "Ann L"
    server = ann.patch(f"/identities/{own['id']}", json={"smtp_host": "smtp.example.org"})
    assert server.status_code == 400 and "account" in server.json()["detail"]


def test_an_smtp_identity_that_fails_its_test_is_not_saved(app: FastAPI) -> None:
    ann = user_client(app, "ann@example.test")
    port = free_port()
    answer = ann.post(
        "/identities",
        json={
            "kind": "smtp",
            "address": "ann@example.org",
            "smtp_host": "127.0.0.1",
            "smtp_port": port,
            "smtp_security": "tls",
            "password": "pw-never-shown",
        },
    )
    assert answer.status_code == 422
    (error,) = answer.json()["detail"]
    assert error["type"] == "smtp_refused" and error["loc"] == ["body", "smtp_host"]
    assert f"Connection refused by 127.0.0.1:{port}" in error["msg"]
    assert "pw-never-shown" not in answer.text
    assert ann.get("/identities").json() == []
    plaintext = ann.post(
        "/identities",
        json={
            "kind": "smtp",
            "address": "a@example.org",
            "smtp_host": "h",
            "smtp_security": "plain",
            "password": "x",
        },
    )
    assert plaintext.status_code == 422


def test_a_new_server_without_a_password_drops_the_stored_one(store: Store, app: FastAPI) -> None:
    """The accounts' rule (issue 7), on the store: the secret was entered for one server."""
    user_client(app, "ann@example.test")
    ann = _user(app, "ann@example.test")
    identities = IdentityStore(store.engine, store.secrets)
    smtp = check_smtp_settings("smtp.example.org", None, "starttls", "ann")
    assert smtp.port == 587 and check_smtp_settings("h", None, "tls", "u").port == 465
    made = identities.create_smtp(
        ann, address="ann@example.org", display_name="Ann", smtp=smtp, secret="s1"
    )
    assert made.has_secret and made.is_default and identities.smtp_secret(ann, made.id) == "s1"
    renamed = identities.update(ann, made.id, IdentityChanges(display_name="A"), secret=None)
    assert renamed.has_secret  # not a connection setting
    same = identities.update(ann, made.id, IdentityChanges(smtp=smtp), secret=None)
    assert same.has_secret  # the same settings again change nothing
    for moved in (
        check_smtp_settings("smtp.other.org", 587, "starttls", "ann"),
        check_smtp_settings("smtp.other.org", 2525, "starttls", "ann"),
        check_smtp_settings("smtp.other.org", 2525, "tls", "ann"),
        check_smtp_settings("smtp.other.org", 2525, "tls", "ann2"),
    ):
        identities.update(ann, made.id, IdentityChanges(), secret="fresh")
        after = identities.update(ann, made.id, IdentityChanges(smtp=moved), secret=None)
        assert not after.has_secret and identities.smtp_secret(ann, made.id) is None
    kept = identities.update(
        ann,
        made.id,
        IdentityChanges(smtp=check_smtp_settings("h2", 465, "tls", "u")),
        secret=_SECRET,
    )
    assert kept.has_secret and identities.smtp_secret(ann, made.id) == _SECRET
    with Session(store.engine) as s:
        row = s.get(IdentityRow, made.id)
        # The secret has characters base64 never produces, so it cannot turn up by chance in
        # the ciphertext (a two-letter secret once did, one run in a few hundred).
        assert row is not None and _SECRET.encode() not in bytes(row.secret_encrypted or b"")
        assert _SECRET not in repr(row)


def test_the_api_drops_the_password_on_a_new_host(app: FastAPI, store: Store) -> None:
    ann_client = user_client(app, "ann@example.test")
    ann = _user(app, "ann@example.test")
    identities = IdentityStore(store.engine, store.secrets)
    made = identities.create_smtp(
        ann,
        address="ann@example.org",
        display_name="Ann",
        smtp=check_smtp_settings("smtp.example.org", None, "starttls", "ann"),
        secret="s1",
    )
    moved = ann_client.patch(f"/identities/{made.id}", json={"smtp_host": "smtp.other.org"})
    assert moved.status_code == 200, moved.text
    assert moved.json()["smtp"]["host"] == "smtp.other.org" and not moved.json()["has_password"]
    # A password is tested before it is stored: nothing listens there, so nothing changes.
    port = free_port()
    tested = ann_client.patch(
        f"/identities/{made.id}",
        json={"smtp_host": "127.0.0.1", "smtp_port": port, "password": "p"},
    )
    assert tested.status_code == 422 and "Connection refused" in tested.text
    assert ann_client.get(f"/identities/{made.id}").json()["smtp"]["host"] == "smtp.other.org"


def test_an_smtp_identity_against_postfix(
    app: FastAPI, postfix: PostfixServer, dovecot: DovecotServer
) -> None:
    """Tested on save against a real submission server (its self-signed certificate trusted
    for the test: the check is the real one)."""
    context = ssl.create_default_context(cadata=postfix.cert_pem)

    async def trusting(smtp: Any, password: str) -> SmtpReport:
        return await check_smtp(
            smtp.host, smtp.port, smtp.security, smtp.username, password, tls_context=context
        )

    app.state.composer = ComposeService(app.state.composer.store, app.state.settings, trusting)
    mailbox = dovecot.add_user()
    client = user_client(app, "ann@example.test")
    body = {
        "kind": "smtp",
        "address": mailbox.address,
        "display_name": "Ann",
        "smtp_host": postfix.host,
        "smtp_port": postfix.port,
        "smtp_security": "starttls",
        "smtp_username": mailbox.username,
    }
    wrong = client.post("/identities", json={**body, "password": "wrong"})
    assert wrong.status_code == 422 and wrong.json()["detail"][0]["type"] == "smtp_auth_failed"
    made = client.post("/identities", json={**body, "password": mailbox.password})
    assert made.status_code == 201, made.text
    assert made.json()["has_password"] and made.json()["is_default"]


def test_templates_personal_and_shared(app: FastAPI, admin: TestClient, store: Store) -> None:
    ann = user_client(app, "ann@example.test")
    bob = user_client(app, "bob@example.test")
    eve = user_client(app, "eve@example.test")
    team = admin.post("/teams", json={"name": "Sales"}).json()
    for email in ("ann@example.test", "bob@example.test"):
        admin.put(f"/teams/{team['id']}/members/{_user(app, email).id}")
    personal = ann.post("/templates", json={"name": "Mine", "subject": "s", "text": "t"}).json()
    shared = ann.post(
        "/templates",
        json={
            "name": "Follow-up",
            "subject": "Re: {{deal.name}}",
            "text": "Hi {{contact.first_name}},\n\n{{user.signature}}",
            "html": "<p>Hi {{contact.first_name}} of {{company.name}}</p>{{user.signature}}",
            "team_id": team["id"],
        },
    )
    assert shared.status_code == 201, shared.text
    shared_id = shared.json()["id"]
    assert shared.json()["fields"] == [
        "deal.name",
        "contact.first_name",
        "user.signature",
        "company.name",
    ]
    # Bob (same team) sees and uses the shared one, not the personal one, and may not edit.
    assert [t["name"] for t in bob.get("/templates").json()] == ["Follow-up"]
    assert bob.get(f"/templates/{shared_id}").json()["can_edit"] is False
    refused = bob.patch(f"/templates/{shared_id}", json={"name": "x"})
    assert refused.status_code == 403 and "owner" in refused.json()["detail"]
    assert bob.delete(f"/templates/{shared_id}").status_code == 403
    assert bob.get(f"/templates/{personal['id']}").status_code == 404
    # Eve (no team) sees neither; an admin sees both and may change them.
    assert eve.get("/templates").json() == []
    for tid in (shared_id, personal["id"]):
        answer = eve.get(f"/templates/{tid}")
        assert answer.status_code == 404 and answer.json()["detail"] == f"no template with id {tid}"
        assert eve.post(f"/templates/{tid}/render", json={}).status_code == 404
    assert {t["name"] for t in admin.get("/templates").json()} == {"Mine", "Follow-up"}
    assert admin.patch(f"/templates/{personal['id']}", json={"name": "Mine 2"}).json()["can_edit"]
    # Sharing only with a team one is in.
    other = admin.post("/teams", json={"name": "Other"}).json()
    outside = ann.post("/templates", json={"name": "x", "text": "t", "team_id": other["id"]})
    assert outside.status_code == 400 and "not a team you are in" in outside.text
    made_personal = ann.patch(f"/templates/{shared_id}", json={"team_id": 0}).json()
    assert made_personal["team_id"] is None
    assert bob.get(f"/templates/{shared_id}").status_code == 404
    assert ann.delete(f"/templates/{personal['id']}").status_code == 204
    assert ann.get(f"/templates/{personal['id']}").status_code == 404


UNKNOWN_FIELDS = [
    {"name": "t", "text": "{{contact.__class__}}"},
    {"name": "t", "text": "{{ config.secret_key }}"},
    {"name": "t", "subject": "{{ 7*7 }}", "text": "x"},
    {"name": "t", "html": "<p>{{contact.first_name | upper}}</p>"},
]


def test_a_template_with_an_unknown_field_is_refused(app: FastAPI) -> None:
    ann = user_client(app, "ann@example.test")
    for body in UNKNOWN_FIELDS:
        answer = ann.post("/templates", json=body)
        assert answer.status_code == 422, body
        (error,) = answer.json()["detail"]
        assert error["loc"][0] == "body" and "merge field" in error["msg"]
    assert ann.get("/templates").json() == []


def test_render_fills_fields_from_records_and_names_what_is_missing(
    app: FastAPI, admin: TestClient, store: Store
) -> None:
    ann = user_client(app, "ann@example.test")
    _account(store, app, "ann-mail", "ann@example.test")
    own = ann.get("/identities").json()[0]
    ann.patch(
        f"/identities/{own['id']}", json={"signature": "Ann\n<Acme Sales>", "display_name": "Ann"}
    )
    company = admin.post(
        "/companies", json={"name": "Smith & Co", "domains": ["smith.example"]}
    ).json()
    contact = admin.post(
        "/contacts",
        json={
            "name": "Jane Q Smith",
            "emails": ["jane@smith.example"],
            "company_id": company["id"],
        },
    ).json()
    deal = admin.post(
        "/deals", json={"name": "Q1 <renewal>", "contact_ids": [contact["id"]]}
    ).json()
    template = ann.post(
        "/templates",
        json={
            "name": "Follow-up",
            "subject": "{{deal.name}} for {{company.name}}",
            "text": (
                "Hi {{contact.first_name}} {{contact.last_name}} <{{contact.email}}>\n"
                "{{user.signature}}"
            ),
            "html": (
                "<p>Hi {{contact.first_name}} of {{company.name}}</p><p>{{deal.name}}</p>"
                "{{user.signature}}"
            ),
        },
    ).json()
    url = f"/templates/{template['id']}/render"
    rendered = ann.post(url, json={"deal_id": deal["id"]})
    assert rendered.status_code == 200, rendered.text
    out = rendered.json()
    assert out["subject"] == "Q1 <renewal> for Smith & Co"
    assert out["text"] == "Hi Jane Q Smith <jane@smith.example>\nAnn\n<Acme Sales>"
    assert out["html"] == (
        "<p>Hi Jane of Smith &amp; Co</p><p>Q1 &lt;renewal&gt;</p>Ann<br>\n&lt;Acme Sales&gt;"
    )
    # Nothing chosen: every field without a value is named, nothing is blanked.
    missing = ann.post(url, json={})
    assert missing.status_code == 422
    (error,) = missing.json()["detail"]
    assert error["type"] == "missing_merge_fields"
    for name in ("deal.name", "company.name", "contact.first_name", "contact.email"):
        assert "{{" + name + "}}" in error["msg"]
    assert "user.signature" not in error["msg"]  # the default identity has one
    ghost = ann.post(url, json={"contact_id": 987654})
    assert ghost.status_code == 422 and ghost.json()["detail"][0]["loc"] == ["body", "contact_id"]
    foreign = ann.post(url, json={"deal_id": deal["id"], "identity_id": 987654})
    assert foreign.status_code == 422 and foreign.json()["detail"][0]["loc"] == [
        "body",
        "identity_id",
    ]


def test_identity_for_refuses_anothers_identity(app: FastAPI, store: Store) -> None:
    """What the sender calls: an identity the user does not own is refused as not found."""
    user_client(app, "ann@example.test")
    user_client(app, "bob@example.test")
    _account(store, app, "ann-mail", "ann@example.test")
    service: ComposeService = app.state.composer
    ann, bob = _user(app, "ann@example.test"), _user(app, "bob@example.test")
    mine = service.identity_for(ann, None)
    assert mine.address == "ann-mail@example.org" and mine.account_name == "ann-mail"
    assert service.sender_of(mine).email == "ann-mail@example.org"
    assert service.own_addresses(ann) == ["ann-mail@example.org"]
    with pytest.raises(Exception, match="no identity with id"):
        service.identity_for(bob, mine.id)
    with pytest.raises(Exception, match="no identity to send from"):
        service.identity_for(bob, None)


MINE = {"identities", "templates"}


def _mine(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    table = obj if type_ == "table" else getattr(obj, "table", None)
    return getattr(table, "name", name) in MINE


def test_the_migration_makes_the_tables_the_models_describe(store: Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from correspond.store.tables import Base

    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "include_object": _mine})
        assert compare_metadata(ctx, Base.metadata) == []


def test_an_identitys_password_is_write_only(app: FastAPI, store: Store) -> None:
    ann_client = user_client(app, "ann@example.test")
    schema = ann_client.get("/openapi.json").json()["components"]["schemas"]
    assert "password" in schema["IdentityCreate"]["properties"]
    assert "password" in schema["IdentityUpdate"]["properties"]
    assert "password" not in schema["IdentityPublic"]["properties"]
    identities = IdentityStore(store.engine, store.secrets)
    made = identities.create_smtp(
        _user(app, "ann@example.test"),
        address="ann@example.org",
        display_name="Ann",
        smtp=check_smtp_settings("smtp.example.org", None, "tls", "ann"),
        secret="the-secret-itself",
    )
    for answer in (ann_client.get("/identities"), ann_client.get(f"/identities/{made.id}")):
        assert answer.status_code == 200 and "the-secret-itself" not in answer.text
    nul = ann_client.patch(f"/identities/{made.id}", json={"password": "a\x00b"})
    assert nul.status_code == 422 and "a\x00b" not in nul.text


def test_reply_and_forward_of_a_stored_message(
    store: Store, settings: Settings, dovecot: DovecotServer, imap_user: Any
) -> None:
    """The builders read the store's MessageView as it is; a forward carries the stored
    attachments' bytes (read from the blob store), a reply threads on the stored ids."""
    from correspond.mail.compose import (
        Address,
        build_message,
        forward_draft,
        message_bytes,
        reply_draft,
        safe_attachment_name,
    )
    from correspond.mail.parse import parse_message
    from correspond.mailbox import MailboxReader
    from correspond.testing.mirror import seed_mirror

    mirror = seed_mirror(store, settings, dovecot, imap_user)
    reader = MailboxReader(store, settings)
    page = reader.list_messages(mirror.account, limit=100)
    views = [reader.get_message(m.id) for m in page.items]
    report = next(v for v in views if v.message_id == mirror.html_mid)
    assert report.attachments
    me = Address.of(mirror.address, "Me")
    forward = forward_draft(report, from_=me, to=(Address.of("dan@example.org"),), text="FYI")
    built = build_message(
        forward, message_id_domain="example.test", now=report.date or NOW, resolve=reader.blobs.get
    )
    sent = parse_message(message_bytes(built))
    stored = {
        safe_attachment_name(a.filename): reader.attachment(report.id, a.id)[1]
        for a in report.attachments
    }
    assert {a.filename: a.content for a in sent.attachments} == stored
    assert sent.subject.startswith("Fwd: ") and sent.in_reply_to is None

    kickoff = next(v for v in views if v.message_id == mirror.kickoff_mid)
    reply = reply_draft(kickoff, from_=me, own_addresses=[mirror.address], reply_all=True)
    everyone = [a.email for a in (*reply.to, *reply.cc)]
    assert everyone and mirror.address.lower() not in [e.lower() for e in everyone]
    parsed = parse_message(
        message_bytes(build_message(reply, message_id_domain="example.test", now=NOW))
    )
    assert parsed.in_reply_to == mirror.kickoff_mid
    assert parsed.references[-1] == mirror.kickoff_mid
