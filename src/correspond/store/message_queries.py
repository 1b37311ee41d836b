"""Read-side SQL over synced mail for the surfaces (API, CLI): pages, details, threads, counts.

Everything here only reads, in one short session per call, and hands back frozen records, never
rows. Paging is by keyset (``before`` cursor), not OFFSET, so a page stays correct while sync
inserts newer mail and deep pages cost the same as the first; every list is served by an index
in its order (``sort_at``, migration 0006), so a page's cost does not grow with the mailbox.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    BindParameter,
    Connection,
    Engine,
    Row,
    Select,
    Text,
    bindparam,
    case,
    cast,
    exists,
    func,
    or_,
    select,
    tuple_,
    type_coerce,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import InstrumentedAttribute, Session

from correspond.errors import ConfigError, NotFound, StoreError
from correspond.rules.folder_refs import resolve_folder_ref
from correspond.store.engine import database_failure, read_retrying, reading_engine
from correspond.store.message_tables import (
    AttachmentRow,
    MessageLocationRow,
    MessageRow,
    ThreadRow,
    shown,
)
from correspond.store.tables import AccountRow, FolderRow, UtcDateTime

__all__ = [
    "SEARCH_SCAN_ROWS",
    "AddressView",
    "AttachmentView",
    "FolderCounts",
    "LocationView",
    "MessageListItem",
    "MessagePage",
    "MessageQueries",
    "MessageView",
    "ThreadView",
    "decode_cursor",
    "encode_cursor",
]

MAX_PAGE = 500
#: Messages one page of a search may examine (``Settings.message_search_scan_rows``).
SEARCH_SCAN_ROWS = 10_000
MAX_THREAD_MESSAGES = 500


@dataclass(frozen=True, slots=True)
class AddressView:
    name: str | None
    email: str


@dataclass(frozen=True, slots=True)
class FolderCounts:
    """What the store holds for one folder: distinct messages and (folder, uid) locations."""

    folder_id: int
    messages: int
    locations: int
    unread: int


@dataclass(frozen=True, slots=True)
class LocationView:
    folder_id: int
    folder_name: str
    role: str | None
    uid: int
    flags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AttachmentView:
    id: int
    message_id: int
    filename: str | None
    content_type: str
    size: int
    content_id: str | None
    inline: bool
    blob_key: str | None

    @property
    def downloaded(self) -> bool:
        """False when the body was left on the server (above the size limit)."""
        return self.blob_key is not None


@dataclass(frozen=True, slots=True)
class MessageListItem:
    id: int
    account_id: int
    thread_id: int | None
    subject: str
    from_: AddressView | None
    to: tuple[AddressView, ...]
    date: datetime | None
    snippet: str
    flags: tuple[str, ...]
    state: str
    direction: str
    has_attachments: bool
    sort_at: datetime


@dataclass(frozen=True, slots=True)
class MessagePage:
    items: list[MessageListItem]
    #: Pass as ``before`` for the next (older) page; None on the last page.
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class MessageView:
    """One message as a reader sees it. ``html`` is as received: sanitise before display."""

    id: int
    account_id: int
    thread_id: int | None
    message_id: str | None
    in_reply_to: str | None
    references: tuple[str, ...]
    subject: str
    from_: AddressView | None
    sender: tuple[AddressView, ...]
    reply_to: tuple[AddressView, ...]
    to: tuple[AddressView, ...]
    cc: tuple[AddressView, ...]
    bcc: tuple[AddressView, ...]
    date: datetime | None
    internaldate: datetime | None
    snippet: str
    text: str | None
    html: str | None
    flags: tuple[str, ...]
    state: str
    direction: str
    size: int | None
    raw_blob_key: str | None
    truncated: bool
    defects: tuple[str, ...]
    locations: tuple[LocationView, ...]
    attachments: tuple[AttachmentView, ...]
    #: When the last location went (None while the message is in a synced folder), and why:
    #: ``expunged``, ``moved`` (to a folder that is not synced), ``unsynced`` (its folder
    #: stopped syncing), ``unknown``; None while not yet looked into.
    gone_from_mailbox_at: datetime | None = None
    gone_reason: str | None = None


@dataclass(frozen=True, slots=True)
class ThreadView:
    id: int
    account_id: int
    subject: str
    message_count: int
    first_message_at: datetime | None
    last_message_at: datetime | None
    messages: tuple[MessageView, ...]


# --- cursors ------------------------------------------------------------------------------------


def encode_cursor(sort_at: datetime, message_id: int) -> str:
    """An opaque page cursor: the last item's sort time and id (URL-safe, no padding)."""
    text = f"{sort_at.astimezone(UTC).isoformat()}|{message_id}"
    return base64.urlsafe_b64encode(text.encode("ascii")).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """The inverse of :func:`encode_cursor`; ConfigError for anything else."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")
        when_text, _, id_text = text.partition("|")
        when = datetime.fromisoformat(when_text)
        if when.tzinfo is None:
            raise ValueError("naive")
        message_id = int(id_text)
        if not 0 <= message_id < 2**63:
            raise ValueError("an id past the store's 64-bit ids")  # a database error otherwise
        return when.astimezone(UTC), message_id
    except (ValueError, UnicodeError, binascii.Error) as exc:
        raise ConfigError(f"not a valid page cursor: {cursor!r}") from exc


# --- helpers ------------------------------------------------------------------------------------


def _addresses(items: Iterable[Mapping[str, Any]] | None) -> tuple[AddressView, ...]:
    return tuple(AddressView(i.get("name") or None, i.get("email") or "") for i in items or ())


def _like_pattern(q: str) -> str:
    escaped = q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _attachment(row: AttachmentRow) -> AttachmentView:
    return AttachmentView(
        id=row.id,
        message_id=row.message_id,
        filename=row.filename,
        content_type=row.content_type,
        size=int(row.size or 0),
        content_id=row.content_id,
        inline=bool(row.inline),
        blob_key=row.blob_key,
    )


#: What a list item shows: never the bodies (they may be megabytes), never whole ORM rows.
#: In this order (a page unpacks rows by position). The address list and the flags are read
#: as JSON text (``CAST ... AS TEXT``: psycopg would otherwise call ``json.loads`` once per
#: value) and the two times as the driver hands them over (``type_coerce``: no per-value result
#: processing); :func:`_list_items` decodes them a page at a time: one ``json.loads`` for the
#: page, SQLite's timestamp text (``YYYY-MM-DD HH:MM:SS.ffffff``) by ``fromisoformat``.
_LIST_COLUMNS = (
    MessageRow.id,
    MessageRow.account_id,
    MessageRow.thread_id,
    MessageRow.subject,
    MessageRow.from_name,
    MessageRow.from_email,
    cast(MessageRow.to_addrs, Text).label("to_addrs"),
    type_coerce(MessageRow.date, Text).label("date"),
    MessageRow.snippet,
    cast(MessageRow.flags, Text).label("flags"),
    MessageRow.state,
    MessageRow.direction,
    type_coerce(MessageRow.sort_at, Text).label("sort_at"),
    # A scalar subquery with LIMIT 1, not EXISTS: PostgreSQL may run an EXISTS as a hashed
    # subplan, reading every attachment row to list 50 messages (95 ms at 1,000,000 messages);
    # this form is one ix_attachments_message lookup per listed row on both backends.
    select(AttachmentRow.id)
    .where(AttachmentRow.message_id == MessageRow.id, AttachmentRow.inline.is_(False))
    .limit(1)
    .scalar_subquery()
    .is_not(None)
    .label("has_attachments"),
)
#: Positions in :data:`_LIST_COLUMNS` that :meth:`MessageQueries._page_rows` reads.
_ID, _SORT_AT = 0, 12


class MessageQueries:
    """Read-only queries over the mirror, on one SQLAlchemy engine (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine, *, search_scan_rows: int = SEARCH_SCAN_ROWS) -> None:
        if search_scan_rows < 1:
            raise ConfigError("search_scan_rows must be at least 1")
        self.engine = engine
        # Pages are read in autocommit on PostgreSQL (one round trip, not BEGIN/page/ROLLBACK),
        # and once more on a new connection if the pooled one was dead.
        self._read = reading_engine(engine)
        self.search_scan_rows = search_scan_rows
        self._statements: dict[tuple[Any, ...], Select[Any]] = {}

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # -- folders -------------------------------------------------------------------------------

    def folder_counts(self, account_id: int) -> dict[int, FolderCounts]:
        """Messages, locations and unread locations per folder of the account (folders with
        nothing stored are absent)."""
        # Flags are a JSON list; its text holds the JSON string "\\Seen" exactly when the
        # location is seen (RFC 3501 §2.3.2: a backslash only starts system flags). A text match
        # works alike on SQLite and PostgreSQL, without dialect-specific JSON operators.
        seen = cast(MessageLocationRow.flags, Text).contains('\\\\Seen"', autoescape=True)
        try:
            with self._session() as s:
                rows = s.execute(
                    select(
                        MessageLocationRow.folder_id,
                        func.count(func.distinct(MessageLocationRow.message_id)),
                        func.count(),
                        func.sum(case((seen, 0), else_=1)),
                    )
                    .join(FolderRow, FolderRow.id == MessageLocationRow.folder_id)
                    .where(FolderRow.account_id == account_id)
                    .group_by(MessageLocationRow.folder_id)
                ).all()
        except SQLAlchemyError as exc:
            raise StoreError(
                f"could not count messages of account {account_id}: {database_failure(exc)}"
            ) from exc
        return {
            int(fid): FolderCounts(int(fid), int(msgs), int(locs), int(unread or 0))
            for fid, msgs, locs, unread in rows
        }

    # -- lists ---------------------------------------------------------------------------------

    def list_messages(
        self,
        account_id: int,
        *,
        folder_id: int | None = None,
        thread_id: int | None = None,
        q: str | None = None,
        limit: int = 50,
        before: str | None = None,
        include_deleted: bool = False,
    ) -> MessagePage:
        """A page of the account's messages, newest first (by Date, else INTERNALDATE, else
        when stored: ``sort_at``), ties by id.

        ``q`` matches (case-insensitively, as a substring) subject, sender and snippet.
        ``before`` is the ``next_cursor`` of the previous page.

        Each page is one range scan of an index in the list order, starting at the cursor:
        ``(thread_id, sort_at, id)`` for a thread, ``(folder_id, sort_at, message_id)`` on the
        locations for a folder, ``(account_id, sort_at, id)`` otherwise. A filter no index
        serves (``q``; a folder within a thread) examines at most ``search_scan_rows``
        messages per page: the page then holds the matches among them, possibly fewer than
        ``limit`` or none, and ``next_cursor`` continues after the last one examined.
        """
        try:
            # Core on a plain connection: the ORM's per-statement work was a third of a page.
            return read_retrying(
                self._read,
                lambda conn: self._list(
                    conn, account_id, folder_id, thread_id, q, limit, before, include_deleted
                ),
            )
        except SQLAlchemyError as exc:
            raise StoreError(f"could not list messages: {database_failure(exc)}") from exc

    def list_account_messages(
        self,
        account_name: str,
        *,
        folder: str | int | None = None,
        thread_id: int | None = None,
        q: str | None = None,
        limit: int = 50,
        before: str | None = None,
        search_bodies: bool = True,
    ) -> MessagePage:
        """:meth:`list_messages` of the account called ``account_name``, ``folder`` by id or
        display name (:func:`~correspond.rules.folder_refs.resolve_folder_ref`, over all the
        account's folders, removed ones too). The names are looked up on the page's own
        connection, by id and name only: a session and a whole account record for each page
        cost as much as the page itself. Without a folder the account's id is a subquery of the
        page statement (one round trip less), looked up apart only when the page is empty, to
        tell an unknown account from an empty list. NotFound for an unknown account or
        folder. ``search_bodies`` False: ``q`` matches subject and sender only, never the
        snippet (for a viewer who may see metadata only)."""

        def read(conn: Connection) -> MessagePage:
            if folder is None:
                return self._list(
                    conn, account_name, None, thread_id, q, limit, before, False, search_bodies
                )
            account_id = conn.scalar(self._lookup("account"), {"account_name": account_name})
            if account_id is None:
                raise NotFound(f"no account named {account_name!r}")
            folders = conn.execute(self._lookup("folders"), {"account_id": account_id})
            folder_id = resolve_folder_ref(folders.all(), folder).id
            return self._list(
                conn, account_id, folder_id, thread_id, q, limit, before, False, search_bodies
            )

        try:
            return read_retrying(self._read, read)
        except SQLAlchemyError as exc:
            raise StoreError(f"could not list messages: {database_failure(exc)}") from exc

    def _list(
        self,
        conn: Connection,
        account: int | str,
        folder_id: int | None,
        thread_id: int | None,
        q: str | None,
        limit: int,
        before: str | None,
        include_deleted: bool,
        search_bodies: bool = True,
    ) -> MessagePage:
        if not 1 <= limit <= MAX_PAGE:
            raise ConfigError(f"limit must be between 1 and {MAX_PAGE}")
        position = decode_cursor(before) if before is not None else None
        drive = "thread" if thread_id is not None else "folder" if folder_id is not None else ""
        in_folder = thread_id is not None and folder_id is not None
        text = (q or "").strip()
        bounded = in_folder or bool(text)
        by_name = isinstance(account, str)
        params: dict[str, Any] = {
            "account_id": None if by_name else account,
            "account_name": account if by_name else None,
            "folder_id": folder_id,
            "thread_id": thread_id,
            "pattern": _like_pattern(text) if text else None,
        }
        floor: tuple[datetime, int] | None = None
        if bounded:
            # The last message this page may examine: the search stops there.
            last = conn.execute(
                self._statement(("scan", drive, position is not None), by_name),
                {**params, **_position("pos", position), "skip": self.search_scan_rows - 1},
            ).first()
            if last is not None:
                floor = (_aware_required(last[0]), int(last[1]))
                params.update(_position("floor", floor))
        # The search's shape: False (none), "all" (subject, sender, snippet) or "meta" (no
        # snippet: nothing of the body).
        search: str | bool = ("all" if search_bodies else "meta") if text else False
        shape = (drive, in_folder, search, include_deleted, floor is not None)
        rows = self._page_rows(conn, shape, params, position, limit, by_name)
        if not rows and by_name and conn.scalar(self._lookup("account"), params) is None:
            raise NotFound(f"no account named {account!r}")
        items = _list_items(rows[:limit])
        if len(rows) > limit:
            cursor: str | None = encode_cursor(items[-1].sort_at, items[-1].id)
        elif floor is not None:
            # The search examined as much as one page may: the rest lies after ``floor``.
            cursor = encode_cursor(*floor)
        else:
            cursor = None
        return MessagePage(items=items, next_cursor=cursor)

    def _page_rows(
        self,
        conn: Connection,
        shape: tuple[Any, ...],
        params: dict[str, Any],
        position: tuple[datetime, int] | None,
        limit: int,
        by_name: bool,
    ) -> Sequence[Row[Any]]:
        """Up to ``limit + 1`` distinct messages of the list ``shape`` after ``position``, in
        list order.

        A message filed twice in one folder (two UIDs) has two locations with the same
        (sort_at, message_id): it is listed once, and another read fills the page when that
        left it short.
        """
        want = limit + 1
        got = conn.execute(
            self._statement(("page", *shape, position is not None), by_name),
            {**params, **_position("pos", position), "lim": want},
        ).all()
        if len({row[_ID] for row in got}) == len(got):
            return got  # the common case: one read, no message twice
        rows: list[Row[Any]] = []
        seen: set[int] = set()
        while True:
            for row in got:
                if row[_ID] not in seen:
                    seen.add(row[_ID])
                    rows.append(row)
            if len(got) < want or len(rows) > limit:
                return rows
            position = (_when(got[-1][_SORT_AT]), got[-1][_ID])
            want = limit + 1 - len(rows)
            got = conn.execute(
                self._statement(("page", *shape, True), by_name),
                {**params, **_position("pos", position), "lim": want},
            ).all()

    def _lookup(self, what: str) -> Select[Any]:
        """The statements :meth:`list_account_messages` resolves names with, built once."""
        found = self._statements.get(("lookup", what))
        if found is None:
            if what == "account":
                found = select(AccountRow.id).where(AccountRow.name == bindparam("account_name"))
            else:
                found = select(FolderRow.id, FolderRow.name).where(
                    FolderRow.account_id == bindparam("account_id")
                )
            self._statements[("lookup", what)] = found
        return found

    def _statement(self, shape: tuple[Any, ...], by_name: bool = False) -> Select[Any]:
        """The list statement of ``shape``, built once: values go as parameters, so a page
        does not pay for building and hashing a new statement tree. ``by_name``: the account
        is ``account_name``, its id a subquery, instead of ``account_id``."""
        key = (*shape, by_name)
        found = self._statements.get(key)
        if found is None:
            found = self._statements[key] = _build_statement(shape, by_name)
        return found

    # -- one message -----------------------------------------------------------------------------

    @staticmethod
    def _views(s: Session, rows: Sequence[MessageRow]) -> list[MessageView]:
        ids = [r.id for r in rows]
        if not ids:
            return []
        locations: dict[int, list[LocationView]] = {}
        for loc, name, role in s.execute(
            select(MessageLocationRow, FolderRow.name, FolderRow.role)
            .join(FolderRow, FolderRow.id == MessageLocationRow.folder_id)
            .where(MessageLocationRow.message_id.in_(ids))
            .order_by(MessageLocationRow.folder_id, MessageLocationRow.uid)
        ):
            locations.setdefault(loc.message_id, []).append(
                LocationView(loc.folder_id, name, role, int(loc.uid), tuple(loc.flags or ()))
            )
        attachments: dict[int, list[AttachmentView]] = {}
        for att in s.scalars(
            select(AttachmentRow)
            .where(AttachmentRow.message_id.in_(ids))
            .order_by(AttachmentRow.id)
        ):
            attachments.setdefault(att.message_id, []).append(_attachment(att))
        return [
            MessageView(
                id=r.id,
                account_id=r.account_id,
                thread_id=r.thread_id,
                message_id=r.message_id_header,
                in_reply_to=r.in_reply_to,
                references=tuple(r.reference_ids or ()),
                subject=r.subject,
                from_=AddressView(r.from_name, r.from_email) if r.from_email else None,
                sender=_addresses(r.sender),
                reply_to=_addresses(r.reply_to),
                to=_addresses(r.to_addrs),
                cc=_addresses(r.cc_addrs),
                bcc=_addresses(r.bcc_addrs),
                date=r.date,
                internaldate=r.internaldate,
                snippet=r.snippet,
                text=r.text_body,
                html=r.html_body,
                flags=tuple(sorted(r.flags or ())),
                state=r.state,
                direction=r.direction,
                size=r.size,
                raw_blob_key=r.raw_blob_key,
                truncated=bool(r.truncated),
                defects=tuple(r.defects or ()),
                locations=tuple(locations.get(r.id, ())),
                attachments=tuple(attachments.get(r.id, ())),
                gone_from_mailbox_at=r.gone_from_mailbox_at if not locations.get(r.id) else None,
                gone_reason=r.gone_reason if not locations.get(r.id) else None,
            )
            for r in rows
        ]

    def get_message(self, message_id: int) -> MessageView:
        """One message with its folder locations and attachments; NotFound if absent."""
        try:
            with self._session() as s:
                row = s.get(MessageRow, message_id)
                if row is None:
                    raise NotFound(f"message {message_id} does not exist")
                return self._views(s, [row])[0]
        except SQLAlchemyError as exc:
            raise StoreError(
                f"could not read message {message_id}: {database_failure(exc)}"
            ) from exc

    def get_attachment(self, message_id: int, attachment_id: int) -> AttachmentView:
        """Attachment ``attachment_id`` *of message* ``message_id``; NotFound otherwise (an id
        from another message is not found, so URLs cannot be mixed and matched)."""
        try:
            with self._session() as s:
                row = s.get(AttachmentRow, attachment_id)
        except SQLAlchemyError as exc:
            raise StoreError(
                f"could not read attachment {attachment_id}: {database_failure(exc)}"
            ) from exc
        if row is None or row.message_id != message_id:
            raise NotFound(f"message {message_id} has no attachment {attachment_id}")
        return _attachment(row)

    # -- threads -------------------------------------------------------------------------------

    def get_thread(self, thread_id: int, *, newest_first: bool = False) -> ThreadView:
        """A thread with its messages, oldest first unless ``newest_first`` (at most
        :data:`MAX_THREAD_MESSAGES`, the newest ones when there are more)."""
        try:
            with self._session() as s:
                thread = s.get(ThreadRow, thread_id)
                if thread is None:
                    raise NotFound(f"thread {thread_id} does not exist")
                rows = list(
                    s.scalars(
                        select(MessageRow)
                        .where(MessageRow.thread_id == thread_id, shown(MessageRow.state))
                        .order_by(MessageRow.sort_at.desc(), MessageRow.id.desc())
                        .limit(MAX_THREAD_MESSAGES)
                    )
                )
                if not newest_first:
                    rows.reverse()
                views = self._views(s, rows)
        except SQLAlchemyError as exc:
            raise StoreError(f"could not read thread {thread_id}: {database_failure(exc)}") from exc
        return ThreadView(
            id=thread.id,
            account_id=thread.account_id,
            subject=thread.subject,
            message_count=int(thread.message_count or len(views)),
            first_message_at=thread.first_message_at,
            last_message_at=thread.last_message_at,
            messages=tuple(views),
        )


