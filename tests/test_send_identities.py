"""One sending path (SQLite and PostgreSQL): identities, templates, reply-all and forward through
``mail.compose``, sent through the private Postfix and checked in the recipients' mailboxes on
the private Dovecot.

- from the default identity and from a chosen one (an alias of the account), each with its
  signature; another user's identity is refused as one that does not exist;
- from an outbound-only SMTP identity (a second Postfix login): sent once, no Sent copy and no
  receipt (there is no mailbox of its own), the CRM copy in the home account;
- with a template filled from a contact and a deal, and refused naming a missing field before
  anything is queued;
- reply-all leaves out every address of the user; a forward carries the original's
  attachments; ``Re:`` / ``Fwd:`` are not stacked.
"""

from __future__ import annotations

import email
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from correspond.composer import ComposeService
from correspond.errors import NotFound
from correspond.mail.merge import MissingMergeFields
from correspond.mail.outgoing import uploaded
from correspond.outgoing import Compose, SendService
from correspond.store.compose import (
    Identity,
    IdentityChanges,
    TemplateFields,
    check_smtp_settings,
)
from correspond.store.crm import CrmStore
from correspond.store.message_tables import MessageRow
from correspond.store.outbox_tables import OutboxRow
from correspond.store.sends import SendRecord, SendStore
from correspond.store.users import User
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.postfix import PostfixServer
from mirror_helpers import Env
from mirror_helpers import pg_engine as pg_engine  # a fixture, used through make_env
from test_send import env as env  # the account on the private Dovecot, sending via Postfix
from test_send import mailbox, mid_of, owner, service, settle, with_id

pytestmark = pytest.mark.dovecot

NOW_ISO = "2000-01-01T00:00:00"


