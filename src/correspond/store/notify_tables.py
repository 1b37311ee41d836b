"""Tables for notifications and webhooks (migration ``0011_notify``).

Same :class:`~correspond.store.tables.Base` as the rest. See ``store.notifications`` for the
fan-out that fills ``notifications`` and ``store.webhooks`` for the delivery outbox.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from correspond.store.tables import Base, utcnow

__all__ = [
    "DELIVERY_STATUSES",
    "FanoutSeenRow",
    "FanoutStateRow",
    "NotificationRow",
    "WebhookAccountStateRow",
    "WebhookDeliveryRow",
    "WebhookRow",
]

DELIVERY_STATUSES = ("pending", "delivered", "failed")

_Id = BigInteger().with_variant(Integer(), "sqlite")


class NotificationRow(Base):
    """User ``user_id`` is told about message ``message_id`` (unread while ``read_at`` is NULL)."""

    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint("user_id", "message_id", name="uq_notifications_user_message"),
        Index("ix_notifications_user", "user_id", "id"),
        Index("ix_notifications_message", "message_id"),
    )

    id: Mapped[int] = mapped_column(_Id, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    message_id: Mapped[int] = mapped_column(_Id, ForeignKey("messages.id", ondelete="CASCADE"))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    read_at: Mapped[datetime | None] = mapped_column()


class FanoutStateRow(Base):
    """The fan-out's watermark (one row, id 1): every message id at or below it was looked at."""

    __tablename__ = "notify_fanout"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    watermark: Mapped[int] = mapped_column(BigInteger)


class FanoutSeenRow(Base):
    """A message above the watermark that the fan-out has already looked at."""

    __tablename__ = "notify_fanout_seen"
    __table_args__ = (Index("ix_notify_fanout_seen_at", "seen_at"),)

    message_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    seen_at: Mapped[datetime] = mapped_column()


class WebhookRow(Base):
    """A URL subscribed by ``user_id`` to some event types; the signing secret is sealed."""

    __tablename__ = "webhooks"
    __table_args__ = (Index("ix_webhooks_user", "user_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, default="")
    events: Mapped[list[str]] = mapped_column(JSON, default=list)
    secret_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDeliveryRow(Base):
    """One event for one webhook: what the sender works through, and the delivery log."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("webhook_id", "dedupe_key", name="uq_webhook_deliveries_dedupe"),
        CheckConstraint(
            "status IN ('pending', 'delivered', 'failed')", name="ck_webhook_deliveries_status"
        ),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_webhook", "webhook_id", "id"),
    )

    id: Mapped[int] = mapped_column(_Id, primary_key=True)
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(String(40), unique=True)
    event_type: Mapped[str] = mapped_column(String(40))
    dedupe_key: Mapped[str | None] = mapped_column(String(100))
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(10), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    next_attempt_at: Mapped[datetime | None] = mapped_column()
    last_attempt_at: Mapped[datetime | None] = mapped_column()
    delivered_at: Mapped[datetime | None] = mapped_column()
    response_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str] = mapped_column(Text, default="")


class WebhookAccountStateRow(Base):
    """The last state of an account that webhooks were told about."""

    __tablename__ = "webhook_account_states"

    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    state: Mapped[str] = mapped_column(String(20))
