"""Notifications: who is told about which new message, and the reads of the API.

**The fan-out** (:meth:`NotificationStore.fan_out`) turns new ``messages`` rows into
``notifications`` rows (and webhook events, ``store.webhooks``) in the background, in one
transaction per pass that also records what it looked at, so a crash anywhere repeats a pass
at most and never twice creates a row (``UNIQUE(user_id, message_id)``; webhook deliveries
have their own key).

What was looked at: every message id at or below the watermark (``notify_fanout``), plus the
ids above it listed in ``notify_fanout_seen``. A pass reads messages above the watermark that
are not in that list, lowest id first. The watermark is not simply the highest id seen: on
PostgreSQL ids come from a sequence and two batches can commit out of order (the one with the
lower ids last), so the watermark only moves up to ids seen at least ``grace_seconds`` ago, and
a late batch is found by the next pass that rescans. (A batch whose transaction stays open
longer than the grace period is the one case that could be missed; an ingest transaction is
one batch of at most 8 MB.)

**Who is told**: the audience of the account the message was stored in
(:func:`~correspond.store.visibility.account_audience`: its owner, its team inbox's team, the
owner's teammates when shared, in full or as metadata only; an admin only through those
paths: an admin's power to see every account is not a subscription). The message must be
*received* (``direction`` inbound, not sent by the account) and *new*: it arrived at the
server (INTERNALDATE, else its Date) no earlier than the moment the account was added to
Correspond. A backfill, a wider window or a re-sync after a UIDVALIDITY change brings old mail
without announcing it; mail that arrives during the first backfill is announced. Migration
0011 starts the watermark at the newest message, so an upgrade announces nothing already
stored.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, delete, func, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from correspond.errors import NotFound
from correspond.store.engine import register_table_modules, unit_of_work
from correspond.store.message_tables import MessageRow, shown
from correspond.store.notify_tables import FanoutSeenRow, FanoutStateRow, NotificationRow
from correspond.store.tables import AccountRow, UserRow, utcnow
from correspond.store.visibility import (
    VIEWER_ID,
    read_audience,
    terms_for,
    terms_for_users,
)
from correspond.store.wakeups import send_wakeup

__all__ = [
    "FanoutResult",
    "Notification",
    "NotificationPage",
    "NotificationStore",
    "after_messages_deleted",
    "insert_ignoring_duplicates",
]


@dataclass(frozen=True)
class FanoutResult:
    """What one pass did: messages looked at, notifications and webhook deliveries made."""

    examined: int
    notified: int
    events: int
    more: bool  # the pass stopped at its limit: run another at once


@dataclass(frozen=True)
class Notification:
    id: int
    user_id: int
    message_id: int
    account: str
    thread_id: int | None
    subject: str
    from_name: str | None
    from_email: str | None
    snippet: str
    message_date: datetime | None
    created_at: datetime
    read_at: datetime | None
    #: The user's access to the account when read: ``metadata`` (shared as metadata only)
    #: leaves the snippet out, as every read of a metadata-only account does.
    access: str = "full"


@dataclass(frozen=True)
class NotificationPage:
    items: list[Notification]
    next_cursor: int | None  # pass as ``before`` for the next (older) page
    unread: int


def insert_ignoring_duplicates(s: Session, table: Any, rows: list[dict[str, Any]]) -> int:
    """INSERT ``rows``, skipping any that a unique constraint already holds; rows added."""
    if not rows:
        return 0
    dialect = s.get_bind().dialect.name
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(table).on_conflict_do_nothing()
    else:
        stmt = sqlite.insert(table).on_conflict_do_nothing()
    # RETURNING lists only the rows really added (a conflict returns nothing), in one
    # statement for the lot (SQLAlchemy's "insertmanyvalues").
    key = next(iter(table.primary_key.columns))
    return len(s.execute(stmt.returning(key), rows).all())


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _is_new_mail(arrived: datetime | None, dated: datetime | None, since: datetime) -> bool:
    """Whether a message arrived after its account was added (see the module doc)."""
    when = _aware(arrived) or _aware(dated)
    return when is None or when >= since


_NOTIFICATION_COLUMNS = (
    NotificationRow.id,
    NotificationRow.user_id,
    NotificationRow.message_id,
    AccountRow.name,
    MessageRow.thread_id,
    MessageRow.subject,
    MessageRow.from_name,
    MessageRow.from_email,
    MessageRow.snippet,
    MessageRow.date,
    NotificationRow.created_at,
    NotificationRow.read_at,
)


def _notify_audience(s: Session, received: list[tuple[int, int]], now: datetime) -> int:
    """Notification rows for ``received`` (message id, account id): one per message and
    user of its account's audience (:func:`~correspond.store.visibility.account_audience`):
    the audience of the batch's accounts in one statement, the rows in one INSERT (rows
    already there are skipped). How many added. (An INSERT ... SELECT joining the audience
    to the messages cost a third more on SQLite: the rule's subqueries ran per message.)"""
    if not received:
        return 0
    followers: dict[int, list[int]] = {}
    for account_id, user_id, _access in read_audience(s, {a for _, a in received}):
        followers.setdefault(account_id, []).append(user_id)
    rows = [
        {"user_id": user_id, "message_id": message_id, "account_id": account_id, "created_at": now}
        for message_id, account_id in received
        for user_id in sorted(followers.get(account_id, ()))
    ]
    return insert_ignoring_duplicates(s, NotificationRow.__table__, rows)


def _notification(row: Any) -> Notification:
    access = str(row[12])
    return Notification(
        id=row[0],
        user_id=row[1],
        message_id=row[2],
        account=row[3],
        thread_id=row[4],
        subject=row[5] or "",
        from_name=row[6],
        from_email=row[7],
        snippet=(row[8] or "") if access == "full" else "",
        message_date=_aware(row[9]),
        created_at=_aware(row[10]) or utcnow(),
        read_at=_aware(row[11]),
        access=access,
    )


def _select_notifications(access: ColumnElement[str]) -> Any:
    """Notifications with their message and account, and ``access``: the reader's level
    (the rule's, from the caller's terms)."""
    return (
        select(*_NOTIFICATION_COLUMNS, access)
        .join(MessageRow, MessageRow.id == NotificationRow.message_id)
        .join(AccountRow, AccountRow.id == NotificationRow.account_id)
        .where(shown(MessageRow.state))
    )


def after_messages_deleted(s: Session) -> None:
    """In the transaction that deleted messages (an account removed): SQLite gives the next
    message ``max(id) + 1``, so once the newest rows are gone their ids come back, and the
    fan-out must not take them for ids it has looked at. PostgreSQL's sequence never reuses an
    id: nothing to do there."""
    if s.get_bind().dialect.name != "sqlite":
        return
    s.flush()
    newest = s.execute(select(func.coalesce(func.max(MessageRow.id), 0))).scalar_one()
    s.execute(
        update(FanoutStateRow).where(FanoutStateRow.watermark > newest).values(watermark=newest)
    )
    s.execute(delete(FanoutSeenRow).where(FanoutSeenRow.message_id > newest))


class NotificationStore:
    """Notifications in the store's database. Thread-safe: one session per call."""

    def __init__(self, engine: Engine) -> None:
        register_table_modules()
        self._engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    # -- the fan-out ---------------------------------------------------------------------------

    def newest_message_id(self) -> int:
        """The highest message id stored (0 when none): a cheap "anything new?" check."""
        with unit_of_work(self._sessions) as s:
            return int(s.execute(select(func.coalesce(func.max(MessageRow.id), 0))).scalar_one())

    def fan_out(
        self,
        *,
        grace_seconds: float = 60.0,
        limit: int = 500,
        now: datetime | None = None,
        rescan: bool = True,
    ) -> FanoutResult:
        """One pass over the messages not yet looked at (see the module doc). Without
        ``rescan`` only ids above the highest one seen are read (the cheap pass that runs on
        every wake-up); a rescan also looks below it, for batches that committed late."""
        from correspond.store.webhooks import (
            MessageEvent,
            queue_message_events,
        )

        now = now or utcnow()
        if not self._work_waiting(now - timedelta(seconds=grace_seconds), rescan=rescan):
            return FanoutResult(examined=0, notified=0, events=0, more=False)
        with unit_of_work(self._sessions) as s:
            # Writing first takes the lock: on SQLite the write lock (and a fresh snapshot), on
            # PostgreSQL this row's lock, so two passes (two processes) run one after the other.
            s.execute(update(FanoutStateRow).where(FanoutStateRow.id == 1).values(id=1))
            watermark = s.execute(
                select(FanoutStateRow.watermark).where(FanoutStateRow.id == 1)
            ).scalar_one_or_none()
            if watermark is None:  # a database whose row was removed by hand: start afresh
                watermark = int(
                    s.execute(select(func.coalesce(func.max(MessageRow.id), 0))).scalar_one()
                )
                s.add(FanoutStateRow(id=1, watermark=watermark))
            seen = select(FanoutSeenRow.message_id).where(FanoutSeenRow.message_id == MessageRow.id)
            start = watermark
            if not rescan:
                highest = s.execute(select(func.max(FanoutSeenRow.message_id))).scalar_one()
                start = max(watermark, highest or 0)
            rows = s.execute(
                select(
                    MessageRow.id,
                    MessageRow.account_id,
                    MessageRow.direction,
                    MessageRow.internaldate,
                    MessageRow.date,
                    MessageRow.thread_id,
                    MessageRow.subject,
                    MessageRow.from_email,
                    AccountRow.owner_id,
                    AccountRow.created_at,
                    AccountRow.name,
                )
                .join(AccountRow, AccountRow.id == MessageRow.account_id)
                .where(MessageRow.id > start, ~seen.exists())
                .order_by(MessageRow.id)
                .limit(limit)
            ).all()
            received: list[tuple[int, int]] = []  # (message id, account id)
            events: list[MessageEvent] = []
            for r in rows:
                if not _is_new_mail(r.internaldate, r.date, _aware(r.created_at) or now):
                    continue
                inbound = r.direction == "inbound"
                if inbound:
                    received.append((r.id, r.account_id))
                events.append(
                    MessageEvent(
                        "message.received" if inbound else "message.sent",
                        r.id,
                        r.account_id,
                        r.name,
                        {
                            "id": r.id,
                            "account": r.name,
                            "thread_id": r.thread_id,
                            "subject": r.subject or "",
                            "from": r.from_email,
                            "date": r.date.isoformat() if r.date else None,
                        },
                    )
                )
            notified = _notify_audience(s, received, now)
            queued = queue_message_events(s, events, now=now, dedupe=True)
            insert_ignoring_duplicates(
                s,
                FanoutSeenRow.__table__,
                [{"message_id": r.id, "seen_at": now} for r in rows],
            )
            # Move the watermark up to what was seen long enough ago (late commits: module doc).
            settled = s.execute(
                select(func.max(FanoutSeenRow.message_id)).where(
                    FanoutSeenRow.seen_at <= now - timedelta(seconds=grace_seconds)
                )
            ).scalar_one_or_none()
            if settled is not None and settled > watermark:
                s.execute(
                    update(FanoutStateRow).where(FanoutStateRow.id == 1).values(watermark=settled)
                )
                s.execute(delete(FanoutSeenRow).where(FanoutSeenRow.message_id <= settled))
            if notified or queued:
                send_wakeup(s)  # other API processes push the new notifications too
            return FanoutResult(
                examined=len(rows), notified=notified, events=queued, more=len(rows) >= limit
            )

    def _work_waiting(self, settled_before: datetime, *, rescan: bool) -> bool:
        """Whether a pass would do anything, read without a write transaction (a commit that
        writes costs a sync on SQLite, and most wake-ups find nothing)."""
        with unit_of_work(self._sessions) as s:
            watermark = s.execute(
                select(FanoutStateRow.watermark).where(FanoutStateRow.id == 1)
            ).scalar_one_or_none()
            if watermark is None:
                return True
            start = watermark
            if not rescan:
                highest = s.execute(select(func.max(FanoutSeenRow.message_id))).scalar_one()
                start = max(watermark, highest or 0)
            seen = select(FanoutSeenRow.message_id).where(FanoutSeenRow.message_id == MessageRow.id)
            new = s.execute(
                # ORDER BY id: the primary key's index range, whatever the estimate for start.
                select(MessageRow.id)
                .where(MessageRow.id > start, ~seen.exists())
                .order_by(MessageRow.id)
                .limit(1)
            ).first()
            if new is not None:
                return True
            settled = s.execute(
                select(FanoutSeenRow.message_id)
                .where(FanoutSeenRow.seen_at <= settled_before)
                .order_by(FanoutSeenRow.seen_at)
                .limit(1)
            ).first()
            return settled is not None

    def fanout_pending(self) -> bool:
        """Whether seen ids wait above the watermark (a later pass still has to settle them)."""
        with unit_of_work(self._sessions) as s:
            return s.execute(select(FanoutSeenRow.message_id).limit(1)).first() is not None

    # -- reads and marks -------------------------------------------------------------------------

    @staticmethod
    def _rule(user_id: int, is_admin: bool) -> tuple[ColumnElement[bool], ColumnElement[str]]:
        """The WHERE for notifications of ``user_id`` on accounts they may still see, and
        their access level: the one visibility rule (:mod:`correspond.store.visibility`)
        over the joined ``accounts`` row, with the viewer bound here."""
        mine = NotificationRow.user_id == user_id
        if is_admin:
            return mine, literal("full")
        terms = terms_for("member")
        bound = {VIEWER_ID: user_id}
        return and_(mine, terms.visible.params(bound)), terms.level.params(bound)

    def page(
        self,
        user_id: int,
        *,
        is_admin: bool,
        unread_only: bool = False,
        before: int | None = None,
        limit: int = 50,
    ) -> NotificationPage:
        """Newest first; ``before`` is the cursor of the previous page."""
        with unit_of_work(self._sessions) as s:
            visible, access = self._rule(user_id, is_admin)
            query = _select_notifications(access).where(visible)
            if unread_only:
                query = query.where(NotificationRow.read_at.is_(None))
            if before is not None:
                query = query.where(NotificationRow.id < before)
            rows = s.execute(query.order_by(NotificationRow.id.desc()).limit(limit + 1)).all()
            items = [_notification(r) for r in rows[:limit]]
            unread = self._unread(s, user_id, is_admin)
        next_cursor = items[-1].id if len(rows) > limit and items else None
        return NotificationPage(items=items, next_cursor=next_cursor, unread=unread)

    def _unread(self, s: Session, user_id: int, is_admin: bool) -> int:
        return int(
            s.execute(
                select(func.count())
                .select_from(NotificationRow)
                .join(AccountRow, AccountRow.id == NotificationRow.account_id)
                .join(MessageRow, MessageRow.id == NotificationRow.message_id)
                .where(
                    self._rule(user_id, is_admin)[0],
                    NotificationRow.read_at.is_(None),
                    shown(MessageRow.state),
                )
            ).scalar_one()
        )

    def unread_count(self, user_id: int, *, is_admin: bool) -> int:
        with unit_of_work(self._sessions) as s:
            return self._unread(s, user_id, is_admin)

    def mark_read(self, user_id: int, notification_id: int, *, is_admin: bool) -> Notification:
        """Mark one of the user's notifications read (NotFound for anyone else's)."""
        with unit_of_work(self._sessions) as s:
            visible, access = self._rule(user_id, is_admin)
            found = s.execute(
                _select_notifications(access).where(visible, NotificationRow.id == notification_id)
            ).one_or_none()
            if found is None:
                raise NotFound(f"no notification with id {notification_id}")
            if found[11] is None:
                s.execute(
                    update(NotificationRow)
                    .where(NotificationRow.id == notification_id)
                    .values(read_at=utcnow())
                )
                found = s.execute(
                    _select_notifications(access).where(NotificationRow.id == notification_id)
                ).one()
            return _notification(found)

    def mark_all_read(self, user_id: int, *, up_to: int | None = None) -> int:
        """Mark every unread notification of the user read (up to id ``up_to``, so what
        arrived after the person looked stays unread); how many."""
        with unit_of_work(self._sessions) as s:
            query = update(NotificationRow).where(
                NotificationRow.user_id == user_id, NotificationRow.read_at.is_(None)
            )
            if up_to is not None:
                query = query.where(NotificationRow.id <= up_to)
            result = s.execute(query.values(read_at=utcnow()))
            return int(getattr(result, "rowcount", 0) or 0)

    def after(
        self, user_ids: Collection[int], after_id: int, limit: int = 500
    ) -> list[Notification]:
        """Notifications of any of ``user_ids`` with an id above ``after_id``, oldest first,
        on accounts each user may still see (the rule per row: :func:`~correspond.store.
        visibility.terms_for_users`): one query for every live stream of a process."""
        if not user_ids:
            return []
        terms = terms_for_users(NotificationRow.user_id, UserRow.role == "admin", UserRow.disabled)
        with unit_of_work(self._sessions) as s:
            rows = s.execute(
                _select_notifications(terms.level)
                .join(UserRow, UserRow.id == NotificationRow.user_id)
                .where(
                    NotificationRow.user_id.in_(sorted(user_ids)),
                    NotificationRow.id > after_id,
                    terms.visible,
                )
                .order_by(NotificationRow.id)
                .limit(limit)
            ).all()
            return [_notification(r) for r in rows]

    def for_user_after(
        self, user_id: int, after_id: int, *, is_admin: bool, limit: int = 500
    ) -> list[Notification]:
        """The user's notifications above ``after_id`` (a stream resumed by Last-Event-ID)."""
        with unit_of_work(self._sessions) as s:
            visible, access = self._rule(user_id, is_admin)
            rows = s.execute(
                _select_notifications(access)
                .where(visible, NotificationRow.id > after_id)
                .order_by(NotificationRow.id)
                .limit(limit)
            ).all()
            return [_notification(r) for r in rows]

    def latest_id(self) -> int:
        with unit_of_work(self._sessions) as s:
            return int(
                s.execute(select(func.coalesce(func.max(NotificationRow.id), 0))).scalar_one()
            )

    def user_roles(self, user_ids: Iterable[int]) -> dict[int, bool]:
        """Whether each (enabled) user is an admin; disabled users are left out."""
        ids = sorted(set(user_ids))
        if not ids:
            return {}
        with unit_of_work(self._sessions) as s:
            rows = s.execute(
                select(UserRow.id, UserRow.role).where(
                    UserRow.id.in_(ids), UserRow.disabled.is_(False)
                )
            ).all()
            return {r[0]: r[1] == "admin" for r in rows}