def _position(prefix: str, where: tuple[datetime, int] | None) -> dict[str, Any]:
    if where is None:
        return {}
    return {f"{prefix}_at": where[0], f"{prefix}_id": where[1]}


def _build_statement(shape: tuple[Any, ...], by_name: bool = False) -> Select[Any]:
    """A list statement (see :meth:`MessageQueries.list_messages`) with bound parameters:
    ``("scan", drive, after)`` finds the last row a bounded page may examine (``skip`` rows
    on); ``("page", drive, in_folder, q, include_deleted, floor, after)`` reads a page
    (``lim`` rows). ``drive`` is "thread", "folder" or "" (the account). The account is
    ``account_id``, or with ``by_name`` the id of the account called ``account_name`` (a
    scalar subquery, evaluated once: both backends still range-scan the index with it)."""
    account: Any = (
        select(AccountRow.id).where(AccountRow.name == bindparam("account_name")).scalar_subquery()
        if by_name
        else bindparam("account_id")
    )
    order_at: InstrumentedAttribute[datetime]
    order_id: InstrumentedAttribute[int]
    kind, drive = shape[0], shape[1]
    after = shape[-1]
    loc = MessageLocationRow
    if drive == "folder":
        order_at, order_id = loc.sort_at, loc.message_id
    else:
        order_at, order_id = MessageRow.sort_at, MessageRow.id
    key = tuple_(order_at, order_id)
    if drive == "thread":
        driving = MessageRow.thread_id == bindparam("thread_id")
    elif drive == "folder":
        driving = loc.folder_id == bindparam("folder_id")
    else:
        driving = MessageRow.account_id == account
    newest_first = (order_at.desc(), order_id.desc())
    if kind == "scan":
        query = select(order_at, order_id).where(driving)
        if after:
            query = query.where(key < tuple_(_at("pos_at"), _id("pos_id")))
        return query.order_by(*newest_first).offset(bindparam("skip")).limit(1)
    _, _, in_folder, has_q, include_deleted, floor, _ = shape
    query = select(*_LIST_COLUMNS)
    if drive == "folder":
        query = query.join(loc, loc.message_id == MessageRow.id)
    query = query.where(driving)
    if drive or not by_name:
        query = query.where(MessageRow.account_id == account)
    if not include_deleted:
        query = query.where(shown(MessageRow.state))
    if in_folder:
        query = query.where(
            exists().where(loc.message_id == MessageRow.id, loc.folder_id == bindparam("folder_id"))
        )
    if has_q:
        pattern = bindparam("pattern", type_=Text())
        query = query.where(
            or_(
                *(
                    func.lower(col).like(pattern, escape="\\")
                    for col in (
                        MessageRow.subject,
                        MessageRow.from_email,
                        MessageRow.from_name,
                        *((MessageRow.snippet,) if has_q != "meta" else ()),
                    )
                )
            )
        )
    if floor:
        query = query.where(key >= tuple_(_at("floor_at"), _id("floor_id")))
    if after:
        query = query.where(key < tuple_(_at("pos_at"), _id("pos_id")))
    return query.order_by(*newest_first).limit(bindparam("lim"))


