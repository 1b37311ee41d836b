"""Queueing sends from the CRM (the API and CLI call this; ``sync.sender`` sends).

:class:`SendService` turns a user's request into a message and queues it (``store.sends``):

- **who it goes out as** (:class:`Sender`): an identity (``identity_id``; none given: the
  user's default, as ``GET /compose/defaults`` preselects it; a reply or forward: the identity
  of the account the original is in, else the default). Another user's identity is
  :class:`NotFound`, as one that does not exist (``ComposeService.identity_for``). An
  identity of kind ``account`` sends through its account (its SMTP settings, its Sent
  policy); one of kind ``smtp`` (outbound-only) through its own server, its message kept in
  a *home account* of the user (the original's for a reply, else ``account`` when given, else
  the account of the user's first account identity): the account whose thread shows it and
  whose session sends it. The older ``account`` field alone still sends as that account
  (its owner, an admin, or a member of its team inbox may);
- **the message** built by :func:`correspond.mail.outgoing.build_outgoing`, the one call
  site of the builder (``mail.compose.build_message`` with the stricter injection checks),
  from a :class:`~correspond.mail.compose.Draft`: replies and forwards by
  :func:`~correspond.mail.compose.reply_draft` / :func:`~correspond.mail.compose.forward_draft`
  (reply-all leaves out every address of the user's identities; ``Re:``/``Fwd:`` once; a
  forward carries the original's attachments), the identity's signature appended
  (:func:`~correspond.mail.compose.with_signature`), a template rendered first
  (``template_id`` with ``contact_id``/``deal_id``: a missing merge field is an error before
  anything is queued). The Message-ID is made first and passed in, and the built bytes are
  the row's blob: every retry sends those very bytes;
- its size (``send_max_bytes``), its row data parsed from those bytes by the sync's own code
  (the copy that comes back through Sent is the same message: same dedupe key), the envelope
  (``rules.send``) and when it goes (now plus the undo grace, or the scheduled time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.utils import getaddresses
from pathlib import Path
from typing import Any, Literal

from correspond.composer import ComposeService
from correspond.errors import ConfigError, NotFound
from correspond.imap.types import FetchResponse
from correspond.mail.compose import (
    Address,
    Draft,
    check_size,
    envelope_recipients,
    forward_draft,
    make_message_id,
    message_bytes,
    parse_recipient,
    reply_draft,
    with_signature,
)
from correspond.mail.dedupe import dedupe_key, header_dedupe_key
from correspond.mail.merge import fields_used
from correspond.mail.outgoing import OutgoingAttachment, build_outgoing, refuse_line_breaks
from correspond.rules import send as send_rules
from correspond.settings import Settings
from correspond.store.blobs import BlobStore
from correspond.store.compose import Identity
from correspond.store.message_data import MessageData
from correspond.store.records import Account
from correspond.store.repository import Store
from correspond.store.sends import Original, SendRecord, SendStore
from correspond.store.tables import utcnow
from correspond.store.teams import TeamStore
from correspond.store.users import User, UserStore
from correspond.store.visibility import Access
from correspond.sync.prepare import FolderRef, MessageBuilder, PrepareJob, prepare_messages

__all__ = ["Compose", "ReplyMode", "SendService", "Sender", "parse_recipients"]

ReplyMode = Literal["reply", "reply-all", "forward"]
Pair = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Compose:
    """What the user wrote: recipients as ``(name, address)``, bodies, attachments, and when
    (None: now plus the undo grace); a template to render with a contact and a deal."""

    to: tuple[Pair, ...] = ()
    cc: tuple[Pair, ...] = ()
    bcc: tuple[Pair, ...] = ()
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    attachments: tuple[OutgoingAttachment, ...] = ()
    attachment_ids: tuple[int, ...] = ()
    send_at: datetime | None = None
    template_id: int | None = None
    contact_id: int | None = None
    deal_id: int | None = None


@dataclass(frozen=True, slots=True)
class Sender:
    """Who a send goes out as: From, the identity (None: the account itself, on the older
    ``account`` path) and the account that keeps the CRM copy and sends it."""

    account: Account
    from_: Address
    identity: Identity | None

    @property
    def outbound_only(self) -> bool:
        return self.identity is not None and self.identity.kind == "smtp"

    @property
    def signature(self) -> str:
        return self.identity.signature if self.identity is not None else ""


def parse_recipients(values: Sequence[str]) -> tuple[Pair, ...]:
    """``"Ann <ann@x.test>"`` or ``"ann@x.test"`` strings as pairs: each one address
    (``compose.parse_recipient``), and a name with a line break refused, not repaired."""
    out: list[Pair] = []
    for value in values:
        found = parse_recipient(value)
        name = getaddresses([value])[0][0] if "<" in value else ""
        refuse_line_breaks(name, f"the name of {found.email}")
        out.append((found.name, found.email))
    return tuple(out)


def _split(
    attachments: Sequence[OutgoingAttachment],
) -> tuple[tuple[OutgoingAttachment, ...], tuple[OutgoingAttachment, ...]]:
    """Files, and inline images of the HTML (those with a ``content_id``: ``Draft.inline``)."""
    return (
        tuple(a for a in attachments if a.content_id is None),
        tuple(a for a in attachments if a.content_id is not None),
    )


def _addresses(pairs: Sequence[Pair], where: str) -> tuple[Address, ...]:
    return tuple(Address.of(email, name, field=where) for name, email in pairs)


@dataclass(frozen=True, slots=True)
class _Person:
    name: str | None
    email: str


@dataclass(frozen=True, slots=True)
class _Attached:
    filename: str | None
    content_type: str
    blob_key: str | None


@dataclass(frozen=True, slots=True)
class _OriginalView:
    """A stored message in the shape ``compose.reply_draft`` / ``forward_draft`` read."""

    message_id: str | None
    in_reply_to: str | None
    references: tuple[str, ...]
    subject: str
    from_: _Person | None
    reply_to: tuple[_Person, ...]
    to: tuple[_Person, ...]
    cc: tuple[_Person, ...]
    date: datetime | None
    text: str | None
    html: str | None
    attachments: tuple[_Attached, ...]

    @classmethod
    def of(cls, o: Original) -> _OriginalView:
        def people(pairs: Sequence[Pair]) -> tuple[_Person, ...]:
            return tuple(_Person(n or None, e) for n, e in pairs if e)

        return cls(
            message_id=o.message_id_header,
            in_reply_to=o.in_reply_to,
            references=o.references,
            subject=o.subject,
            from_=_Person(o.from_name, o.from_email) if o.from_email else None,
            reply_to=people(o.reply_to),
            to=people(o.to),
            cc=people(o.cc),
            date=o.date,
            text=o.text,
            html=o.html,
            attachments=tuple(_Attached(a[1], a[2], a[3]) for a in o.attachments),
        )


class SendService:
    """Queues sends (see the module docstring). Thread-safe; blocking (call from a thread)."""

    def __init__(self, store: Store, settings: Settings, blobs: BlobStore | None = None) -> None:
        self.store = store
        self.settings = settings
        self.blobs = blobs or BlobStore.from_settings(settings)
        self.sends = SendStore(store.engine)
        self.users = UserStore(store.engine)
        self.composer = ComposeService(store, settings)

    # -- who may send, and as whom -------------------------------------------------------------

    def check_may_send(self, user: User, account: Account) -> None:
        """Sending as an account is its owner's (or an admin's), or a member's of the team
        whose inbox it is; seeing a teammate's shared mail does not let one send as them.
        NotFound when the account is not visible at all."""
        access: Access = self.users.access_to_account(user, account.name)
        if access.manage:
            return
        if account.team_id is not None and access.full and self._member(user, account.team_id):
            return
        raise PermissionError(f"you may not send from the account {account.name!r}")

    def _from_name(self, user: User | None, account: Account) -> str:
        """The display name on From: the sender's, else the account owner's."""
        if user is None and account.owner_id is not None:
            user = self.users.get_user_by_id(account.owner_id)
        return (user.display_name or "") if user is not None else ""

    def _member(self, user: User, team_id: int) -> bool:
        return TeamStore(self.store.engine).is_member(team_id, user.id)

    def _account_identity(
        self, user: User, account: Account, addressed: Sequence[str] = ()
    ) -> Identity | None:
        """The user's identity of ``account`` that a message was ``addressed`` to (an
        alias), else the one of the account's own address (None: they have none)."""
        mine = [i for i in self.composer.identities.list(user) if i.account_id == account.id]
        for wanted in (*(a.lower() for a in addressed), account.email.lower()):
            for identity in mine:
                if identity.address.lower() == wanted:
                    return identity
        return None

    def sender(
        self,
        user: User | None,
        *,
        identity_id: int | None = None,
        account_name: str | None = None,
        original_account: Account | None = None,
        addressed: Sequence[str] = (),
    ) -> Sender:
        """Who a send goes out as (see the module docstring); ``addressed``: the addresses
        the original was sent to (a reply goes as the alias it was written to)."""
        if user is None:
            if account_name is None:
                raise ConfigError("name the account to send from")
            account = self.store.get_account(account_name)
            return Sender(account, Address.of(account.email, self._from_name(None, account)), None)
        identity: Identity | None = None
        if identity_id is not None:
            identity = self.composer.identity_for(user, identity_id)
        elif account_name is not None:
            account = self.store.get_account(account_name)
            self.check_may_send(user, account)
            found = self._account_identity(user, account)
            if found is None:  # an admin sending from an account that is not theirs
                from_ = Address.of(account.email, self._from_name(user, account), field="from")
                return Sender(account, from_, None)
            return Sender(account, self.composer.sender_of(found), found)
        elif original_account is not None:
            identity = self._account_identity(user, original_account, addressed)
            if identity is None:
                identity = self.composer.identity_for(user, None)
        else:
            identity = self.composer.identity_for(user, None)
        return Sender(
            self._home(user, identity, account_name, original_account),
            self.composer.sender_of(identity),
            identity,
        )

    def _home(
        self,
        user: User,
        identity: Identity,
        account_name: str | None,
        original_account: Account | None,
    ) -> Account:
        """The account that keeps the CRM copy of a send and whose session sends it."""
        if identity.kind == "account" and identity.account_id is not None:
            return self.store.get_account_by_id(identity.account_id)
        candidates: list[Account] = []
        if account_name is not None:
            candidates.append(self.store.get_account(account_name))
        elif original_account is not None:
            candidates.append(original_account)
        for other in self.composer.identities.list(user):
            if other.kind == "account" and other.account_id is not None:
                candidates.append(self.store.get_account_by_id(other.account_id))
        for account in candidates:
            try:
                self.check_may_send(user, account)
            except (PermissionError, NotFound):
                if account_name is not None:
                    raise
                continue
            return account
        raise ConfigError(
            "an outbound-only identity keeps what it sends in one of your synced accounts, "
            "and you have none: add an account first"
        )

    # -- new messages, replies, forwards ---------------------------------------------------------

    def send_new(
        self,
        user: User | None,
        account_name: str | None,
        compose: Compose,
        *,
        identity_id: int | None = None,
        draft_id: int | None = None,
    ) -> SendRecord:
        """Queue a new message as ``identity_id`` (None: the user's default) or, on the older
        path, as ``account_name``. ``user`` None: the operator on the command line (an
        account: the message goes out under its owner's name). ``draft_id``: the user's draft
        this sends, marked sent in the transaction that queues it (``_queue``)."""
        sender = self.sender(user, identity_id=identity_id, account_name=account_name)
        subject, text, html = compose.subject, compose.text, compose.html
        to = compose.to
        signed = True
        if compose.template_id is not None:
            if user is None:
                raise ConfigError("a template is a user's: send as one of their identities")
            subject, text, html, signed = self._render(user, sender, compose)
            if not (to or compose.cc or compose.bcc):
                to = self._contact_recipient(compose)
        files, inline = _split(
            compose.attachments + self._stored_attachments(user, compose.attachment_ids)
        )
        draft = Draft(
            from_=sender.from_,
            to=_addresses(to, "to"),
            cc=_addresses(compose.cc, "cc"),
            bcc=_addresses(compose.bcc, "bcc"),
            subject=subject or "",
            text=text,
            html=html,
            attachments=files,
            inline=inline,
        )
        if signed:
            draft = with_signature(draft, sender.signature)
        return self._queue(user, sender, draft, compose.send_at, draft_id)

    def _contact_recipient(self, compose: Compose) -> tuple[Pair, ...]:
        """The default recipient of a templated send: the contact (else the deal's first
        contact, as the template's fields take it) at their first address."""
        contact_id = compose.contact_id
        if contact_id is None and compose.deal_id is not None:
            contact_ids = self.composer.crm.get_deal(compose.deal_id).contact_ids
            contact_id = contact_ids[0] if contact_ids else None
        if contact_id is None:
            return ()
        contact = self.composer.crm.get_contact(contact_id)
        return ((contact.name, contact.emails[0]),) if contact.emails else ()

    def _render(
        self, user: User, sender: Sender, compose: Compose
    ) -> tuple[str | None, str | None, str | None, bool]:
        """The template's subject and bodies for the chosen records (what the user typed
        wins); whether the signature is still to be appended (not when the template places
        it with ``{{user.signature}}``). ``MissingMergeFields`` before anything is queued."""
        assert compose.template_id is not None
        template = self.composer.templates.get(user, compose.template_id)
        rendered = self.composer.render(
            user,
            compose.template_id,
            contact_id=compose.contact_id,
            deal_id=compose.deal_id,
            identity_id=sender.identity.id if sender.identity is not None else None,
            user_name=user.display_name or "",
            user_email=user.email,
        )
        placed = any(
            "user.signature" in fields_used(part)
            for part in (template.subject, template.text, template.html)
            if part
        )
        return (
            compose.subject or rendered.subject,
            compose.text if compose.text is not None else rendered.text,
            compose.html if compose.html is not None else rendered.html,
            not placed,
        )

    def respond(
        self,
        user: User,
        message_id: int,
        mode: ReplyMode,
        compose: Compose,
        *,
        identity_id: int | None = None,
        draft_id: int | None = None,
    ) -> SendRecord:
        """Reply, reply-all or forward ``message_id``, as ``identity_id`` (None: the identity
        of the original's account it was addressed to, else the user's default); a template
        (``template_id``) gives the bodies as for :meth:`send_new`, above the quoted original
        (the subject stays ``Re:``/``Fwd:`` the original's unless one is typed).
        ``draft_id``: as for :meth:`send_new`."""
        original = self.sends.original(message_id)
        original_account = self.store.get_account_by_id(original.account_id)
        addressed = [a for _, a in (*original.to, *original.cc)]
        sender = self.sender(
            user, identity_id=identity_id, original_account=original_account, addressed=addressed
        )
        view = _OriginalView.of(original)
        subject, text, html, signed = compose.subject, compose.text, compose.html, True
        if compose.template_id is not None:
            # MissingMergeFields here, before anything is queued. The subject stays the
            # original's with Re:/Fwd: (the thread's) unless the user typed one.
            _subject, text, html, signed = self._render(user, sender, compose)
        # The signature goes under what the user wrote, above the quoted original.
        mine = Draft(from_=sender.from_, text=text, html=html)
        if signed:
            mine = with_signature(mine, sender.signature)
        attachments, inline = _split(
            compose.attachments + self._stored_attachments(user, compose.attachment_ids)
        )
        if mode == "forward":
            to = compose.to
            if compose.template_id is not None and not (to or compose.cc or compose.bcc):
                to = self._contact_recipient(compose)  # as a new templated message
            draft = forward_draft(
                view,
                from_=sender.from_,
                to=_addresses(to, "to"),
                cc=_addresses(compose.cc, "cc"),
                bcc=_addresses(compose.bcc, "bcc"),
                text=mine.text,
                html=mine.html,
            )
            draft = replace(draft, attachments=draft.attachments + attachments, inline=inline)
        else:
            own = {a.lower() for a in self.composer.own_addresses(user)}
            if sender.identity is None:
                own.add(original_account.email.lower())
            draft = reply_draft(
                view,
                from_=sender.from_,
                own_addresses=own,
                reply_all=mode == "reply-all",
                text=mine.text,
                html=mine.html,
            )
            draft = replace(
                draft,
                to=_addresses(compose.to, "to") if compose.to else draft.to,
                cc=_addresses(compose.cc, "cc") if compose.cc else draft.cc,
                bcc=_addresses(compose.bcc, "bcc"),
                attachments=attachments,
                inline=inline,
            )
        if subject:
            draft = replace(draft, subject=subject)
        return self._queue(user, sender, draft, compose.send_at, draft_id)

    def response_draft(self, user: User, message_id: int, mode: ReplyMode) -> tuple[Draft, Sender]:
        """What :meth:`respond` would send with nothing typed (the web composer's prefill):
        recipients, ``Re:``/``Fwd:`` subject and the quoted original or forwarded block (which
        :meth:`respond` adds again below what is typed), and who it would go out as."""
        original = self.sends.original(message_id)
        original_account = self.store.get_account_by_id(original.account_id)
        addressed = [a for _, a in (*original.to, *original.cc)]
        sender = self.sender(user, original_account=original_account, addressed=addressed)
        view = _OriginalView.of(original)
        if mode == "forward":
            return forward_draft(view, from_=sender.from_), sender
        own = {a.lower() for a in self.composer.own_addresses(user)}
        if sender.identity is None:
            own.add(original_account.email.lower())
        draft = reply_draft(
            view, from_=sender.from_, own_addresses=own, reply_all=mode == "reply-all"
        )
        return draft, sender

    def cancel(self, outbox_id: int) -> SendRecord:
        return self.sends.cancel(outbox_id)

    # -- attachments -----------------------------------------------------------------------------

    def _stored_attachments(
        self, user: User | None, ids: Sequence[int]
    ) -> tuple[OutgoingAttachment, ...]:
        """Attachments named by id: each of a message the user sees in full (the operator on
        the command line: any)."""
        out = []
        for attachment_id in ids:
            found = self.sends.attachment(attachment_id)
            if found is None:
                raise NotFound(f"no attachment with id {attachment_id}")
            message_id, filename, content_type, blob_key = found
            if user is not None and not self.users.access_to_message(user, message_id).full:
                raise NotFound(f"no attachment with id {attachment_id}")
            out.append(self._attachment(attachment_id, filename, content_type, blob_key))
        return tuple(out)

    def load_attachments(
        self, user: User | None, refs: Sequence[tuple[int, str | None]]
    ) -> tuple[OutgoingAttachment, ...]:
        """Stored attachments by ``(id, content id or None)``, checked as
        :meth:`_stored_attachments`; one with a content id goes as an inline image of the
        HTML (``cid:``). For the caller to put in :attr:`Compose.attachments`."""
        loaded = self._stored_attachments(user, [attachment_id for attachment_id, _ in refs])
        return tuple(
            replace(att, content_id=cid) if cid else att
            for att, (_, cid) in zip(loaded, refs, strict=True)
        )

    def _attachment(
        self, attachment_id: int, filename: str | None, content_type: str, blob_key: str | None
    ) -> OutgoingAttachment:
        if blob_key is None:
            raise ConfigError(
                f"attachment {attachment_id} was not downloaded (over the size limit): it "
                "cannot be sent on"
            )
        return OutgoingAttachment(
            filename=filename or "attachment", content_type=content_type, blob_key=blob_key
        )

    # -- queueing --------------------------------------------------------------------------------

    def _queue(
        self,
        user: User | None,
        sender: Sender,
        draft: Draft,
        send_at: datetime | None,
        draft_id: int | None = None,
    ) -> SendRecord:
        now = utcnow()
        account = sender.account
        domain = sender.from_.email.rpartition("@")[2] or "localhost"
        # Made first and passed in: the row's Message-ID is the one in the bytes it sends.
        message_id = make_message_id(domain)
        message = build_outgoing(
            draft,
            message_id_domain=domain,
            now=now,
            message_id=message_id,
            resolve=self.blobs.get,
        )
        raw = message_bytes(message)
        check_size(len(raw), self.settings.send_max_bytes)
        data = self._row_data(account, raw, sender.from_.email)
        mid = data.message_id
        if not mid:
            raise ConfigError("the built message has no Message-ID")  # pragma: no cover
        payload: dict[str, Any]
        if sender.outbound_only:
            assert sender.identity is not None
            # No mailbox of the identity's to file in or look in: no Sent copy, no receipt
            # (sync.sender says what exactly-once means for it).
            payload = {
                "transport": "identity",
                "identity_id": sender.identity.id,
                "envelope_from": sender.from_.email,
                "recipients": list(envelope_recipients(draft)),
                "receipt": False,
            }
        else:
            policy = send_rules.sent_copy_policy(account.preset, self.sends.sent_copy(account.id))
            receipt = policy != "server"
            payload = {
                "envelope_from": sender.from_.email,
                "recipients": send_rules.envelope_recipients(
                    envelope_recipients(draft), (), (), own=account.email, receipt=receipt
                ),
                "receipt": receipt,
            }
            if sender.identity is not None:
                payload["identity_id"] = sender.identity.id
        payload.update(message_id_header=mid, blob_key=data.raw_blob_key, size=len(raw))
        if send_at is None:
            send_at = now + timedelta(seconds=self.settings.send_undo_seconds)
        elif send_at.tzinfo is None:
            send_at = send_at.replace(tzinfo=UTC)
        return self.sends.queue(
            account_id=account.id,
            user_id=user.id if user is not None else None,
            data=data,
            payload=payload,
            send_at=max(send_at, now),
            draft=None if draft_id is None or user is None else (user.id, draft_id),
        )

    def _row_data(self, account: Account, raw: bytes, sender: str) -> MessageData:
        """The row the sync would store for this message's Sent copy: parsed and its blobs
        written by the sync's own code (``sync.prepare``)."""
        key = header_dedupe_key(raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n") or ""
        job = PrepareJob(
            blob_root=str(Path(self.blobs.root)),
            folder=FolderRef(
                id=0,
                account_id=account.id,
                name_raw=b"",
                role="sent",
                account_addresses=frozenset({account.email.lower(), sender.lower()}),
            ),
            builder=MessageBuilder(),
            dedupe=lambda parsed, gm: dedupe_key(parsed, gm_msgid=gm),
            uids=[0],
            raws=[raw],
            keys=[key or "h:"],
            metas=[FetchResponse(seq=0, uid=0, size=len(raw))],
        )
        ((_uid, data),) = prepare_messages(job, self.blobs).data
        return replace(data, internaldate=None)
