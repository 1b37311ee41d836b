"""Composing and queueing sends from the CRM (the API and CLI call this; ``sync.sender`` sends).

:class:`SendService` turns a user's request into a message and queues it (``store.sends``):
who may send from the account, the message built (:func:`correspond.mail.outgoing.
build_outgoing`: the one call site of the builder), its size, its blob (the Sent copy, with
Bcc), its row data parsed from those very bytes by the sync's own code (so the copy that comes
back through Sent is the same message: same dedupe key, same participants), the envelope
(``rules.send``) and when it goes (now plus the undo grace, or the scheduled time).
Replies, reply-all and forwards take the original's thread, In-Reply-To and References,
recipients and (forward) attachments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email import policy as email_policy
from email.utils import getaddresses
from pathlib import Path
from typing import Literal

from correspond.errors import ConfigError, NotFound
from correspond.imap.types import FetchResponse
from correspond.mail.dedupe import dedupe_key, header_dedupe_key
from correspond.mail.outgoing import (
    OutgoingAttachment,
    OutgoingDraft,
    build_outgoing,
    check_address,
    forward_subject,
    reply_subject,
)
from correspond.rules.send import envelope_recipients, sent_copy_policy
from correspond.settings import Settings
from correspond.store.blobs import BlobStore
from correspond.store.message_data import MessageData
from correspond.store.records import Account
from correspond.store.repository import Store
from correspond.store.sends import SendRecord, SendStore
from correspond.store.tables import utcnow
from correspond.store.teams import TeamStore
from correspond.store.users import User, UserStore
from correspond.store.visibility import Access
from correspond.sync.prepare import FolderRef, MessageBuilder, PrepareJob, prepare_messages

__all__ = ["Compose", "ReplyMode", "SendService"]

ReplyMode = Literal["reply", "reply-all", "forward"]
Pair = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Compose:
    """What the user wrote: recipients as ``(name, address)``, bodies, attachments, and when
    (None: now plus the undo grace)."""

    to: tuple[Pair, ...] = ()
    cc: tuple[Pair, ...] = ()
    bcc: tuple[Pair, ...] = ()
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    attachments: tuple[OutgoingAttachment, ...] = ()
    attachment_ids: tuple[int, ...] = ()
    send_at: datetime | None = None


def parse_recipients(values: Sequence[str]) -> tuple[Pair, ...]:
    """``"Ann <ann@x.test>"`` or ``"ann@x.test"`` strings as pairs (addresses checked)."""
    out: list[Pair] = []
    for value in values:
        found = getaddresses([value])
        if len(found) != 1 or not found[0][1]:
            raise ConfigError(f"not one e-mail address: {value!r}")
        name, address = found[0]
        out.append((name, check_address(address, "recipient")))
    return tuple(out)


class SendService:
    """Queues sends (see the module docstring). Thread-safe; blocking (call from a thread)."""

    def __init__(self, store: Store, settings: Settings, blobs: BlobStore | None = None) -> None:
        self.store = store
        self.settings = settings
        self.blobs = blobs or BlobStore.from_settings(settings)
        self.sends = SendStore(store.engine)
        self.users = UserStore(store.engine)

    # -- who may send ----------------------------------------------------------------------------

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

    # -- new messages, replies, forwards ---------------------------------------------------------

    def send_new(self, user: User | None, account_name: str, compose: Compose) -> SendRecord:
        """Queue a new message from ``account_name``. ``user`` None: the operator on the
        command line (every account; the message goes out under the owner's name)."""
        account = self.store.get_account(account_name)
        if user is not None:
            self.check_may_send(user, account)
        attachments = compose.attachments + self._stored_attachments(user, compose.attachment_ids)
        draft = OutgoingDraft(
            from_=(self._from_name(user, account), account.email),
            to=compose.to,
            cc=compose.cc,
            bcc=compose.bcc,
            subject=compose.subject or "",
            text=compose.text,
            html=compose.html,
            attachments=attachments,
        )
        return self._queue(user, account, draft, compose.send_at)

    def respond(self, user: User, message_id: int, mode: ReplyMode, compose: Compose) -> SendRecord:
        """Reply, reply-all or forward ``message_id`` from its own account."""
        original = self.sends.original(message_id)
        account = self.store.get_account_by_id(original.account_id)
        self.check_may_send(user, account)
        own = account.email.lower()
        to, cc = compose.to, compose.cc
        attachments = compose.attachments + self._stored_attachments(user, compose.attachment_ids)
        in_reply_to: str | None = None
        references: tuple[str, ...] = ()
        if mode == "forward":
            subject = compose.subject or forward_subject(original.subject)
            attachments = attachments + tuple(
                self._attachment(aid, name, ctype, key)
                for aid, name, ctype, key in original.attachments
            )
        else:
            subject = compose.subject or reply_subject(original.subject)
            if not to:
                if original.from_email and original.from_email.lower() == own:
                    to = original.to  # a reply to one's own message: to its recipients
                else:
                    to = original.reply_to or (
                        ((original.from_name or "", original.from_email),)
                        if original.from_email
                        else ()
                    )
            if mode == "reply-all" and not compose.cc:
                taken = {a.lower() for _, a in to} | {own}
                extra: list[Pair] = []
                for pair in (*original.to, *original.cc):
                    if pair[1] and pair[1].lower() not in taken:
                        taken.add(pair[1].lower())
                        extra.append(pair)
                cc = tuple(extra)
            mid = original.message_id_header
            in_reply_to = mid
            references = (*original.references, *((mid,) if mid else ()))
        draft = OutgoingDraft(
            from_=(self._from_name(user, account), account.email),
            to=to,
            cc=cc,
            bcc=compose.bcc,
            subject=subject,
            text=compose.text,
            html=compose.html,
            attachments=attachments,
            in_reply_to=in_reply_to,
            references=references[-20:],
        )
        return self._queue(user, account, draft, compose.send_at)

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
        return OutgoingAttachment(filename or "attachment", content_type, self.blobs.get(blob_key))

    # -- queueing --------------------------------------------------------------------------------

    def _queue(
        self, user: User | None, account: Account, draft: OutgoingDraft, send_at: datetime | None
    ) -> SendRecord:
        now = utcnow()
        domain = account.email.rpartition("@")[2] or "localhost"
        message = build_outgoing(draft, message_id_domain=domain, now=now)
        raw = message.as_bytes(policy=email_policy.SMTP)
        if len(raw) > self.settings.send_max_bytes:
            raise ConfigError(
                f"the message is {len(raw):,} bytes after encoding; the limit is "
                f"{self.settings.send_max_bytes:,} (send_max_bytes)"
            )
        policy = sent_copy_policy(account.preset, self.sends.sent_copy(account.id))
        own = account.email
        data = self._row_data(account, raw)
        mid = data.message_id
        if not mid:
            raise ConfigError("the built message has no Message-ID")  # pragma: no cover
        recipients = envelope_recipients(
            (a for _, a in draft.to),
            (a for _, a in draft.cc),
            (a for _, a in draft.bcc),
            own=own,
            receipt=policy != "server",
        )
        if send_at is None:
            send_at = now + timedelta(seconds=self.settings.send_undo_seconds)
        elif send_at.tzinfo is None:
            send_at = send_at.replace(tzinfo=UTC)
        payload = {
            "envelope_from": own,
            "recipients": recipients,
            "message_id_header": mid,
            "blob_key": data.raw_blob_key,
            "receipt": policy != "server",
            "size": len(raw),
        }
        return self.sends.queue(
            account_id=account.id,
            user_id=user.id if user is not None else None,
            data=data,
            payload=payload,
            send_at=max(send_at, now),
        )

    def _row_data(self, account: Account, raw: bytes) -> MessageData:
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
                account_addresses=frozenset({account.email.lower()}),
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