def received(server: DovecotServer, who: ImapUser, record: SendRecord) -> EmailMessage:
    """The one copy of ``record``'s message in ``who``'s INBOX, parsed."""
    copies = with_id(mailbox(server, who, "INBOX"), mid_of(record))
    assert len(copies) == 1, f"{who.address}: {len(copies)} copies"
    parsed = email.message_from_bytes(copies[0][0], policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def text_of(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def smtp_identity(
    env: Env, user: User, postfix: PostfixServer, login: ImapUser, *, signature: str = ""
) -> Identity:
    """An outbound-only identity submitting through the private Postfix as ``login``."""
    return ComposeService(env.store, env.settings).identities.create_smtp(
        user,
        address=login.address,
        display_name="Outbound Desk",
        smtp=check_smtp_settings(postfix.host, postfix.port, "starttls", login.username),
        secret=login.password,
        signature=signature,
    )


def trust_test_certificate(
    monkeypatch: pytest.MonkeyPatch, postfix: PostfixServer, tmp_path: Path
) -> None:
    """An identity's server is checked against the system's trust store: the test's one
    self-signed certificate is that store here (OpenSSL's ``SSL_CERT_FILE``)."""
    bundle = tmp_path / "trust.pem"
    bundle.write_text(postfix.cert_pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))


async def test_default_and_chosen_identity_each_with_its_signature(
    env: Env, dovecot: DovecotServer, postfix: PostfixServer
) -> None:
    contact, alias_box, stranger = dovecot.add_user(), dovecot.add_user(), dovecot.add_user()
    await env.sync()
    user = owner(env)
    composer = ComposeService(env.store, env.settings)
    default = composer.identity_for(user, None)
    assert default.kind == "account" and default.account_id == env.account.id
    composer.identities.update(
        user,
        default.id,
        _changes(display_name="Ann Owner", signature="Ann\nAcme Ltd"),
        secret=None,
    )
    alias = composer.identities.create_for_account(
        user,
        account_name=env.account.name,
        address=alias_box.address,
        display_name="Sales Desk",
        signature="The sales desk",
    )
    sends = service(env)
    first = sends.send_new(
        user, None, Compose(to=(("Cy", contact.address),), subject="From me", text="Hello")
    )
    second = sends.send_new(
        user,
        None,
        Compose(to=(("Cy", contact.address),), subject="From the desk", text="Hi"),
        identity_id=alias.id,
    )
    # Another user's identity: not found, as one that does not exist; nothing queued.
    other = owner_of_another(env, "other")
    with pytest.raises(NotFound, match=f"no identity with id {alias.id}"):
        sends.send_new(other, None, Compose(to=(("", contact.address),)), identity_id=alias.id)
    with pytest.raises(NotFound, match="no identity with id 987654"):
        sends.send_new(user, None, Compose(to=(("", stranger.address),)), identity_id=987654)
    for record in (first, second):
        assert (await settle(env, record)).status == "sent"
    postfix.wait_queue_empty()
    mine, desk = received(dovecot, contact, first), received(dovecot, contact, second)
    assert mine["From"].addresses[0].addr_spec == env.user.address
    assert mine["From"].addresses[0].display_name == "Ann Owner"
    assert text_of(mine).replace("\r\n", "\n").endswith("Hello\n\n-- \nAnn\nAcme Ltd\n")
    assert desk["From"].addresses[0].addr_spec == alias_box.address
    assert "-- \nThe sales desk" in text_of(desk).replace("\r\n", "\n")
    # Both filed once in the account's Sent (the alias sends through the account).
    for record in (first, second):
        assert len(with_id(mailbox(dovecot, env.user, "Sent"), mid_of(record))) == 1
    assert mailbox(dovecot, stranger, "INBOX") == []


def _changes(**values: str) -> IdentityChanges:
    return IdentityChanges(**values)  # type: ignore[arg-type]


def owner_of_another(env: Env, name: str) -> User:
    from correspond.auth import AuthService
    from correspond.settings import Settings

    auth = AuthService(
        env.store, Settings(password_hash_time_cost=1, password_hash_memory_kib=1024)
    )
    user, _ = auth.create_user(f"{name}-{env.account.id}@crm.test", None)
    return user


async def test_an_outbound_only_identity_sends_once_with_no_mailbox_copy(
    env: Env,
    dovecot: DovecotServer,
    postfix: PostfixServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    contact, login = dovecot.add_user(), dovecot.add_user()
    await env.sync()
    user = owner(env)
    trust_test_certificate(monkeypatch, postfix, tmp_path)
    identity = smtp_identity(env, user, postfix, login, signature="Sent from the desk")
    record = service(env).send_new(
        user,
        None,
        Compose(to=(("Cy", contact.address),), subject="Outbound only", text="Hello"),
        identity_id=identity.id,
    )
    # The CRM copy lives in the user's account (its thread, its session sends it).
    assert record.account_id == env.account.id
    assert record.outbox.payload["transport"] == "identity"
    assert env.user.address not in record.outbox.payload["recipients"]  # no receipt
    done = await settle(env, record)
    assert done.status == "sent" and done.stage == "sent", done
    assert str(done.outbox.payload["smtp_reply"]).startswith("250")
    postfix.wait_queue_empty()
    got = received(dovecot, contact, record)
    assert got["From"].addresses[0].addr_spec == login.address
    assert "Sent from the desk" in text_of(got)
    # Nothing in the account's mailbox: no Sent copy, no receipt; nor in the login's own.
    for who, folder in ((env.user, "Sent"), (env.user, "INBOX"), (login, "INBOX")):
        assert with_id(mailbox(dovecot, who, folder), mid_of(record)) == []
    # A wrong password: the server's words on the message, not sent.
    box = ComposeService(env.store, env.settings).identities
    box.update(user, identity.id, _changes(), secret="wrong")
    refused = service(env).send_new(
        user, None, Compose(to=(("", contact.address),), text="x"), identity_id=identity.id
    )
    failed = await settle(env, refused)
    assert failed.status == "failed" and "535" in (failed.error or ""), failed


async def test_a_template_fills_subject_and_bodies_or_names_the_missing_field(
    env: Env, dovecot: DovecotServer, postfix: PostfixServer
) -> None:
    contact = dovecot.add_user()
    await env.sync()
    user = owner(env)
    composer = ComposeService(env.store, env.settings)
    composer.identities.update(
        user, composer.identity_for(user, None).id, _changes(signature="Ann of Acme"), secret=None
    )
    crm = CrmStore(env.store.engine)
    person = crm.create_contact(name="Cy Contact", emails=[contact.address])
    deal = crm.create_deal(name="Renewal 2027", contact_ids=[person.id])
    template = composer.templates.create(
        user,
        TemplateFields(
            name="Follow-up",
            subject="About {{deal.name}}",
            text="Dear {{contact.first_name}},\n\nShall we talk?\n\n{{user.signature}}",
        ),
    )
    sends = service(env)

    def queued() -> int:
        with Session(env.store.engine) as s:
            mine = select(func.count()).where(OutboxRow.account_id == env.account.id)
            return int(s.scalar(mine) or 0)

    before = queued()
    with pytest.raises(MissingMergeFields) as missing:
        sends.send_new(user, None, Compose(template_id=template.id, contact_id=person.id))
    assert missing.value.fields == ["deal.name"] and "{{deal.name}}" in str(missing.value)
    assert queued() == before  # nothing queued
    record = sends.send_new(
        user, None, Compose(template_id=template.id, contact_id=person.id, deal_id=deal.id)
    )
    assert (await settle(env, record)).status == "sent"
    postfix.wait_queue_empty()
    got = received(dovecot, contact, record)  # the contact is the default recipient
    assert got["Subject"] == "About Renewal 2027"
    body = text_of(got).replace("\r\n", "\n")
    assert body.startswith("Dear Cy,\n\nShall we talk?\n\nAnn of Acme")
    assert body.count("Ann of Acme") == 1  # placed by the template: not appended again


async def test_reply_all_leaves_out_every_own_address_and_forward_carries_attachments(
    env: Env, dovecot: DovecotServer, postfix: PostfixServer
) -> None:
    sender, colleague, copied, alias_box, partner = (dovecot.add_user() for _ in range(5))
    user = owner(env)
    composer = ComposeService(env.store, env.settings)
    composer.identities.create_for_account(
        user, account_name=env.account.name, address=alias_box.address, display_name="Desk"
    )
    original = EmailMessage(policy=policy.SMTP)
    original["From"] = f"Sam <{sender.address}>"
    original["To"] = f"{env.user.address}, {colleague.address}"
    original["Cc"] = f"{copied.address}, Desk <{alias_box.address}>"
    original["Subject"] = "Re: Contract"
    original["Message-ID"] = f"<contract-{sender.username}@example.test>"
    original.set_content("Please see the contract.")
    original.add_attachment(b"%PDF-1.4 contract", maintype="application", subtype="pdf",
                            filename="contract.pdf")  # fmt: skip
    dovecot.deliver(env.user, original.as_bytes(), sender=sender.address)
    to_alias = (
        f"From: <{sender.address}>\r\nTo: Desk <{alias_box.address}>\r\nSubject: For the desk\r\n"
        f"Message-ID: <desk-{sender.username}@example.test>\r\n\r\nHello desk\r\n"
    ).encode()
    dovecot.deliver(env.user, to_alias, sender=sender.address)
    await env.sync()
    with Session(env.store.engine) as s:
        stored = s.scalars(select(MessageRow).where(MessageRow.subject == "Re: Contract")).one()
        desk = s.scalars(select(MessageRow).where(MessageRow.subject == "For the desk")).one()
    sends = service(env)
    reply = sends.respond(user, stored.id, "reply-all", Compose(text="Agreed."))
    # A reply goes as the identity (alias) the original was written to.
    desk_reply = sends.respond(user, desk.id, "reply", Compose(text="On it."))
    forward = sends.respond(
        user, stored.id, "forward", Compose(to=(("", partner.address),), text="FYI")
    )
    for record in (reply, forward, desk_reply):
        assert (await settle(env, record)).status == "sent"
    postfix.wait_queue_empty()
    from_desk = received(dovecot, sender, desk_reply)
    assert from_desk["From"].addresses[0].addr_spec == alias_box.address
    answered = received(dovecot, sender, reply)
    assert answered["From"].addresses[0].addr_spec == env.user.address
    assert answered["Subject"] == "Re: Contract"  # not "Re: Re: Contract"
    assert answered["In-Reply-To"] == f"<contract-{sender.username}@example.test>"
    assert [a.addr_spec for a in answered["To"].addresses] == [sender.address, colleague.address]
    assert [a.addr_spec for a in answered["Cc"].addresses] == [copied.address]
    for who in (colleague, copied):
        received(dovecot, who, reply)
    # None of the user's addresses got it (the account's only its own Sent copy).
    assert with_id(mailbox(dovecot, alias_box, "INBOX"), mid_of(reply)) == []
    assert with_id(mailbox(dovecot, env.user, "INBOX"), mid_of(reply)) == []
    assert reply.thread_id == stored.thread_id
    sent_on = received(dovecot, partner, forward)
    assert sent_on["Subject"] == "Fwd: Re: Contract"
    assert "In-Reply-To" not in sent_on
    (attachment,) = list(sent_on.iter_attachments())
    assert attachment.get_filename() == "contract.pdf"
    assert attachment.get_content() == b"%PDF-1.4 contract"
    assert "Please see the contract." in text_of(sent_on)


async def test_correspond_send_with_a_template_as_an_identity(
    env: Env, dovecot: DovecotServer, postfix: PostfixServer
) -> None:
    from correspond.settings import Settings
    from helpers import StoreCli
    from test_sync_dovecot import KEY

    contact = dovecot.add_user()
    await env.sync()
    user = owner(env)
    composer = ComposeService(env.store, env.settings)
    identity = composer.identity_for(user, None)
    person = CrmStore(env.store.engine).create_contact(name="Di Jones", emails=[contact.address])
    template = composer.templates.create(
        user,
        TemplateFields(name="T", subject="For {{contact.first_name}}", text="{{deal.name}}"),
    )
    cli = StoreCli(
        Settings(data_dir=env.settings.data_dir, secret_key=KEY.decode()),
        env.store.engine.url.render_as_string(hide_password=False),
    )
    args = ["send", "--template", str(template.id), "--contact", str(person.id)]
    missing = cli(*args, "--identity", str(identity.id))
    assert missing.exit_code == 2 and "{{deal.name}}" in missing.output, missing.output
    assert cli(*args).exit_code == 2  # a template needs an identity (its owner sends)
    deal = CrmStore(env.store.engine).create_deal(name="Big Deal", contact_ids=[person.id])
    shown = cli.json(*args, "--deal", str(deal.id), "--identity", str(identity.id), "--at", NOW_ISO)
    record = SendStore(env.store.engine).get(shown["outbox_id"])
    assert (await settle(env, record)).status == "sent"
    postfix.wait_queue_empty()
    got = received(dovecot, contact, record)
    assert got["Subject"] == "For Di" and text_of(got).startswith("Big Deal")


async def test_a_message_over_the_limit_is_refused_before_it_is_queued(env: Env) -> None:
    from correspond.mail.compose import MessageTooLarge

    user = owner(env)
    small = SendService(env.store, env.settings.clone(send_max_bytes=4000), env.blobs)
    with pytest.raises(MessageTooLarge, match="once encoded") as refused:
        small.send_new(
            user,
            None,
            Compose(
                to=(("", "cy@example.test"),),
                attachments=(uploaded("big.bin", "application/octet-stream", b"x" * 3500),),
            ),
        )
    assert refused.value.size > 3500 * 4 // 3 and refused.value.limit == 4000
    with Session(env.store.engine) as s:
        mine = select(func.count()).where(OutboxRow.account_id == env.account.id)
        assert s.scalar(mine) == 0  # the database is shared by the module's tests
