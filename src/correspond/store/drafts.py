"""Drafts: all their SQL (tables in ``store.draft_tables``).

Every read and write goes through :func:`~correspond.store.visibility.draft_terms`: a draft
is its owner's alone; anyone else's id is :class:`NotFound`, as for one that does not exist.
Bounded: a user keeps at most ``max_drafts`` drafts, and a draft (its bodies and uploaded
files) is at most ``max_bytes`` (a message's limit). :meth:`DraftStore.claim` marks a draft as
being sent, so a second send of it (a double click, another tab) is refused while the first
is queued. The transaction that queues the send also marks the draft sent
(:func:`mark_draft_sent`, called by ``SendStore.queue``): there is no moment when the send is
queued and the draft still sendable, so a crash cannot lead to a second send. A sent draft is
hidden from everything (``draft_terms``) but :meth:`DraftStore.claim`, which answers a second
send of it with the outbox id of the first; it is pruned after :data:`SENT_DRAFT_KEEP_SECONDS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.orm import Session, defer, sessionmaker

from correspond.errors import ConfigError, Conflict, NotFound
from correspond.store.draft_tables import REPLY_MODES, DraftFileRow, DraftRow
from correspond.store.engine import register_table_modules, unit_of_work
from correspond.store.tables import utcnow
from correspond.store.visibility import Viewer, draft_terms, viewer_params

__all__ = [
    "DEFAULT_MAX_DRAFTS",
    "SENDING_CLAIM_SECONDS",
    "SENT_DRAFT_KEEP_SECONDS",
    "Draft",
    "DraftFields",
    "DraftFile",
    "DraftStore",
    "StoredRef",
    "mark_draft_sent",
]

#: Drafts one user keeps.
DEFAULT_MAX_DRAFTS = 1000
#: After this long a claim to send a draft is stale (the process died before it was queued).
SENDING_CLAIM_SECONDS = 120
#: A sent draft is kept (without its files) this long, so that sending it again (a retry after
#: a lost answer or a crash) answers with its send instead of sending it twice.
SENT_DRAFT_KEEP_SECONDS = 24 * 3600


@dataclass(frozen=True, slots=True)
class StoredRef:
    """A stored attachment by id; with ``content_id``, an inline image of the HTML."""

    attachment_id: int
    content_id: str | None = None


@dataclass(frozen=True, slots=True)
class DraftFile:
    """A file uploaded to a draft (``content`` None: listed without its bytes)."""

    filename: str
    content_type: str
    size: int
    content_id: str | None = None
    content: bytes | None = None
    id: int | None = None


@dataclass(frozen=True, slots=True)
class DraftFields:
    """What a draft holds (the composer's state). Recipients as typed."""

    identity_id: int | None = None
    account_id: int | None = None
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    attachments: tuple[StoredRef, ...] = ()
    in_reply_to_id: int | None = None
    reply_mode: str | None = None
    template_id: int | None = None


@dataclass(frozen=True, slots=True)
class Draft:
    """A saved draft, its files listed (bytes only where asked for)."""

    id: int
    owner_id: int
    fields: DraftFields
    files: tuple[DraftFile, ...]
    size: int
    created_at: datetime
    updated_at: datetime
    sending: bool = field(default=False)
    #: Its send was queued already (only :meth:`DraftStore.claim` returns such a draft).
    sent_outbox_id: int | None = None


def _text_size(fields: DraftFields) -> int:
    return sum(
        len(v.encode("utf-8"))
        for v in (fields.subject, fields.text, fields.html, *fields.to, *fields.cc, *fields.bcc)
        if v
    )


class DraftStore:
    """Drafts in the store's database. Thread-safe: one session per call."""

    def __init__(
        self, engine: Engine, *, max_bytes: int, max_drafts: int = DEFAULT_MAX_DRAFTS
    ) -> None:
        register_table_modules()
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self.max_bytes = max_bytes
        self.max_drafts = max_drafts

    # -- reading ---------------------------------------------------------------------------------

    @staticmethod
    def _draft(row: DraftRow, files: Sequence[DraftFileRow], *, content: bool) -> Draft:
        fields = DraftFields(
            identity_id=row.identity_id,
            account_id=row.account_id,
            to=tuple(row.to_addrs or ()),
            cc=tuple(row.cc_addrs or ()),
            bcc=tuple(row.bcc_addrs or ()),
            subject=row.subject,
            text=row.text_body,
            html=row.html_body,
            attachments=tuple(
                StoredRef(int(a["id"]), a.get("content_id")) for a in row.attachments or ()
            ),
            in_reply_to_id=row.in_reply_to_id,
            reply_mode=row.reply_mode,
            template_id=row.template_id,
        )
        stale = utcnow() - timedelta(seconds=SENDING_CLAIM_SECONDS)
        return Draft(
            id=row.id,
            owner_id=row.owner_id,
            fields=fields,
            files=tuple(
                DraftFile(
                    f.filename,
                    f.content_type,
                    int(f.size),
                    f.content_id,
                    bytes(f.content) if content else None,
                    id=f.id,
                )
                for f in files
            ),
            size=int(row.size),
            created_at=row.created_at,
            updated_at=row.updated_at,
            sending=row.sending_since is not None and row.sending_since > stale,
            sent_outbox_id=row.sent_outbox_id,
        )

    def _row(self, s: Session, viewer: Viewer, draft_id: int, *, lock: bool = False) -> DraftRow:
        query = select(DraftRow).where(DraftRow.id == draft_id, draft_terms(viewer))
        if lock:
            query = query.with_for_update()
        row = s.scalars(query, viewer_params(viewer)).first()
        if row is None:
            raise NotFound(f"no draft with id {draft_id}")
        return row

    @staticmethod
    def _files(s: Session, draft_id: int, *, content: bool) -> list[DraftFileRow]:
        query = select(DraftFileRow).where(DraftFileRow.draft_id == draft_id)
        if not content:
            query = query.options(_defer_content())
        return list(s.scalars(query.order_by(DraftFileRow.id)))

    def exists_for(self, viewer: Viewer, draft_id: int) -> None:
        """:class:`NotFound` unless ``draft_id`` is ``viewer``'s (``api.security.authorize``).
        A sent one too: ``POST /drafts/{id}/send`` answers a second send of it with its send
        (every other use of it is NotFound, through ``draft_terms``)."""
        if viewer.disabled:
            raise NotFound(f"no draft with id {draft_id}")
        with unit_of_work(self._sessions) as s:
            found = s.scalar(
                select(DraftRow.id).where(DraftRow.id == draft_id, DraftRow.owner_id == viewer.id)
            )
        if found is None:
            raise NotFound(f"no draft with id {draft_id}")

    def get(self, viewer: Viewer, draft_id: int, *, content: bool = False) -> Draft:
        with unit_of_work(self._sessions) as s:
            row = self._row(s, viewer, draft_id)
            return self._draft(row, self._files(s, row.id, content=content), content=content)

    def list(
        self, viewer: Viewer, *, limit: int = 100, before_id: int | None = None
    ) -> list[Draft]:
        """``viewer``'s drafts, the last changed first (files listed without their bytes)."""
        with unit_of_work(self._sessions) as s:
            query = select(DraftRow).where(draft_terms(viewer))
            if before_id is not None:
                query = query.where(DraftRow.id < before_id)
            rows = s.scalars(
                query.order_by(DraftRow.updated_at.desc(), DraftRow.id.desc()).limit(limit),
                viewer_params(viewer),
            ).all()
            files: dict[int, list[DraftFileRow]] = {}
            if rows:
                for f in s.scalars(
                    select(DraftFileRow)
                    .options(_defer_content())
                    .where(DraftFileRow.draft_id.in_([r.id for r in rows]))
                    .order_by(DraftFileRow.id)
                ):
                    files.setdefault(f.draft_id, []).append(f)
            return [self._draft(r, files.get(r.id, []), content=False) for r in rows]

    # -- writing ---------------------------------------------------------------------------------

    @staticmethod
    def _check(fields: DraftFields) -> None:
        if fields.reply_mode is not None and fields.reply_mode not in REPLY_MODES:
            raise ConfigError(f"reply_mode must be one of {', '.join(REPLY_MODES)}")
        if fields.reply_mode is not None and fields.in_reply_to_id is None:
            raise ConfigError("reply_mode needs in_reply_to_id (the message it answers)")

    def _size(self, fields: DraftFields, file_bytes: int) -> int:
        size = _text_size(fields) + file_bytes
        if size > self.max_bytes:
            raise ConfigError(
                f"the draft is {size:,} bytes; a draft, like a message, is at most "
                f"{self.max_bytes:,} (send_max_bytes)"
            )
        return size

    @staticmethod
    def _apply(row: DraftRow, fields: DraftFields) -> None:
        row.identity_id = fields.identity_id
        row.account_id = fields.account_id
        row.to_addrs = list(fields.to)
        row.cc_addrs = list(fields.cc)
        row.bcc_addrs = list(fields.bcc)
        row.subject = fields.subject
        row.text_body = fields.text
        row.html_body = fields.html
        row.attachments = [
            {"id": a.attachment_id, "content_id": a.content_id} for a in fields.attachments
        ]
        row.in_reply_to_id = fields.in_reply_to_id
        row.reply_mode = fields.reply_mode
        row.template_id = fields.template_id

    def create(self, viewer: Viewer, fields: DraftFields, files: Sequence[DraftFile]) -> Draft:
        """A new draft of ``viewer``'s; ConfigError over the count or size limit."""
        self._check(fields)
        size = self._size(fields, sum(len(f.content or b"") for f in files))
        now = utcnow()
        with unit_of_work(self._sessions) as s:
            self._prune_sent(s, viewer.id, now)
            count = s.scalar(
                select(func.count())
                .select_from(DraftRow)
                .where(DraftRow.owner_id == viewer.id, DraftRow.sent_outbox_id.is_(None))
            )
            if int(count or 0) >= self.max_drafts:
                raise ConfigError(
                    f"you have {self.max_drafts:,} drafts, the most one keeps: send or delete "
                    "some first"
                )
            row = DraftRow(owner_id=viewer.id, size=size, created_at=now, updated_at=now)
            self._apply(row, fields)
            s.add(row)
            s.flush()
            self._add_files(s, row.id, files)
            return self._draft(row, self._files(s, row.id, content=False), content=False)

    @staticmethod
    def _prune_sent(s: Session, owner_id: int, now: datetime) -> None:
        """Forget the owner's drafts sent more than :data:`SENT_DRAFT_KEEP_SECONDS` ago."""
        old = select(DraftRow.id).where(
            DraftRow.owner_id == owner_id,
            DraftRow.sent_outbox_id.is_not(None),
            DraftRow.updated_at < now - timedelta(seconds=SENT_DRAFT_KEEP_SECONDS),
        )
        ids = list(s.scalars(old.limit(1000)))
        if ids:
            s.execute(delete(DraftFileRow).where(DraftFileRow.draft_id.in_(ids)))
            s.execute(delete(DraftRow).where(DraftRow.id.in_(ids)))

    @staticmethod
    def _add_files(s: Session, draft_id: int, files: Sequence[DraftFile]) -> None:
        for f in files:
            s.add(
                DraftFileRow(
                    draft_id=draft_id,
                    filename=f.filename[:255],
                    content_type=f.content_type[:255],
                    content_id=f.content_id,
                    size=len(f.content or b""),
                    content=f.content or b"",
                )
            )
        s.flush()

    def replace(
        self,
        viewer: Viewer,
        draft_id: int,
        fields: DraftFields,
        files: Sequence[DraftFile],
        *,
        keep_file_ids: Sequence[int] | None = None,
    ) -> Draft:
        """Save the composer's state over draft ``draft_id`` (PUT). Uploaded files are added;
        the draft's earlier files are kept when ``keep_file_ids`` is None, else only those."""
        self._check(fields)
        with unit_of_work(self._sessions) as s:
            row = self._row(s, viewer, draft_id, lock=True)
            if keep_file_ids is not None:
                s.execute(
                    delete(DraftFileRow).where(
                        DraftFileRow.draft_id == row.id,
                        DraftFileRow.id.not_in(list(keep_file_ids)),
                    )
                )
            kept = int(
                s.scalar(
                    select(func.coalesce(func.sum(DraftFileRow.size), 0)).where(
                        DraftFileRow.draft_id == row.id
                    )
                )
                or 0
            )
            row.size = self._size(fields, kept + sum(len(f.content or b"") for f in files))
            self._apply(row, fields)
            row.updated_at = utcnow()
            self._add_files(s, row.id, files)
            return self._draft(row, self._files(s, row.id, content=False), content=False)

    def delete(self, viewer: Viewer, draft_id: int) -> None:
        with unit_of_work(self._sessions) as s:
            row = self._row(s, viewer, draft_id, lock=True)
            s.execute(delete(DraftFileRow).where(DraftFileRow.draft_id == row.id))
            s.delete(row)

    def claim(self, viewer: Viewer, draft_id: int) -> Draft:
        """Mark the draft as being sent and return it with its files' bytes; Conflict while
        another send of it is under way (within :data:`SENDING_CLAIM_SECONDS`). A draft sent
        already comes back as it is, with its :attr:`Draft.sent_outbox_id` (not claimed)."""
        now = utcnow()
        with unit_of_work(self._sessions) as s:
            if not viewer.disabled:
                sent = s.scalars(
                    select(DraftRow).where(
                        DraftRow.id == draft_id,
                        DraftRow.owner_id == viewer.id,
                        DraftRow.sent_outbox_id.is_not(None),
                    )
                ).first()
                if sent is not None:
                    return self._draft(sent, [], content=False)
            row = self._row(s, viewer, draft_id, lock=True)
            stale = now - timedelta(seconds=SENDING_CLAIM_SECONDS)
            if row.sending_since is not None and row.sending_since > stale:
                raise Conflict("this draft is being sent already")
            row.sending_since = now
            s.flush()
            return self._draft(row, self._files(s, row.id, content=True), content=True)

    def release(self, viewer: Viewer, draft_id: int) -> None:
        """The send was refused (a bad address, too big): the draft may be sent again."""
        with unit_of_work(self._sessions) as s:
            s.execute(
                update(DraftRow)
                .where(DraftRow.id == draft_id, draft_terms(viewer))
                .values(sending_since=None),
                viewer_params(viewer),
            )

    def count(self, owner_id: int) -> int:
        with unit_of_work(self._sessions) as s:
            return int(
                cast(
                    Any,
                    s.scalar(
                        select(func.count())
                        .select_from(DraftRow)
                        .where(DraftRow.owner_id == owner_id, DraftRow.sent_outbox_id.is_(None))
                    ),
                )
                or 0
            )


def _defer_content() -> Any:
    return defer(DraftFileRow.content)


def mark_draft_sent(s: Session, owner_id: int, draft_id: int, outbox_id: int) -> None:
    """In the transaction ``s`` that queues a draft's send (``SendStore.queue``): the draft is
    sent (``outbox_id``), hidden from now on, its files dropped. NotFound for a draft that is
    not ``owner_id``'s; Conflict when it was sent already (a stale claim's second send: the
    whole transaction, the second message with it, is rolled back)."""
    row = s.get(DraftRow, draft_id, with_for_update=True)
    if row is None or row.owner_id != owner_id:
        raise NotFound(f"no draft with id {draft_id}")
    if row.sent_outbox_id is not None:
        raise Conflict(f"this draft was sent already (send {row.sent_outbox_id})")
    row.sent_outbox_id = outbox_id
    row.sending_since = None
    row.updated_at = utcnow()
    s.execute(delete(DraftFileRow).where(DraftFileRow.draft_id == draft_id))
