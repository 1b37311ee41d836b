"""Sends: the CRM's outgoing message row and its outbox row, written in one transaction.

:meth:`SendStore.queue` stores the message the way the sync would store its copy from Sent
(same dedupe key from its Message-ID, same participants and Bcc, direction ``outbound``,
``\\Seen``), in the thread of the message it replies to (else a new one), with an outbox row of
kind ``send`` due at ``send_at`` (now plus the undo grace, or the scheduled time). The message
is in the CRM thread at once, and on every timeline as soon as the linker indexes it; when its
copy comes back through the sync (from Sent, or as the receipt in INBOX) the mirror finds the
same dedupe key and adds a location to this row: no duplicate.

The outbox row's ``payload`` carries the send: ``envelope_from``, ``recipients`` (To, Cc, Bcc
and, for a receipt, the account's own address: ``rules.send``), ``message_id_header``,
``blob_key`` (the message as built, with Bcc: the Sent copy), ``receipt``, ``identity_id``
(the identity it goes out as; with ``transport: identity`` an outbound-only one, sent through
its own server with no Sent copy and no receipt) and ``stage``:

- ``queued``: nothing sent; :meth:`cancel` may still take it back (undo, unschedule);
- ``smtp``: a submission has started (``attempt_at``); from here on a retry first asks the
  mailbox whether it went (``sync.sender``);
- ``data`` (an outbound-only identity's send, ``transport: identity``): every recipient was
  accepted and DATA begins; from here on the server may have the message. Such a send has no
  mailbox to ask, so a send found here after a crash or a cut during DATA is never sent again
  by itself: it fails with status ``unknown`` until the user says whether it went
  (:meth:`SendStore.resolve_unknown`);
- ``accepted``: the server said 250 (``smtp_reply``); the Sent copy is being filed;
- ``filed``: the Sent copy is in place; the receipt had not arrived yet (the message shows as
  sent; the row stays pending until the receipt is removed);
- ``sent``: done (the row is ``applied``).

The message's send status (:attr:`SendRecord.status`) is read from its row: ``scheduled``,
``sending``, ``sent``, ``failed`` (with the server's words) or ``cancelled``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from correspond.errors import Conflict, NotFound
from correspond.store import drafts as draft_store
from correspond.store.engine import register_table_modules, shared_sessions, unit_of_work
from correspond.store.message_data import MessageData, storable_message
from correspond.store.message_tables import (
    AttachmentRow,
    MessageRefRow,
    MessageRow,
    MessageSubjectKeyRow,
    ThreadRow,
    list_sort_at,
)
from correspond.store.outbox import OutboxAction, _action, answer_message
from correspond.store.outbox_tables import OutboxRow
from correspond.store.tables import AccountRow, FolderRow, utcnow

__all__ = [
    "SEND_STATUSES",
    "Original",
    "SendListing",
    "SendRecord",
    "SendStore",
    "send_status",
]

SEND_STATUSES = ("scheduled", "sending", "sent", "failed", "cancelled", "unknown")


def send_status(
    state: str, stage: str, next_attempt_at: datetime, now: datetime, attempts: int = 0
) -> str:
    """The status a send shows on its message (see the module docstring): ``scheduled``
    until its first attempt is due; a send waiting for a retry is still ``sending``;
    ``unknown`` when an outbound-only identity's send was cut during DATA (the user decides:
    :meth:`SendStore.resolve_unknown`)."""
    if state == "applied" or stage == "filed":
        return "sent"
    if state == "failed":
        return "unknown" if stage == "data" else "failed"
    if state == "cancelled":
        return "cancelled"
    if stage == "queued" and attempts == 0 and next_attempt_at > now:
        return "scheduled"
    return "sending"


@dataclass(frozen=True, slots=True)
class SendRecord:
    """A send: its CRM message, its outbox row and the status shown."""

    message_id: int
    thread_id: int | None
    account_id: int
    status: str
    error: str | None
    send_at: datetime
    outbox: OutboxAction

    @property
    def stage(self) -> str:
        return str(self.outbox.payload.get("stage", "queued"))


@dataclass(frozen=True, slots=True)
class SendListing:
    """A send in a list: its record, and what the user knows it by."""

    record: SendRecord
    subject: str | None
    to: tuple[str, ...]
    user_id: int | None


@dataclass(frozen=True, slots=True)
class Original:
    """What a reply or forward takes from the message it answers."""

    id: int
    account_id: int
    subject: str
    from_name: str | None
    from_email: str | None
    message_id_header: str | None
    references: tuple[str, ...]
    reply_to: tuple[tuple[str, str], ...]
    to: tuple[tuple[str, str], ...]
    cc: tuple[tuple[str, str], ...]
    #: (attachment id, filename, content type, blob key or None), inline parts left out.
    attachments: tuple[tuple[int, str | None, str, str | None], ...]
    in_reply_to: str | None = None
    date: datetime | None = None
    text: str | None = None
    html: str | None = None


def _pairs(items: Sequence[Mapping[str, Any]] | None) -> tuple[tuple[str, str], ...]:
    return tuple((str(a.get("name") or ""), str(a.get("email") or "")) for a in items or ())


def _record(row: OutboxRow, thread_id: int | None, now: datetime) -> SendRecord:
    action = _action(row)
    stage = str(action.payload.get("stage", "queued"))
    return SendRecord(
        message_id=int(row.message_id or 0),
        thread_id=thread_id,
        account_id=row.account_id,
        status=send_status(row.state, stage, row.next_attempt_at, now, row.attempts),
        error=row.last_error if row.state == "failed" else None,
        send_at=row.next_attempt_at if stage == "queued" else row.created_at,
        outbox=action,
    )


def _addr_json(addrs: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"name": a.name, "email": a.email} for a in addrs]


class SendStore:
    """Sends in the store's database. Thread-safe: one session per call."""

    def __init__(self, engine: Engine) -> None:
        register_table_modules()
        self._sessions = shared_sessions(engine)  # one per account: shared

    # -- the CRM side ----------------------------------------------------------------------------

    def queue(
        self,
        *,
        account_id: int,
        user_id: int | None,
        data: MessageData,
        payload: Mapping[str, Any],
        send_at: datetime,
        draft: tuple[int, int] | None = None,
    ) -> SendRecord:
        """Store the outgoing message and its ``send`` outbox row in one transaction (see the
        module docstring). ``data`` is the message as the sync would store its Sent copy.
        ``draft``: ``(owner id, draft id)`` of the draft being sent, marked sent in this same
        transaction (``store.drafts.mark_draft_sent``): queued and no longer sendable at once."""
        data = storable_message(data)
        now = utcnow()
        with unit_of_work(self._sessions) as s:
            account = s.get(AccountRow, account_id)
            if account is None:
                raise NotFound(f"no account with id {account_id}")
            taken = s.scalar(
                select(MessageRow.id).where(
                    MessageRow.account_id == account_id, MessageRow.dedupe_key == data.dedupe_key
                )
            )
            if taken is not None:
                raise Conflict(f"a message with Message-ID {data.message_id} is already stored")
            thread_id = self._thread_for(s, account_id, data)
            when = data.date or now
            if thread_id is None:
                thread = ThreadRow(
                    account_id=account_id,
                    subject=data.subject,
                    message_count=0,
                    first_message_at=when,
                    last_message_at=when,
                    created_at=now,
                )
                s.add(thread)
                s.flush()
                thread_id = thread.id
            message = MessageRow(
                account_id=account_id,
                thread_id=thread_id,
                dedupe_key=data.dedupe_key,
                message_id_header=data.message_id,
                in_reply_to=data.in_reply_to,
                reference_ids=list(data.references),
                subject=data.subject,
                normalized_subject=data.normalized_subject,
                from_name=data.from_.name if data.from_ else None,
                from_email=data.from_.email.lower() if data.from_ else None,
                sender=[],
                reply_to=_addr_json(data.reply_to),
                to_addrs=_addr_json(data.to),
                cc_addrs=_addr_json(data.cc),
                bcc_addrs=_addr_json(data.bcc),
                participants=list(data.participants),
                date=data.date,
                internaldate=None,
                snippet=data.snippet,
                text_body=data.text,
                html_body=data.html,
                flags=["\\Seen"],
                state="active",
                direction="outbound",
                size=data.size,
                raw_blob_key=data.raw_blob_key,
                truncated=False,
                defects=list(data.defects),
                created_at=now,
                updated_at=now,
                sort_at=list_sort_at(data.date, None, now),
            )
            s.add(message)
            s.flush()
            for ref in data.parent_ids:
                s.add(MessageRefRow(account_id=account_id, message_id=message.id, ref=ref))
            if data.date is not None:
                for key in data.subject_keys:
                    s.add(
                        MessageSubjectKeyRow(
                            account_id=account_id, message_id=message.id, key=key, date=data.date
                        )
                    )
            for att in data.attachments:
                s.add(
                    AttachmentRow(
                        message_id=message.id,
                        filename=att.filename,
                        content_type=att.content_type,
                        size=att.size,
                        content_id=att.content_id,
                        inline=att.inline,
                        blob_key=att.blob_key,
                        section=att.section,
                    )
                )
            s.execute(
                update(ThreadRow)
                .where(ThreadRow.id == thread_id)
                .values(message_count=ThreadRow.message_count + 1)
            )
            thread_row = s.get(ThreadRow, thread_id)
            assert thread_row is not None
            if thread_row.last_message_at is None or thread_row.last_message_at < when:
                thread_row.last_message_at = when
            if thread_row.first_message_at is None or thread_row.first_message_at > when:
                thread_row.first_message_at = when
            answers = self._answered_message(s, account_id, data)
            row = OutboxRow(
                account_id=account_id,
                message_id=message.id,
                user_id=user_id,
                kind="send",
                payload={
                    **payload,
                    "stage": "queued",
                    **({"answers": answers} if answers is not None else {}),
                },
                state="pending",
                attempts=0,
                next_attempt_at=send_at,
                created_at=now,
            )
            s.add(row)
            # Wakes the account's syncer within a lease round (store.leases).
            account.updated_at = now
            s.flush()
            if draft is not None:
                draft_store.mark_draft_sent(s, draft[0], draft[1], row.id)
            return _record(row, thread_id, now)

    @staticmethod
    def _thread_for(s: Session, account_id: int, data: MessageData) -> int | None:
        """The thread of the newest stored message this one replies to (In-Reply-To, then
        References), or None (a new conversation)."""
        parents = [p for p in (data.in_reply_to, *reversed(data.references)) if p]
        for parent in parents:
            found = s.scalar(
                select(MessageRow.thread_id)
                .where(
                    MessageRow.account_id == account_id,
                    MessageRow.message_id_header == parent,
                    MessageRow.thread_id.is_not(None),
                )
                .order_by(MessageRow.id.desc())
                .limit(1)
            )
            if found is not None:
                return int(found)
        return None

    @staticmethod
    def _answered_message(s: Session, account_id: int, data: MessageData) -> int | None:
        """The stored message this one replies to (its In-Reply-To, in the same account; the
        newest of that Message-ID), which gets \\Answered once the reply is sent; None for a
        new message or a forward (no In-Reply-To)."""
        if not data.in_reply_to:
            return None
        found = s.scalar(
            select(MessageRow.id)
            .where(
                MessageRow.account_id == account_id,
                MessageRow.message_id_header == data.in_reply_to,
                MessageRow.direction != "outbound",
            )
            .order_by(MessageRow.id.desc())
            .limit(1)
        )
        return None if found is None else int(found)

    @staticmethod
    def _answer_original(s: Session, row: OutboxRow) -> None:
        """The reply ``row`` carries is sent (or shows as sent): the message it answers gets
        \\Answered in the CRM and, through an ``answered`` outbox row, on every location in
        the mailbox, in this same transaction; once per send (``answered`` in the payload)."""
        payload = dict(row.payload or {})
        original_id = payload.get("answers")
        if original_id is None or payload.get("answered"):
            return
        row.payload = {**payload, "answered": True}
        answer_message(s, int(original_id), user_id=row.user_id)

    def original(self, message_id: int) -> Original:
        """The message a reply or forward answers; NotFound when there is none."""
        with unit_of_work(self._sessions) as s:
            row = s.get(MessageRow, message_id)
            if row is None:
                raise NotFound(f"no message with id {message_id}")
            atts = s.execute(
                select(
                    AttachmentRow.id,
                    AttachmentRow.filename,
                    AttachmentRow.content_type,
                    AttachmentRow.blob_key,
                )
                .where(AttachmentRow.message_id == message_id, AttachmentRow.inline.is_(False))
                .order_by(AttachmentRow.id)
            ).all()
            return Original(
                id=row.id,
                account_id=row.account_id,
                subject=row.subject or "",
                from_name=row.from_name,
                from_email=row.from_email,
                message_id_header=row.message_id_header,
                references=tuple(row.reference_ids or ()),
                reply_to=_pairs(row.reply_to),
                to=_pairs(row.to_addrs),
                cc=_pairs(row.cc_addrs),
                attachments=tuple((int(a[0]), a[1], str(a[2]), a[3]) for a in atts),
                in_reply_to=row.in_reply_to,
                date=row.date,
                text=row.text_body,
                html=row.html_body,
            )

    def attachment(self, attachment_id: int) -> tuple[int, str | None, str, str | None] | None:
        """(message id, filename, content type, blob key) of a stored attachment, or None."""
        with unit_of_work(self._sessions) as s:
            found = s.execute(
                select(
                    AttachmentRow.message_id,
                    AttachmentRow.filename,
                    AttachmentRow.content_type,
                    AttachmentRow.blob_key,
                ).where(AttachmentRow.id == attachment_id)
            ).first()
        if found is None:
            return None
        return int(found[0]), found[1], str(found[2]), found[3]

    def _send_row(self, s: Session, outbox_id: int, *, lock: bool = False) -> OutboxRow:
        row = s.get(OutboxRow, outbox_id, with_for_update=lock)
        if row is None or row.kind != "send":
            raise NotFound(f"no send with id {outbox_id}")
        return row

    def _thread_of(self, s: Session, row: OutboxRow) -> int | None:
        if row.message_id is None:
            return None
        return cast(
            int | None,
            s.scalar(select(MessageRow.thread_id).where(MessageRow.id == row.message_id)),
        )

    def get(self, outbox_id: int) -> SendRecord:
        with unit_of_work(self._sessions) as s:
            row = self._send_row(s, outbox_id)
            return _record(row, self._thread_of(s, row), utcnow())

    def actor_of(self, outbox_id: int) -> int | None:
        """Who queued an outbox row (any kind; None: unknown); NotFound when there is none."""
        with unit_of_work(self._sessions) as s:
            row = s.get(OutboxRow, outbox_id)
            if row is None:
                raise NotFound(f"no outbox row with id {outbox_id}")
            return row.user_id

    def for_message(self, message_id: int) -> SendRecord | None:
        """The newest send of a message (None: it was not sent from the CRM)."""
        with unit_of_work(self._sessions) as s:
            row = s.scalars(
                select(OutboxRow)
                .where(OutboxRow.message_id == message_id, OutboxRow.kind == "send")
                .order_by(OutboxRow.id.desc())
                .limit(1)
            ).first()
            return None if row is None else _record(row, self._thread_of(s, row), utcnow())

    def open_sends(self, *, user_id: int | None = None, limit: int = 100) -> list[SendListing]:
        """Sends not done: waiting or going (``pending``), ``failed`` and ``unknown`` (the
        user decides: :meth:`resolve_unknown`), of ``user_id`` (None: everyone's), the
        newest first, at most ``limit``."""
        now = utcnow()
        query = (
            select(OutboxRow, MessageRow.thread_id, MessageRow.subject, MessageRow.to_addrs)
            .outerjoin(MessageRow, MessageRow.id == OutboxRow.message_id)
            .where(OutboxRow.kind == "send", OutboxRow.state.in_(("pending", "failed")))
        )
        if user_id is not None:
            query = query.where(OutboxRow.user_id == user_id)
        with unit_of_work(self._sessions) as s:
            rows = s.execute(query.order_by(OutboxRow.id.desc()).limit(limit)).all()
            return [
                SendListing(
                    record=_record(row, thread_id, now),
                    subject=subject,
                    to=tuple(str(a.get("email") or "") for a in to or ()),
                    user_id=row.user_id,
                )
                for row, thread_id, subject, to in rows
            ]

    def cancel(self, outbox_id: int) -> SendRecord:
        """Take a send back before it goes (undo, or a scheduled send called off): the row ends
        ``cancelled`` and the message leaves lists, threads and timelines (state ``deleted``;
        nothing of it ever reached the mailbox). Conflict once sending has begun."""
        with unit_of_work(self._sessions) as s:
            row = self._send_row(s, outbox_id, lock=True)
            stage = str((row.payload or {}).get("stage", "queued"))
            if row.state != "pending" or stage != "queued":
                shown = send_status(row.state, stage, row.next_attempt_at, utcnow(), row.attempts)
                raise Conflict(f"the message can no longer be taken back: it is {shown}")
            row.state = "cancelled"
            row.applied_at = utcnow()
            row.last_error = "cancelled before it was sent"
            if row.message_id is not None:
                message = s.get(MessageRow, row.message_id)
                if message is not None:
                    message.state = "deleted"
            s.flush()
            return _record(row, self._thread_of(s, row), utcnow())

    def resolve_unknown(self, outbox_id: int, *, went: bool) -> SendRecord:
        """The user's answer for a send whose fate is ``unknown``: it went (``sent``), or it
        did not (queued again, due now: the same bytes, the same Message-ID). Conflict for
        a send in any other status."""
        now = utcnow()
        with unit_of_work(self._sessions) as s:
            row = self._send_row(s, outbox_id, lock=True)
            stage = str((row.payload or {}).get("stage", "queued"))
            if row.state != "failed" or stage != "data":
                shown = send_status(row.state, stage, row.next_attempt_at, now, row.attempts)
                raise Conflict(f"only a send whose fate is unknown can be resolved: it is {shown}")
            if went:
                row.state = "applied"
                row.applied_at = now
                row.payload = {**(row.payload or {}), "stage": "sent", "resolved": "sent"}
                row.last_error = None
            else:
                row.state = "pending"
                row.payload = {**(row.payload or {}), "stage": "queued", "resolved": "resend"}
                row.next_attempt_at = now
                row.last_error = None
                account = s.get(AccountRow, row.account_id)
                if account is not None:
                    account.updated_at = now  # wakes the account's session
            s.flush()
            return _record(row, self._thread_of(s, row), now)

    # -- the sender's side -----------------------------------------------------------------------

    def update_payload(self, outbox_id: int, **changes: Any) -> dict[str, Any]:
        """Merge ``changes`` into a pending send's payload (its progress); the new payload.
        Conflict when the row is no longer pending (cancelled meanwhile)."""
        with unit_of_work(self._sessions) as s:
            row = self._send_row(s, outbox_id, lock=True)
            if row.state != "pending":
                raise Conflict(f"the send {outbox_id} is {row.state}")
            row.payload = {**(row.payload or {}), **changes}
            if changes.get("stage") == "filed":
                self._answer_original(s, row)  # shown as sent from here on
            return dict(row.payload)

    def mark_sent(self, outbox_id: int, **changes: Any) -> None:
        """The send is done: the server took it and the Sent copy is where it belongs."""
        with unit_of_work(self._sessions) as s:
            row = self._send_row(s, outbox_id, lock=True)
            if row.state != "pending":
                return
            row.payload = {**(row.payload or {}), **changes, "stage": "sent"}
            self._answer_original(s, row)
            row.state = "applied"
            row.applied_at = utcnow()
            row.attempts = row.attempts + 1
            row.last_error = None

    def set_due(self, outbox_id: int, when: datetime, note: str | None = None) -> None:
        """Look at a pending send again at ``when`` (waiting for its receipt), not counting an
        attempt."""
        with unit_of_work(self._sessions) as s:
            s.execute(
                update(OutboxRow)
                .where(OutboxRow.id == outbox_id, OutboxRow.state == "pending")
                .values(next_attempt_at=when, last_error=note)
            )

    def sent_copy(self, account_id: int) -> str | None:
        with unit_of_work(self._sessions) as s:
            return cast(
                str | None,
                s.scalar(select(AccountRow.sent_copy).where(AccountRow.id == account_id)),
            )

    def set_sent_copy(self, account_id: int, value: str) -> None:
        """Record who files the account's Sent copies (``server`` | ``append``), without
        touching ``updated_at`` (that would wake the account's session for nothing)."""
        with unit_of_work(self._sessions) as s:
            s.execute(
                update(AccountRow)
                .where(AccountRow.id == account_id)
                .values(sent_copy=value, updated_at=AccountRow.updated_at)
            )

    def folders_by_role(self, account_id: int, roles: Sequence[str]) -> dict[str, bytes]:
        """The account's folders with these roles (role -> raw name; selected ones first)."""
        with unit_of_work(self._sessions) as s:
            rows = s.execute(
                select(FolderRow.role, FolderRow.remote_name_raw)
                .where(
                    FolderRow.account_id == account_id,
                    FolderRow.role.in_(list(roles)),
                    FolderRow.removed.is_(False),
                    FolderRow.selectable.is_(True),
                )
                .order_by(FolderRow.selected.desc(), FolderRow.id)
            ).all()
        found: dict[str, bytes] = {}
        for role, raw in rows:
            found.setdefault(str(role), bytes(raw))
        return found
