"""The inbox views: a person's own mailboxes, or a team's inboxes, as threads, newest first.

A page is a list of threads, each placed by its *latest message in the view*: the newest
message of the thread that passes every filter (in the chosen folders, not deleted and not
gone from the mailbox, unread / starred / with an attachment / linked to the contact or deal
when asked). The page is found by walking an index newest first and keeping the messages
that are the latest of their thread in the view (a correlated ``NOT EXISTS`` over
``ix_messages_thread_sort``): no per-thread columns to keep true on every write path, and
nothing is read for threads off the page.

- **Driving index**: each folder of the view is walked on ``ix_message_locations_folder_sort``
  (one statement per folder, merged here: the personal inbox is one Inbox folder per
  account); with ``contact_id`` or ``deal_id`` the record's links are walked instead on
  ``ix_timeline_links_target`` (a contact's threads among a million messages are found
  without reading the mailbox).
- **Bounded**: a page examines at most ``scan_rows`` index entries per driving index (one
  index-only step finds the last one it may examine, as in message lists). A filter that
  matches little may then give a page shorter than ``limit``, or empty, with a
  ``next_cursor`` to go on from: every page costs a bounded amount.
- **Cursor**: the (``sort_at``, message id) of the last thread's latest message in the view,
  opaque (:func:`~correspond.store.message_queries.encode_cursor`). Stable under inserts: a
  new message moves its thread to the top of the view, where a later page never shows it
  again (its older messages are no longer the latest of their thread); every other thread
  keeps its place, so paging on neither repeats nor skips them.
- **The page's threads** are then read by their ids only: counts (messages and unread,
  deleted and gone ones left out), starred and attachment marks, the participants of their
  newest ``PARTICIPANT_MESSAGES`` messages (at most ``MAX_PARTICIPANTS``), and the contact
  and deal chips of their timeline links.

Who sees what is :mod:`correspond.store.visibility`'s rule (:meth:`InboxQueries.scope`): the
personal view holds the accounts the viewer owns that are not team inboxes (``account``
narrows it to any one account the viewer may see); the team view the team's inbox accounts
the viewer may see. A thread of an account seen as metadata only has no snippet, attachment
mark or chips (timelines keep such mail off too), and the filters that would probe its
bodies (``has_attachment``, ``contact_id``, ``deal_id``) are the caller's to refuse.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    Select,
    Text,
    and_,
    bindparam,
    case,
    cast,
    exists,
    func,
    literal,
    not_,
    select,
    tuple_,
    type_coerce,
)
from sqlalchemy.orm import aliased

from correspond.errors import ConfigError, NotFound
from correspond.store.crm_tables import ContactEmailRow, ContactRow, DealRow, TimelineLinkRow
from correspond.store.engine import read_retrying, reading_engine
from correspond.store.message_queries import (
    SEARCH_SCAN_ROWS,
    AddressView,
    _when,
    decode_cursor,
    encode_cursor,
)
from correspond.store.message_tables import (
    AttachmentRow,
    MessageLocationRow,
    MessageRow,
    ThreadRow,
)
from correspond.store.tables import FOLDER_ROLES, AccountRow, FolderRow, UtcDateTime
from correspond.store.visibility import Viewer, viewer_params, visible_accounts

__all__ = [
    "DEFAULT_INBOX_PAGE",
    "MAX_CHIPS",
    "MAX_INBOX_PAGE",
    "MAX_PARTICIPANTS",
    "PARTICIPANT_MESSAGES",
    "InboxFilters",
    "InboxPage",
    "InboxQueries",
    "InboxThread",
    "LinkChip",
    "ScopeAccount",
]

MAX_INBOX_PAGE = 100
DEFAULT_INBOX_PAGE = 50
#: Participants shown per thread, from the thread's newest PARTICIPANT_MESSAGES messages.
MAX_PARTICIPANTS = 10
PARTICIPANT_MESSAGES = 20
#: Contact chips and deal chips shown per thread (each).
MAX_CHIPS = 10

_M = MessageRow
_L = MessageLocationRow
_T = TimelineLinkRow
_Drive = Literal["folder", "contact", "deal"]


@dataclass(frozen=True, slots=True)
class InboxFilters:
    """What a view shows. ``folder``: a folder id (digits) or a role (``inbox``, ``sent``,
    ...); None is the Inbox-role folders. The rest narrow it (None: either way)."""

    folder: str | None = None
    unread: bool | None = None
    starred: bool | None = None
    has_attachment: bool | None = None
    contact_id: int | None = None
    deal_id: int | None = None

    @property
    def probe_bodies(self) -> bool:
        """Whether the filters look at what a metadata-only viewer may not see."""
        return (
            self.has_attachment is not None
            or self.contact_id is not None
            or self.deal_id is not None
        )


@dataclass(frozen=True, slots=True)
class ScopeAccount:
    """An account of a view, and whether the viewer sees it in full."""

    id: int
    name: str
    full: bool


@dataclass(frozen=True, slots=True)
class LinkChip:
    id: int
    name: str


@dataclass(frozen=True, slots=True)
class InboxThread:
    """One thread of a view. ``latest_*`` are its latest message in the view (the one that
    places it); ``snippet``, ``has_attachments`` are None and the chips empty for an account
    seen as metadata only."""

    thread_id: int
    account_id: int
    account: str
    subject: str
    message_count: int
    unread_count: int
    starred: bool
    has_attachments: bool | None
    participants: tuple[AddressView, ...]
    latest_message_id: int
    latest_at: datetime
    date: datetime | None
    snippet: str | None
    contacts: tuple[LinkChip, ...]
    deals: tuple[LinkChip, ...]
    full: bool


@dataclass(frozen=True, slots=True)
class InboxPage:
    threads: list[InboxThread]
    #: Pass as ``cursor`` for the next (older) page; None on the last page.
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class _Candidate:
    sort_at: datetime
    message_id: int
    thread_id: int
    account_id: int
    subject: str
    snippet: str
    date: datetime | None

    @property
    def key(self) -> tuple[datetime, int]:
        return (self.sort_at, self.message_id)


def _flag(column: Any, flag: str) -> ColumnElement[bool]:
    # As in message lists: the JSON text of the flags holds "\\Seen" exactly when it is set.
    return cast(column, Text).contains(f'\\\\{flag}"', autoescape=True)


def _id(name: str) -> Any:
    return bindparam(name, type_=BigInteger())


def _at(name: str) -> Any:
    return bindparam(name, type_=UtcDateTime())


def _has_attachment(m: Any) -> ColumnElement[bool]:
    return exists().where(AttachmentRow.message_id == m.id, AttachmentRow.inline.is_(False))


def _linked(m: Any, kind: str, param: str) -> ColumnElement[bool]:
    # Its own alias: the page statement may walk timeline_links itself (auto-correlation).
    link = aliased(_T)
    return exists().where(
        link.message_id == m.id, link.target_kind == kind, link.target_id == _id(param)
    )


def _in_view(m: Any, shape: tuple[Any, ...]) -> list[ColumnElement[bool]]:
    """Whether message ``m`` (an alias of ``messages``) is in the view, but for its folder:
    not deleted, not gone, and every filter of ``shape``."""
    _, unread, starred, attachment, contact, deal = shape
    terms: list[ColumnElement[bool]] = [m.state != "deleted", m.gone_from_mailbox_at.is_(None)]
    if unread is not None:
        seen = _flag(m.flags, "Seen")
        terms.append(not_(seen) if unread else seen)
    if starred is not None:
        flagged = _flag(m.flags, "Flagged")
        terms.append(flagged if starred else not_(flagged))
    if attachment is not None:
        terms.append(_has_attachment(m) if attachment else not_(_has_attachment(m)))
    if contact:
        terms.append(_linked(m, "contact", "contact_id"))
    if deal:
        terms.append(_linked(m, "deal", "deal_id"))
    return terms


def _in_folders(m: Any) -> ColumnElement[bool]:
    loc = aliased(_L)
    return exists().where(
        loc.message_id == m.id, loc.folder_id.in_(bindparam("folders", expanding=True))
    )


def _build(kind: str, shape: tuple[Any, ...], after: bool, floor: bool) -> Select[Any]:
    """The statement that walks one driving index (``shape[0]``): ``scan`` finds the last
    entry a page may examine (``skip`` entries on), ``page`` the latest-in-view messages."""
    drive: _Drive = shape[0]
    if drive == "folder":
        at, mid = _L.sort_at, _L.message_id
        driving: ColumnElement[bool] = _L.folder_id == _id("drive_id")
    else:
        at, mid = _T.sort_at, _T.message_id
        driving = and_(_T.target_kind == drive, _T.target_id == _id("drive_id"))
    key = tuple_(at, mid)
    newest_first = (at.desc(), mid.desc())
    if kind == "scan":
        scan: Select[Any] = select(at, mid).where(driving)
        if after:
            scan = scan.where(key < tuple_(_at("pos_at"), _id("pos_id")))
        return scan.order_by(*newest_first).offset(bindparam("skip")).limit(1)
    newer = aliased(_M)
    later_in_view = (
        exists()
        .where(
            newer.thread_id == _M.thread_id,
            tuple_(newer.sort_at, newer.id) > tuple_(_M.sort_at, _M.id),
            *_in_view(newer, shape),
            _in_folders(newer),
        )
        .correlate(_M)
    )
    query: Select[Any] = (
        select(
            type_coerce(at, Text).label("sort_at"),
            mid,
            _M.thread_id,
            _M.account_id,
            _M.subject,
            _M.snippet,
            type_coerce(_M.date, Text).label("date"),
        )
        .select_from(_L if drive == "folder" else _T)
        .join(_M, _M.id == mid)
        .where(driving, _M.thread_id.is_not(None), *_in_view(_M, shape), not_(later_in_view))
    )
    if drive != "folder":
        query = query.where(
            _M.account_id.in_(bindparam("accounts", expanding=True)), _in_folders(_M)
        )
    if floor:
        query = query.where(key >= tuple_(_at("floor_at"), _id("floor_id")))
    if after:
        query = query.where(key < tuple_(_at("pos_at"), _id("pos_id")))
    return query.order_by(*newest_first).limit(bindparam("lim"))


class InboxQueries:
    """Inbox pages over one engine (SQLite or PostgreSQL); statements built once per shape."""

    def __init__(self, engine: Engine, *, scan_rows: int = SEARCH_SCAN_ROWS) -> None:
        if scan_rows < 1:
            raise ConfigError("scan_rows must be at least 1")
        self.engine = engine
        self._read = reading_engine(engine)
        self.scan_rows = scan_rows
        self._statements: dict[tuple[Any, ...], Select[Any]] = {}

    def _statement(self, kind: str, shape: tuple[Any, ...], after: bool, floor: bool) -> Any:
        key = (kind, shape, after, floor)
        found = self._statements.get(key)
        if found is None:
            found = self._statements[key] = _build(kind, shape, after, floor)
        return found

    # -- who and where -----------------------------------------------------------------------

    def scope(
        self,
        viewer: Viewer,
        *,
        team_id: int | None = None,
        account: str | None = None,
    ) -> list[ScopeAccount]:
        """The accounts of a view, by the visibility rule: the team's inbox accounts
        (``team_id``) or the viewer's own personal ones; ``account`` narrows either to one
        (NotFound when the viewer may not see it, as for no such account)."""
        visible = visible_accounts(viewer)
        query = select(AccountRow.id, AccountRow.name, visible.c.access).join(
            visible, visible.c.account_id == AccountRow.id
        )
        if team_id is not None:
            query = query.where(AccountRow.team_id == team_id)
        elif account is None:
            query = query.where(AccountRow.owner_id == viewer.id, AccountRow.team_id.is_(None))
        if account is not None:
            query = query.where(AccountRow.name == account)
        with self._read.connect() as conn:
            rows = conn.execute(query.order_by(AccountRow.id), viewer_params(viewer)).all()
        if account is not None and not rows:
            raise NotFound(f"no account named {account!r}")
        return [ScopeAccount(int(i), str(n), str(a) == "full") for i, n, a in rows]

    # -- the page ------------------------------------------------------------------------------

    def page(
        self,
        accounts: Sequence[ScopeAccount],
        filters: InboxFilters,
        *,
        limit: int = DEFAULT_INBOX_PAGE,
        cursor: str | None = None,
    ) -> InboxPage:
        """A page of the view over ``accounts`` (from :meth:`scope`), newest thread first."""
        if not 1 <= limit <= MAX_INBOX_PAGE:
            raise ConfigError(f"limit must be between 1 and {MAX_INBOX_PAGE}")
        position = decode_cursor(cursor) if cursor is not None else None
        if filters.probe_bodies:
            # The caller refuses these for metadata-only accounts; never probe them here.
            accounts = [a for a in accounts if a.full]
        if not accounts:
            return InboxPage(threads=[], next_cursor=None)
        return read_retrying(
            self._read, lambda conn: self._page(conn, accounts, filters, limit, position)
        )

    def _folders(
        self, conn: Connection, accounts: Sequence[ScopeAccount], folder: str | None
    ) -> list[int]:
        ids = [a.id for a in accounts]
        query = select(FolderRow.id).where(FolderRow.account_id.in_(ids))
        text = (folder or "inbox").strip().lower()
        if text.isascii() and text.isdigit():
            found = conn.scalars(query.where(FolderRow.id == int(text))).all()
            if not found:
                raise NotFound(f"no folder {text} in this inbox")
            return [int(f) for f in found]
        if text not in FOLDER_ROLES:
            raise ConfigError(
                f"folder must be a folder id or one of {', '.join(FOLDER_ROLES)}; got {folder!r}"
            )
        return [int(f) for f in conn.scalars(query.where(FolderRow.role == text)).all()]

    def _page(
        self,
        conn: Connection,
        accounts: Sequence[ScopeAccount],
        filters: InboxFilters,
        limit: int,
        position: tuple[datetime, int] | None,
    ) -> InboxPage:
        folders = self._folders(conn, accounts, filters.folder)
        if not folders:
            return InboxPage(threads=[], next_cursor=None)
        drive: _Drive = (
            "contact" if filters.contact_id is not None else
            "deal" if filters.deal_id is not None else "folder"
        )  # fmt: skip
        shape = (
            drive,
            filters.unread,
            filters.starred,
            filters.has_attachment,
            filters.contact_id is not None and drive != "contact",
            filters.deal_id is not None and drive != "deal",
        )
        params: dict[str, Any] = {
            "folders": folders,
            "accounts": [a.id for a in accounts],
            "contact_id": filters.contact_id,
            "deal_id": filters.deal_id,
        }
        if position is not None:
            params.update(pos_at=position[0], pos_id=position[1])
        sources = folders if drive == "folder" else [
            filters.contact_id if drive == "contact" else filters.deal_id
        ]  # fmt: skip
        candidates: list[_Candidate] = []
        # How far down every walk is known complete: nothing above it is missing.
        complete_to: tuple[datetime, int] | None = None
        want = limit + 1
        for source in sources:
            run = {**params, "drive_id": source}
            last = conn.execute(
                self._statement("scan", shape, position is not None, False),
                {**run, "skip": self.scan_rows - 1},
            ).first()
            floor = None if last is None else (_required(last[0]), int(last[1]))
            if floor is not None:
                run.update(floor_at=floor[0], floor_id=floor[1])
            rows = conn.execute(
                self._statement("page", shape, position is not None, floor is not None),
                {**run, "lim": want},
            ).all()
            found = [_candidate(r) for r in rows]
            candidates.extend(found)
            bound = found[-1].key if len(found) == want else floor
            if bound is not None and (complete_to is None or bound > complete_to):
                complete_to = bound
        candidates.sort(key=lambda c: c.key, reverse=True)
        chosen: list[_Candidate] = []
        threads_seen: set[int] = set()
        for candidate in candidates:
            if complete_to is not None and candidate.key < complete_to:
                break
            if candidate.thread_id not in threads_seen:  # a message filed twice in a folder
                threads_seen.add(candidate.thread_id)
                chosen.append(candidate)
        next_cursor: str | None
        if len(chosen) > limit:
            chosen = chosen[:limit]
            next_cursor = encode_cursor(*chosen[-1].key)
        elif complete_to is not None:
            next_cursor = encode_cursor(*complete_to)
        else:
            next_cursor = None
        return InboxPage(threads=self._threads(conn, accounts, chosen), next_cursor=next_cursor)

    # -- the page's threads --------------------------------------------------------------------

    def _threads(
        self, conn: Connection, accounts: Sequence[ScopeAccount], chosen: list[_Candidate]
    ) -> list[InboxThread]:
        if not chosen:
            return []
        ids = [c.thread_id for c in chosen]
        by_account = {a.id: a for a in accounts}
        counts = {
            int(tid): (str(subject or ""), int(n), int(unread or 0), bool(starred), bool(att))
            for tid, subject, n, unread, starred, att in conn.execute(
                self._details("counts"), {"threads": ids}
            )
        }
        participants = self._participants(conn, ids)
        full_ids = [c.thread_id for c in chosen if by_account[c.account_id].full]
        chips = self._chips(conn, full_ids) if full_ids else {}
        out = []
        for c in chosen:
            subject, n, unread, starred, attachment = counts.get(
                c.thread_id, (c.subject, 0, 0, False, False)
            )
            account = by_account[c.account_id]
            contacts, deals = chips.get(c.thread_id, ((), ()))
            out.append(
                InboxThread(
                    thread_id=c.thread_id,
                    account_id=account.id,
                    account=account.name,
                    subject=subject or c.subject,
                    message_count=n,
                    unread_count=unread,
                    starred=starred,
                    has_attachments=attachment if account.full else None,
                    participants=participants.get(c.thread_id, ()),
                    latest_message_id=c.message_id,
                    latest_at=c.sort_at,
                    date=c.date,
                    snippet=c.snippet if account.full else None,
                    contacts=contacts if account.full else (),
                    deals=deals if account.full else (),
                    full=account.full,
                )
            )
        return out

    def _details(self, what: str) -> Any:
        found = self._statements.get(("details", what))
        if found is not None:
            return found
        threads: Any = bindparam("threads", expanding=True)
        live = (_M.thread_id.in_(threads), _M.state != "deleted", _M.gone_from_mailbox_at.is_(None))
        if what == "counts":
            one = literal(1)
            found = (
                select(
                    ThreadRow.id,
                    ThreadRow.subject,
                    func.count(_M.id),
                    func.sum(case((_flag(_M.flags, "Seen"), 0), else_=one)),
                    func.max(case((_flag(_M.flags, "Flagged"), one), else_=0)),
                    func.max(case((_has_attachment(_M), one), else_=0)),
                )
                .join(_M, _M.thread_id == ThreadRow.id)
                .where(*live)
                .group_by(ThreadRow.id, ThreadRow.subject)
            )
        elif what == "participants":
            ranked = (
                select(
                    _M.thread_id,
                    _M.from_name,
                    _M.from_email,
                    cast(_M.to_addrs, Text).label("to_addrs"),
                    func.row_number()
                    .over(partition_by=_M.thread_id, order_by=(_M.sort_at.desc(), _M.id.desc()))
                    .label("rank"),
                )
                .where(*live)
                .subquery()
            )
            c = ranked.c
            found = (
                select(c.thread_id, c.from_name, c.from_email, c.to_addrs)
                .where(c.rank <= PARTICIPANT_MESSAGES)
                .order_by(c.thread_id, c.rank)
            )
        else:
            first_address = (
                select(func.min(ContactEmailRow.address))
                .where(ContactEmailRow.contact_id == ContactRow.id)
                .scalar_subquery()
            )
            contact_name = func.coalesce(func.nullif(ContactRow.name, ""), first_address, "")
            found = (
                select(_M.thread_id, _T.target_kind, _T.target_id, contact_name, DealRow.name)
                .select_from(_M)
                .join(_T, _T.message_id == _M.id)
                .outerjoin(
                    ContactRow, and_(_T.target_kind == "contact", ContactRow.id == _T.target_id)
                )
                .outerjoin(DealRow, and_(_T.target_kind == "deal", DealRow.id == _T.target_id))
                .where(_M.thread_id.in_(threads), _T.target_kind.in_(("contact", "deal")))
                .distinct()
                .order_by(_M.thread_id, _T.target_kind, _T.target_id)
            )
        self._statements[("details", what)] = found
        return found

    def _participants(self, conn: Connection, ids: list[int]) -> dict[int, tuple[AddressView, ...]]:
        found: dict[int, list[AddressView]] = {}
        seen: dict[int, set[str]] = {}
        for tid, from_name, from_email, to_text in conn.execute(
            self._details("participants"), {"threads": ids}
        ):
            people = found.setdefault(int(tid), [])
            known = seen.setdefault(int(tid), set())
            addresses = [(from_name, from_email)] + [
                (a.get("name"), a.get("email")) for a in json.loads(to_text or "[]") or ()
            ]
            for name, email in addresses:
                if not email or email.lower() in known or len(people) >= MAX_PARTICIPANTS:
                    continue
                known.add(email.lower())
                people.append(AddressView(name or None, email))
        return {tid: tuple(people) for tid, people in found.items()}

    def _chips(
        self, conn: Connection, ids: list[int]
    ) -> dict[int, tuple[tuple[LinkChip, ...], tuple[LinkChip, ...]]]:
        contacts: dict[int, list[LinkChip]] = {}
        deals: dict[int, list[LinkChip]] = {}
        for tid, kind, target, contact_name, deal_name in conn.execute(
            self._details("chips"), {"threads": ids}
        ):
            into = contacts if kind == "contact" else deals
            chips = into.setdefault(int(tid), [])
            name = contact_name if kind == "contact" else deal_name
            if len(chips) < MAX_CHIPS and name is not None:
                chips.append(LinkChip(int(target), str(name)))
        return {
            tid: (tuple(contacts.get(tid, ())), tuple(deals.get(tid, ())))
            for tid in set(contacts) | set(deals)
        }


def _required(value: datetime | str) -> datetime:
    return _when(value)


def _maybe(value: datetime | str | None) -> datetime | None:
    return None if value is None else _when(value)


def _candidate(row: Any) -> _Candidate:
    sort_at, message_id, thread_id, account_id, subject, snippet, date = row
    return _Candidate(
        sort_at=_required(sort_at),
        message_id=int(message_id),
        thread_id=int(thread_id),
        account_id=int(account_id),
        subject=subject or "",
        snippet=snippet or "",
        date=_maybe(date),
    )