def _at(name: str) -> BindParameter[datetime]:
    return bindparam(name, type_=UtcDateTime())


def _id(name: str) -> BindParameter[int]:
    return bindparam(name, type_=BigInteger())


def _aware_required(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _when(value: datetime | str) -> datetime:
    """A timestamp column read without result processing: SQLite's text (UTC, no offset, as
    :class:`~correspond.store.tables.UtcDateTime` writes it) or the driver's datetime."""
    if isinstance(value, str):
        text = value
        try:
            # Parsed with its zone, not parsed then given one: datetime.replace costs several
            # times the parse, and a page reads two timestamps per row.
            value = datetime.fromisoformat(text + "+00:00")
        except ValueError:  # not the stored form (it had an offset already): the long way
            value = datetime.fromisoformat(text)
    if value.tzinfo is UTC:
        return value  # the stored form, or PostgreSQL in a UTC session
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _json_values(values: list[Any]) -> list[Any]:
    """JSON columns read as text, decoded in one ``json.loads`` for all of them (one call per
    page, not one per row and column); anything else (NULL) as it is."""
    texts = [i for i, v in enumerate(values) if isinstance(v, str)]
    if texts:
        decoded = json.loads("[" + ",".join(values[i] for i in texts) + "]")
        for i, value in zip(texts, decoded, strict=True):
            values[i] = value
    return values


def _list_items(rows: Sequence[Row[Any]]) -> list[MessageListItem]:
    """The page's items from rows of :data:`_LIST_COLUMNS`."""
    n = len(rows)
    json_values = _json_values([row[6] for row in rows] + [row[9] for row in rows])
    items = []
    for i, (
        mid,
        aid,
        tid,
        subject,
        from_name,
        from_email,
        _,
        date,
        snippet,
        _,
        state,
        direction,
        sort_at,
        has_attachments,
    ) in enumerate(rows):
        items.append(
            MessageListItem(
                id=mid,
                account_id=aid,
                thread_id=tid,
                subject=subject,
                from_=AddressView(from_name, from_email) if from_email else None,
                to=_addresses(json_values[i]),
                date=None if date is None else _when(date),
                snippet=snippet,
                flags=tuple(sorted(json_values[n + i] or ())),
                state=state,
                direction=direction,
                has_attachments=bool(has_attachments),
                sort_at=_when(sort_at),
            )
        )
    return items
