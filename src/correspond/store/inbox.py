"""The inbox views: a person's own mailboxes, or a team's inboxes, as threads, newest first.

A page is a list of threads, each placed by its *latest message in the view*: the newest
message of the thread that passes every filter (in the chosen folders, not deleted (nor
archived in the CRM, in a view of Inbox folders) and not gone from the mailbox, unread /
starred / with an attachment / linked to the contact or deal when asked). The page is found
by walking an index newest first and keeping the messages that are the latest of their thread
in the view (a correlated ``NOT EXISTS`` over ``ix_messages_thread_sort``): no per-thread
columns to keep true on every write path, and nothing is read for threads off the page.

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

from collections.abc import Sequence
from dataclasses import dataclass, field
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
    any_,
    bindparam,
    case,
    cast,
    exists,
    func,
    literal,
    not_,
    select,
    true,
    tuple_,
    type_coerce,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import aliased

from correspond.errors import ConfigError, NotFound
from correspond.store.crm_tables import ContactEmailRow, ContactRow, DealRow, TimelineLinkRow
from correspond.store.engine import read_retrying, reading_engine
from correspond.store.message_queries import (
    SEARCH_SCAN_ROWS,
    AddressView,
    _json_values,
    _when,
    decode_cursor,
    encode_cursor,
)
from correspond.store.message_tables import (
    AttachmentRow,
    MessageLocationRow,
    MessageRow,
    ThreadRow,
    shown,
)
from correspond.store.tables import FOLDER_ROLES, AccountRow, FolderRow, UtcDateTime
from correspond.store.visibility import (
    VIEWER_ID,
    Viewer,
    viewer_kind,
    viewer_params,
    visible_accounts,
)

__all__ = [
    "DEFAULT_INBOX_PAGE",
    "LINKS_PER_MESSAGE",
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
#: Links of one message read for its thread's chips (PostgreSQL).
LINKS_PER_MESSAGE = 50

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
    #: Its folders in the view (none: nothing of it is listed).
    folders: tuple[int, ...] = ()
    #: Whether they are its Inbox-role folders: then ``archived`` messages are left out.
    inbox: bool = False


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
    # A LIMIT 1 scalar subquery, not EXISTS: PostgreSQL ran the EXISTS as a hashed subplan
    # over every attachment row (as in message lists); this is one index lookup per message.
    return (
        select(AttachmentRow.id)
        .where(AttachmentRow.message_id == m.id, AttachmentRow.inline.is_(False))
        .limit(1)
        .scalar_subquery()
        .is_not(None)
    )


def _linked(m: Any, kind: str, param: str) -> ColumnElement[bool]:
    # Its own alias: the page statement may walk timeline_links itself (auto-correlation).
    link = aliased(_T)
    return exists().where(
        link.message_id == m.id, link.target_kind == kind, link.target_id == _id(param)
    )


def _in_view(m: Any, shape: tuple[Any, ...]) -> list[ColumnElement[bool]]:
    """Whether message ``m`` (an alias of ``messages``) is in the view, but for its folder:
    not deleted (nor archived, in an Inbox view), not gone, and every filter of ``shape``."""
    _, unread, starred, attachment, contact, deal, inbox = shape
    # Archived in the CRM is out of the inbox even while its copy stays in the mailbox's
    # INBOX (toggle 4 off); an Archive or other folder's view still shows it.
    state = m.state == "active" if inbox else shown(m.state)
    terms: list[ColumnElement[bool]] = [state, m.gone_from_mailbox_at.is_(None)]
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


def _with_drive(shape: tuple[Any, ...]) -> tuple[Any, ...]:
    """``shape`` with the driving record's link as a filter (the walk implies it for the
    message it reads, not for the others of its thread)."""
    drive, unread, starred, attachment, contact, deal, inbox = shape
    return (
        drive,
        unread,
        starred,
        attachment,
        contact or drive == "contact",
        deal or drive == "deal",
        inbox,
    )


def _in_folders(m: Any) -> ColumnElement[bool]:
    loc = aliased(_L)
    return exists().where(
        loc.message_id == m.id, loc.folder_id.in_(bindparam("folders", expanding=True))
    )


def _build(kind: str, shape: tuple[Any, ...], after: bool, floor: bool | None) -> Select[Any]:
    """The statements that walk one driving index (``shape[0]``): ``scan`` finds the last
    entry a page may examine (``skip`` entries on); ``page`` reads the latest-in-view
    messages among the next ``scan_rows`` entries. On PostgreSQL (``floor`` None) those are
    a LIMIT-ed subquery, read lazily: a page that fills early reads no further. SQLite
    materialises such a subquery (all ``scan_rows`` entries, then a sort), so there the page
    walks the index itself down to ``floor_at``/``floor_id`` (``floor``: the scan step found
    one) and stops at ``lim``."""
    drive: _Drive = shape[0]
    if drive == "folder":
        at, mid = _L.sort_at, _L.message_id
        driving: ColumnElement[bool] = _L.folder_id == _id("drive_id")
    else:
        at, mid = _T.sort_at, _T.message_id
        driving = and_(_T.target_kind == drive, _T.target_id == _id("drive_id"))
    walk: Select[Any] = select(at.label("at"), mid.label("mid")).where(driving)
    if after:
        walk = walk.where(tuple_(at, mid) < tuple_(_at("pos_at"), _id("pos_id")))
    walk = walk.order_by(at.desc(), mid.desc())
    if kind == "scan":
        return walk.offset(bindparam("skip")).limit(1)
    if floor is None:
        entries = walk.limit(bindparam("scan_rows")).subquery("walk")
    else:
        if floor:
            walk = walk.where(tuple_(at, mid) >= tuple_(_at("floor_at"), _id("floor_id")))
        entries = walk.subquery("walk")
    newer = aliased(_M)
    later_in_view = (
        exists()
        .where(
            newer.thread_id == _M.thread_id,
            tuple_(newer.sort_at, newer.id) > tuple_(_M.sort_at, _M.id),
            # A newer message shadows this one only when it is in the view too: linked to
            # the record the walk is driven by as well.
            *_in_view(newer, _with_drive(shape)),
            _in_folders(newer),
        )
        .correlate(_M)
    )
    query: Select[Any] = (
        select(
            type_coerce(entries.c.at, Text).label("sort_at"),
            entries.c.mid,
            _M.thread_id,
            _M.account_id,
            _M.subject,
            _M.snippet,
            type_coerce(_M.date, Text).label("date"),
        )
        .select_from(entries)
        .join(_M, _M.id == entries.c.mid)
        .where(_M.thread_id.is_not(None), *_in_view(_M, shape), not_(later_in_view))
    )
    if drive != "folder":
        query = query.where(
            _M.account_id.in_(bindparam("accounts", expanding=True)), _in_folders(_M)
        )
    return query.order_by(entries.c.at.desc(), entries.c.mid.desc()).limit(bindparam("lim"))


def _scope_statement(viewer: Viewer, team: bool, named: bool, by_id: bool) -> Select[Any]:
    """The accounts of a view with the viewer's access and their folders of the view (an
    outer join: an account without one is still in scope, e.g. for ``?account=``)."""
    visible = visible_accounts(viewer)
    chosen = FolderRow.id == bindparam("folder", type_=BigInteger()) if by_id else (
        FolderRow.role == bindparam("folder", type_=Text())
    )  # fmt: skip
    query = (
        select(AccountRow.id, AccountRow.name, visible.c.access, FolderRow.id, FolderRow.role)
        .join(visible, visible.c.account_id == AccountRow.id)
        .outerjoin(FolderRow, and_(FolderRow.account_id == AccountRow.id, chosen))
    )
    if team:
        query = query.where(AccountRow.team_id == bindparam("team_id", type_=BigInteger()))
    elif not named:
        query = query.where(
            AccountRow.owner_id == bindparam(VIEWER_ID), AccountRow.team_id.is_(None)
        )
    if named:
        query = query.where(AccountRow.name == bindparam("account", type_=Text()))
    return query.order_by(AccountRow.id, FolderRow.id)


@dataclass(slots=True)
class _Details:
    subject: str
    messages: int
    unread: int
    starred: bool
    attachments: bool
    participants: list[AddressView] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)


def _per_thread(aggregate: Any) -> Any:
    return aggregate.over(partition_by=_M.thread_id)


def _among_threads(postgres: bool) -> ColumnElement[bool]:
    """``messages.thread_id`` is one of the page's threads (``threads``): on PostgreSQL one
    array parameter (``= ANY``), not fifty binds rendered, adapted and planned apart."""
    if postgres:
        return _M.thread_id == any_(bindparam("threads", type_=postgresql.ARRAY(BigInteger())))
    return _M.thread_id.in_(bindparam("threads", expanding=True))


def _details_statement(postgres: bool) -> Select[Any]:
    """Per live message of the threads (``threads``, expanding), newest first and at most
    ``PARTICIPANT_MESSAGES`` a thread: its From and To, and its thread's counts and marks
    (window aggregates over all the thread's live messages), and on its first row the
    thread's subject. Deleted and gone messages do not count."""
    one = literal(1)
    ranked = (
        select(
            _M.thread_id,
            _M.from_name,
            _M.from_email,
            cast(_M.to_addrs, Text).label("to_addrs"),
            func.count().over(partition_by=_M.thread_id).label("n"),
            func.sum(case((_flag(_M.flags, "Seen"), 0), else_=one))
            .over(partition_by=_M.thread_id)
            .label("unread"),
            func.max(case((_flag(_M.flags, "Flagged"), one), else_=0))
            .over(partition_by=_M.thread_id)
            .label("star"),
            func.max(case((_has_attachment(_M), one), else_=0))
            .over(partition_by=_M.thread_id)
            .label("att"),
            func.row_number()
            .over(partition_by=_M.thread_id, order_by=(_M.sort_at.desc(), _M.id.desc()))
            .label("rank"),
        )
        .where(_among_threads(postgres), shown(_M.state), _M.gone_from_mailbox_at.is_(None))
        .subquery("ranked")
    )
    c = ranked.c
    subject = select(ThreadRow.subject).where(ThreadRow.id == c.thread_id).scalar_subquery()
    return (
        select(
            c.thread_id,
            c.from_name,
            c.from_email,
            c.to_addrs,
            c.n,
            c.unread,
            c.star,
            c.att,
            case((c.rank == 1, subject), else_=None),
        )
        .where(c.rank <= PARTICIPANT_MESSAGES)
        .order_by(c.thread_id, c.rank)
    )


def _chips_statement(postgres: bool) -> Select[Any]:
    """The contacts and deals the threads' (``threads``) messages are linked to, by name.

    The page's messages come first and each looks up its own links (the unique index on
    ``timeline_links (message_id, target_kind, target_id)``): on PostgreSQL through a
    LATERAL subquery, as its planner would otherwise hash-join a sequential scan of every
    link (6.7 ms with 10,000 links, growing with them); SQLite does that lookup by itself."""
    kinds = ("contact", "deal")
    links: Any
    thread_id: Any
    kind: Any
    target: Any
    if postgres:
        page = select(_M.id, _M.thread_id).where(_among_threads(True)).subquery("page")
        found = (
            select(_T.target_kind, _T.target_id)
            .where(_T.message_id == page.c.id, _T.target_kind.in_(kinds))
            # The LIMIT (a bound too) keeps PostgreSQL from pulling the subquery up into a
            # plain join, which it would hash.
            .limit(LINKS_PER_MESSAGE)
            .lateral("found")
        )
        thread_id = page.c.thread_id
        links = page.join(found, true())
        kind, target = found.c.target_kind, found.c.target_id
    else:
        links = _M.__table__.join(_T.__table__, _T.message_id == _M.id)
        thread_id, kind, target = _M.thread_id, _T.target_kind, _T.target_id
    # Names by correlated lookups (the primary keys), one per link found: as joins,
    # PostgreSQL hashed all 100,000 contacts and 10,000 deals for a page's 300 links (64 ms of
    # a 77 ms statement at a million messages).
    first_address = (
        select(func.min(ContactEmailRow.address))
        .where(ContactEmailRow.contact_id == ContactRow.id)
        .scalar_subquery()
    )
    contact_name = case(
        (
            kind == "contact",
            select(func.coalesce(func.nullif(ContactRow.name, ""), first_address, ""))
            .where(ContactRow.id == target)
            .scalar_subquery(),
        ),
        else_=None,
    )
    deal_name = case(
        (kind == "deal", select(DealRow.name).where(DealRow.id == target).scalar_subquery()),
        else_=None,
    )
    query = select(thread_id, kind, target, contact_name, deal_name).select_from(links)
    if not postgres:
        query = query.where(_among_threads(False), _T.target_kind.in_(kinds))
    return query.distinct().order_by(thread_id, kind, target)


class InboxQueries:
    """Inbox pages over one engine (SQLite or PostgreSQL); statements built once per shape."""

    def __init__(self, engine: Engine, *, scan_rows: int = SEARCH_SCAN_ROWS) -> None:
        if scan_rows < 1:
            raise ConfigError("scan_rows must be at least 1")
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"
        self._read = reading_engine(engine)
        self.scan_rows = scan_rows
        self._statements: dict[tuple[Any, ...], Select[Any]] = {}

    def _statement(
        self, kind: str, shape: tuple[Any, ...], after: bool, floor: bool | None = None
    ) -> Any:
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
        folder: str | None = None,
    ) -> list[ScopeAccount]:
        """The accounts of a view, by the visibility rule, with their folders of the view
        (``folder``: a folder id, or a role; default ``inbox``): the team's inbox accounts
        (``team_id``) or the viewer's own personal ones; ``account`` narrows either to one
        (NotFound when the viewer may not see it, as for no such account). One statement."""
        text = (folder or "inbox").strip().lower()
        by_id = text.isascii() and text.isdigit()
        if not by_id and text not in FOLDER_ROLES:
            raise ConfigError(
                f"folder must be a folder id or one of {', '.join(FOLDER_ROLES)}; got {folder!r}"
            )
        if by_id and int(text) >= 2**63:
            raise NotFound(f"no folder {text} in this inbox")
        kind = (viewer_kind(viewer), team_id is not None, account is not None, by_id)
        query = self._statements.get(("scope", kind))
        if query is None:
            query = self._statements[("scope", kind)] = _scope_statement(viewer, *kind[1:])
        params: dict[str, Any] = {
            **viewer_params(viewer),
            "team_id": team_id,
            "account": account,
            "folder": int(text) if by_id else text,
        }
        with self._read.connect() as conn:
            rows = conn.execute(query, params).all()
        if account is not None and not rows:
            raise NotFound(f"no account named {account!r}")
        folders: dict[int, list[int]] = {}
        found: dict[int, tuple[str, bool]] = {}
        inbox: dict[int, bool] = {}
        for account_id, name, access, folder_id, role in rows:
            found[int(account_id)] = (str(name), str(access) == "full")
            folders.setdefault(int(account_id), [])
            inbox.setdefault(int(account_id), True)
            if folder_id is not None:
                folders[int(account_id)].append(int(folder_id))
                inbox[int(account_id)] = inbox[int(account_id)] and role == "inbox"
        if by_id and not any(folders.values()):
            raise NotFound(f"no folder {text} in this inbox")
        return [
            ScopeAccount(i, name, full, tuple(folders[i]), inbox[i] and bool(folders[i]))
            for i, (name, full) in found.items()
        ]

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

    def _page(
        self,
        conn: Connection,
        accounts: Sequence[ScopeAccount],
        filters: InboxFilters,
        limit: int,
        position: tuple[datetime, int] | None,
    ) -> InboxPage:
        folders = [f for a in accounts for f in a.folders]
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
            all(a.inbox for a in accounts if a.folders),
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
        after = position is not None
        for source in sources:
            run = {**params, "drive_id": source, "lim": want, "scan_rows": self.scan_rows}
            scan = {**run, "skip": self.scan_rows - 1}
            last: tuple[datetime, int] | None = None
            if self.postgres:
                rows = conn.execute(self._statement("page", shape, after), run).all()
            else:
                # SQLite: where the walk must stop first, then the page down to there.
                found_last = conn.execute(self._statement("scan", shape, after), scan).first()
                if found_last is not None:
                    last = _key(found_last)
                    run.update(floor_at=last[0], floor_id=last[1])
                page = self._statement("page", shape, after, last is not None)
                rows = conn.execute(page, run).all()
            found = [_candidate(r) for r in rows]
            candidates.extend(found)
            bound: tuple[datetime, int] | None
            if len(found) == want:
                bound = found[-1].key  # more may follow: known complete down to here
            elif not self.postgres:
                bound = last
            else:
                # Short: the walk ended, or it examined as many entries as a page may and
                # the rest lies after the last of them.
                found_last = conn.execute(self._statement("scan", shape, after), scan).first()
                bound = (
                    None if found_last is None else (_required(found_last[0]), int(found_last[1]))
                )
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
        details = self._details(conn, ids)
        full_ids = [c.thread_id for c in chosen if by_account[c.account_id].full]
        chips = self._chips(conn, full_ids) if full_ids else {}
        out = []
        for c in chosen:
            found = details.get(c.thread_id)
            account = by_account[c.account_id]
            contacts, deals = chips.get(c.thread_id, ((), ()))
            out.append(
                InboxThread(
                    thread_id=c.thread_id,
                    account_id=account.id,
                    account=account.name,
                    subject=(found.subject if found else "") or c.subject,
                    message_count=found.messages if found else 0,
                    unread_count=found.unread if found else 0,
                    starred=found.starred if found else False,
                    has_attachments=(found.attachments if found else False)
                    if account.full
                    else None,
                    participants=tuple(found.participants) if found else (),
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

    def _statement_of(self, what: str) -> Any:
        found = self._statements.get(("details", what))
        if found is None:
            found = self._statements[("details", what)] = (
                _details_statement(self.postgres)
                if what == "details"
                else _chips_statement(self.postgres)
            )
        return found

    def _details(self, conn: Connection, ids: list[int]) -> dict[int, _Details]:
        """Counts, marks, subject and participants of the threads ``ids``: one statement."""
        out: dict[int, _Details] = {}
        rows = conn.execute(self._statement_of("details"), {"threads": ids}).all()
        addresses = _json_values([r[3] for r in rows])
        for row, to in zip(rows, addresses, strict=True):
            tid, from_name, from_email, _, n, unread, starred, attachments, subject = row
            found = out.get(int(tid))
            if found is None:
                found = out[int(tid)] = _Details(
                    subject=str(subject or ""),
                    messages=int(n),
                    unread=int(unread or 0),
                    starred=bool(starred),
                    attachments=bool(attachments),
                )
            pairs = [(from_name, from_email)]
            pairs += [(a.get("name"), a.get("email")) for a in to or ()]
            for name, email in pairs:
                if len(found.participants) >= MAX_PARTICIPANTS:
                    break
                if email and email.lower() not in found.seen:
                    found.seen.add(email.lower())
                    found.participants.append(AddressView(name or None, email))
        return out

    def _chips(
        self, conn: Connection, ids: list[int]
    ) -> dict[int, tuple[tuple[LinkChip, ...], tuple[LinkChip, ...]]]:
        contacts: dict[int, list[LinkChip]] = {}
        deals: dict[int, list[LinkChip]] = {}
        for tid, kind, target, contact_name, deal_name in conn.execute(
            self._statement_of("chips"), {"threads": ids}
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


def _key(row: Any) -> tuple[datetime, int]:
    return (_required(row[0]), int(row[1]))


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
