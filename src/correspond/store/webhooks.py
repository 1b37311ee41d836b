"""Webhooks: subscriptions, the events they are owed, and the delivery log.

Events are written as ``webhook_deliveries`` rows (one per subscribed webhook) in the same
transaction as what they report, or by the fan-out pass that finds it (``store.notifications``),
so an event is never lost to a crash and never queued twice (``dedupe_key``). The sender
(``correspond.notify.WebhookSender``) claims due rows, posts them and records each attempt.

A webhook belongs to the user who made it and hears only about accounts that user may see
(the visibility rule: an admin every account; a member their own, their teams' inboxes and
what teammates share with them, in full or as metadata: payloads never carry bodies). Its
secret (``whsec_...``) is sealed with the store's key like an account password and shown
once, when made.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from correspond.errors import NotFound
from correspond.rules.webhooks import EVENT_TYPES, SECRET_PREFIX
from correspond.store.engine import register_table_modules, unit_of_work
from correspond.store.message_tables import MessageLocationRow, MessageRow
from correspond.store.notify_tables import (
    FanoutStateRow,
    WebhookAccountStateRow,
    WebhookDeliveryRow,
    WebhookRow,
)
from correspond.store.secrets import SecretBox
from correspond.store.tables import AccountRow, UserRow, utcnow
from correspond.store.visibility import read_audience
from correspond.store.wakeups import send_wakeup

__all__ = [
    "Delivery",
    "DueDelivery",
    "MessageEvent",
    "Webhook",
    "WebhookStore",
    "queue_account_state_changes",
    "queue_changed_messages",
    "queue_message_events",
]


@dataclass(frozen=True)
class MessageEvent:
    """An event about one message, for the webhooks that may see its account."""

    event_type: str
    message_id: int
    account_id: int
    account: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Webhook:
    id: int
    user_id: int
    url: str
    description: str
    events: list[str]
    created_at: datetime


@dataclass(frozen=True)
class Delivery:
    id: int
    webhook_id: int
    event_id: str
    event_type: str
    status: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    response_status: int | None
    last_error: str


@dataclass(frozen=True)
class DueDelivery:
    """A claimed delivery with what the sender needs to post it."""

    id: int
    webhook_id: int
    event_id: str
    url: str
    secret: str
    payload: str
    attempts: int
    created_at: datetime


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and base64 of 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode("ascii")


def _payload(event_type: str, now: datetime, data: dict[str, Any]) -> str:
    return json.dumps(
        {"type": event_type, "timestamp": now.isoformat(), "data": data},
        separators=(",", ":"),
        sort_keys=True,
    )


def _subscribers(s: Session) -> list[tuple[int, int, bool, frozenset[str]]]:
    """(webhook id, owner id, owner is admin, event types) of webhooks of enabled users."""
    rows = s.execute(
        select(WebhookRow.id, WebhookRow.user_id, UserRow.role, WebhookRow.events)
        .join(UserRow, UserRow.id == WebhookRow.user_id)
        .where(UserRow.disabled.is_(False))
    ).all()
    return [(r[0], r[1], r[2] == "admin", frozenset(r[3] or ())) for r in rows]


def _insert_ignoring(s: Session, table: Any, rows: list[dict[str, Any]]) -> int:
    from correspond.store.notifications import insert_ignoring_duplicates

    return insert_ignoring_duplicates(s, table, rows)


def _insert_deliveries(s: Session, rows: list[dict[str, Any]]) -> int:
    return _insert_ignoring(s, WebhookDeliveryRow.__table__, rows)


def _delivery_row(
    webhook_id: int, event_type: str, payload: str, now: datetime, dedupe_key: str | None
) -> dict[str, Any]:
    return {
        "webhook_id": webhook_id,
        "event_id": "msg_" + secrets.token_urlsafe(18),
        "event_type": event_type,
        "dedupe_key": dedupe_key,
        "payload": payload,
        "status": "pending",
        "attempts": 0,
        "created_at": now,
        "next_attempt_at": now,
        "last_error": "",
    }


def queue_message_events(
    s: Session, events: Sequence[MessageEvent], *, now: datetime, dedupe: bool
) -> int:
    """Queue ``events`` for every webhook subscribed to their type that may see their
    account, in the caller's transaction; ``dedupe``: an event of the same type about the same
    message is queued once per webhook (the fan-out's message.received / message.sent)."""
    if not events:
        return 0
    hooks = [h for h in _subscribers(s) if h[3] & {e.event_type for e in events}]
    if not hooks:
        return 0
    # Who may see each account: the audience of the visibility rule (owner, team inbox
    # members, teammates it is shared with, in full or as metadata). A payload carries
    # metadata only (ids, subject, sender, date, flags, state; never a body or snippet), so a
    # metadata-only viewer's webhook gets the same one. An admin's webhook hears of every
    # account: an admin may see them all, and an integration is what they made it for.
    followers: set[tuple[int, int]] = set()
    if not all(admin for _, _, admin, _ in hooks):
        followers = {(a, u) for a, u, _ in read_audience(s, {e.account_id for e in events})}
    rows: list[dict[str, Any]] = []
    for event in events:
        payload = _payload(event.event_type, now, event.data)
        key = f"{event.event_type}:{event.message_id}" if dedupe else None
        for hook_id, user_id, admin, types in hooks:
            if event.event_type in types and (admin or (event.account_id, user_id) in followers):
                rows.append(_delivery_row(hook_id, event.event_type, payload, now, key))
    return _insert_deliveries(s, rows)


def queue_changed_messages(
    s: Session, updated: Collection[int], gone: Collection[int], *, now: datetime | None = None
) -> int:
    """message.updated for ``updated`` (flags changed) and message.deleted for those of
    ``gone`` that have no location left, in the caller's transaction (the live changes)."""
    if not updated and not gone:
        return 0
    wanted = {t for h in _subscribers(s) for t in h[3]}
    if not wanted & {"message.updated", "message.deleted"}:
        return 0  # no subscriber: one cheap query per change batch
    now = now or utcnow()
    events: list[MessageEvent] = []
    ids = sorted(set(updated) | set(gone))
    for start in range(0, len(ids), 500):
        part = ids[start : start + 500]
        rows = s.execute(
            select(
                MessageRow.id,
                MessageRow.account_id,
                AccountRow.name,
                MessageRow.flags,
                MessageRow.thread_id,
                select(MessageLocationRow.id)
                .where(MessageLocationRow.message_id == MessageRow.id)
                .exists()
                .label("located"),
            )
            .join(AccountRow, AccountRow.id == MessageRow.account_id)
            .where(MessageRow.id.in_(part))
        ).all()
        for r in rows:
            base = {"id": r.id, "account": r.name, "thread_id": r.thread_id}
            if r.id in gone and not r.located:
                events.append(MessageEvent("message.deleted", r.id, r.account_id, r.name, base))
            elif r.id in updated:
                data = {**base, "flags": sorted(r.flags or [])}
                events.append(MessageEvent("message.updated", r.id, r.account_id, r.name, data))
    return queue_message_events(s, events, now=now, dedupe=False)


def queue_account_state_changes(s: Session, *, now: datetime | None = None) -> int:
    """account.state_changed for every account whose state differs from the last one told
    (polled by the fan-out pass: a change is reported with the state it was seen in)."""
    now = now or utcnow()
    rows = s.execute(
        select(
            AccountRow.id,
            AccountRow.name,
            AccountRow.state,
            AccountRow.state_detail,
            WebhookAccountStateRow.state,
        ).outerjoin(WebhookAccountStateRow, WebhookAccountStateRow.account_id == AccountRow.id)
    ).all()
    events: list[MessageEvent] = []
    for account_id, name, state, detail, told in rows:
        if told == state:
            continue
        if told is None:
            _insert_ignoring(
                s, WebhookAccountStateRow.__table__, [{"account_id": account_id, "state": state}]
            )
        else:
            s.execute(
                update(WebhookAccountStateRow)
                .where(WebhookAccountStateRow.account_id == account_id)
                .values(state=state)
            )
        data = {"account": name, "state": state, "previous_state": told, "detail": detail}
        events.append(MessageEvent("account.state_changed", 0, account_id, name, data))
    return queue_message_events(s, events, now=now, dedupe=False)


def _webhook(row: WebhookRow) -> Webhook:
    return Webhook(
        id=row.id,
        user_id=row.user_id,
        url=row.url,
        description=row.description,
        events=list(row.events or []),
        created_at=row.created_at,
    )


def _delivery(row: WebhookDeliveryRow) -> Delivery:
    return Delivery(
        id=row.id,
        webhook_id=row.webhook_id,
        event_id=row.event_id,
        event_type=row.event_type,
        status=row.status,
        attempts=row.attempts,
        created_at=row.created_at,
        next_attempt_at=row.next_attempt_at,
        last_attempt_at=row.last_attempt_at,
        delivered_at=row.delivered_at,
        response_status=row.response_status,
        last_error=row.last_error,
    )


class WebhookStore:
    """Webhooks and their deliveries in the store's database. Thread-safe."""

    def __init__(self, engine: Engine, secret_box: SecretBox) -> None:
        register_table_modules()
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._box = secret_box

    def create(
        self, user_id: int, url: str, events: Sequence[str], description: str = ""
    ) -> tuple[Webhook, str]:
        """A new webhook and its secret (shown to the caller once)."""
        unknown = set(events) - set(EVENT_TYPES)
        if unknown or not events:
            raise ValueError(f"events must be some of {', '.join(EVENT_TYPES)}")
        secret = new_secret()
        with unit_of_work(self._sessions) as s:
            row = WebhookRow(
                user_id=user_id,
                url=url,
                description=description,
                events=sorted(set(events)),
                secret_encrypted=self._box.encrypt(secret),
                created_at=utcnow(),
            )
            s.add(row)
            s.flush()
            return _webhook(row), secret

    def webhooks(self, user_id: int | None = None) -> list[Webhook]:
        """The user's webhooks (every webhook for ``None``)."""
        with unit_of_work(self._sessions) as s:
            query = select(WebhookRow).order_by(WebhookRow.id)
            if user_id is not None:
                query = query.where(WebhookRow.user_id == user_id)
            return [_webhook(r) for r in s.scalars(query)]

    def get(self, webhook_id: int, *, user_id: int | None) -> Webhook:
        """One webhook of ``user_id`` (any user's for ``None``); NotFound otherwise."""
        with unit_of_work(self._sessions) as s:
            row = s.get(WebhookRow, webhook_id)
            if row is None or (user_id is not None and row.user_id != user_id):
                raise NotFound(f"no webhook with id {webhook_id}")
            return _webhook(row)

    def delete(self, webhook_id: int, *, user_id: int | None) -> None:
        self.get(webhook_id, user_id=user_id)
        with unit_of_work(self._sessions) as s:
            s.execute(delete(WebhookDeliveryRow).where(WebhookDeliveryRow.webhook_id == webhook_id))
            s.execute(delete(WebhookRow).where(WebhookRow.id == webhook_id))

    def deliveries(
        self, webhook_id: int, *, before: int | None = None, limit: int = 50
    ) -> tuple[list[Delivery], int | None]:
        """The webhook's delivery log, newest first, and the cursor of the next page."""
        with unit_of_work(self._sessions) as s:
            query = select(WebhookDeliveryRow).where(WebhookDeliveryRow.webhook_id == webhook_id)
            if before is not None:
                query = query.where(WebhookDeliveryRow.id < before)
            rows = list(s.scalars(query.order_by(WebhookDeliveryRow.id.desc()).limit(limit + 1)))
        items = [_delivery(r) for r in rows[:limit]]
        return items, (items[-1].id if len(rows) > limit and items else None)

    def claim_due(self, *, now: datetime, limit: int, lease_seconds: float) -> list[DueDelivery]:
        """Up to ``limit`` pending deliveries due by ``now``, oldest first, each pushed
        ``lease_seconds`` ahead so another sender process leaves them alone meanwhile (a
        sender that dies leaves them due again after the lease)."""
        with unit_of_work(self._sessions) as s:
            query = (
                select(WebhookDeliveryRow, WebhookRow.url, WebhookRow.secret_encrypted)
                .join(WebhookRow, WebhookRow.id == WebhookDeliveryRow.webhook_id)
                .where(
                    WebhookDeliveryRow.status == "pending",
                    WebhookDeliveryRow.next_attempt_at <= now,
                )
                .order_by(WebhookDeliveryRow.next_attempt_at, WebhookDeliveryRow.id)
                .limit(limit)
            )
            if s.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True, of=WebhookDeliveryRow)
            else:
                # SQLite: take the write lock before reading, so two senders claim in turn.
                s.execute(update(FanoutStateRow).where(FanoutStateRow.id == 1).values(id=1))
            due: list[DueDelivery] = []
            for row, url, sealed in s.execute(query).all():
                row.next_attempt_at = now + timedelta(seconds=lease_seconds)
                due.append(
                    DueDelivery(
                        id=row.id,
                        webhook_id=row.webhook_id,
                        event_id=row.event_id,
                        url=url,
                        secret=self._box.decrypt(bytes(sealed)),
                        payload=row.payload,
                        attempts=row.attempts,
                        created_at=row.created_at,
                    )
                )
            return due

    def record_attempt(
        self,
        delivery_id: int,
        *,
        now: datetime,
        delivered: bool,
        response_status: int | None,
        error: str,
        retry_at: datetime | None,
    ) -> None:
        """One attempt's outcome: delivered, retried at ``retry_at``, or failed for good
        (``retry_at`` None)."""
        with unit_of_work(self._sessions) as s:
            row = s.get(WebhookDeliveryRow, delivery_id)
            if row is None:
                return  # its webhook was deleted meanwhile
            row.attempts += 1
            row.last_attempt_at = now
            row.response_status = response_status
            row.last_error = error[:500]
            if delivered:
                row.status, row.delivered_at, row.next_attempt_at = "delivered", now, None
            elif retry_at is None:
                row.status, row.next_attempt_at = "failed", None
            else:
                row.next_attempt_at = retry_at

    def announce_state_changes(self) -> int:
        """Queue account.state_changed for accounts whose state moved since last told: a read
        first, a write only when something changed (this runs every poll interval)."""
        with unit_of_work(self._sessions) as s:
            changed = s.execute(
                select(AccountRow.id)
                .outerjoin(
                    WebhookAccountStateRow, WebhookAccountStateRow.account_id == AccountRow.id
                )
                .where(
                    (WebhookAccountStateRow.state.is_(None))
                    | (WebhookAccountStateRow.state != AccountRow.state)
                )
                .limit(1)
            ).first()
        if changed is None:
            return 0
        with unit_of_work(self._sessions) as s:
            # The fan-out's lock row serialises two processes announcing the same change.
            s.execute(update(FanoutStateRow).where(FanoutStateRow.id == 1).values(id=1))
            queued = queue_account_state_changes(s)
            if queued:
                send_wakeup(s)
            return queued

    def next_due_at(self) -> datetime | None:
        with unit_of_work(self._sessions) as s:
            return s.execute(
                select(WebhookDeliveryRow.next_attempt_at)
                .where(WebhookDeliveryRow.status == "pending")
                .order_by(WebhookDeliveryRow.next_attempt_at)
                .limit(1)
            ).scalar_one_or_none()
