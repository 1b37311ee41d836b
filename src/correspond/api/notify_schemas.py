"""Request and response models of ``/notifications`` and ``/webhooks``."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from correspond.api.security import MAX_ID
from correspond.store.notifications import Notification
from correspond.store.webhooks import Delivery, Webhook

__all__ = [
    "DeliveryPage",
    "DeliveryPublic",
    "EventType",
    "NewWebhookPublic",
    "NotificationPage",
    "NotificationPublic",
    "ReadAll",
    "ReadAllResult",
    "UnreadCount",
    "WebhookCreate",
    "WebhookPublic",
    "delivery_public",
    "notification_public",
    "webhook_public",
]

EventType = Literal[
    "message.received",
    "message.sent",
    "message.updated",
    "message.deleted",
    "account.state_changed",
]


class SenderPublic(BaseModel):
    name: str | None
    email: str | None


class NotificationPublic(BaseModel):
    id: int
    message_id: int
    account: str
    thread_id: int | None
    subject: str
    sender: SenderPublic
    #: Empty when the account is shared with the caller as metadata only.
    snippet: str
    date: datetime | None
    created_at: datetime
    read_at: datetime | None
    #: The caller's access to the account: ``full``, or ``metadata`` (no snippet).
    access: Literal["full", "metadata"] = "full"


def notification_public(n: Notification) -> NotificationPublic:
    return NotificationPublic(
        id=n.id,
        message_id=n.message_id,
        account=n.account,
        thread_id=n.thread_id,
        subject=n.subject,
        sender=SenderPublic(name=n.from_name, email=n.from_email),
        snippet=n.snippet,
        date=n.message_date,
        created_at=n.created_at,
        read_at=n.read_at,
        access="metadata" if n.access == "metadata" else "full",
    )


class NotificationPage(BaseModel):
    notifications: list[NotificationPublic]
    #: Pass as ``cursor`` for the next (older) page; null on the last page.
    next_cursor: str | None
    unread_count: int


class UnreadCount(BaseModel):
    unread_count: int


class ReadAll(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: Only notifications up to this id (the newest the person saw); all when absent.
    up_to: int | None = Field(default=None, ge=1, le=MAX_ID)


class ReadAllResult(BaseModel):
    marked: int
    unread_count: int


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=1, max_length=2000)
    events: list[EventType] = Field(min_length=1, max_length=5)
    description: str = Field(default="", max_length=500)


class WebhookPublic(BaseModel):
    id: int
    url: str
    description: str
    events: list[str]
    created_at: datetime


def webhook_public(w: Webhook) -> WebhookPublic:
    return WebhookPublic(
        id=w.id, url=w.url, description=w.description, events=w.events, created_at=w.created_at
    )


class NewWebhookPublic(WebhookPublic):
    #: The signing secret (Standard Webhooks ``whsec_...``): in this answer only.
    secret: str


class DeliveryPublic(BaseModel):
    id: int
    event_id: str
    event_type: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    response_status: int | None
    last_error: str


def delivery_public(d: Delivery) -> DeliveryPublic:
    return DeliveryPublic(
        id=d.id,
        event_id=d.event_id,
        event_type=d.event_type,
        status=d.status,  # type: ignore[arg-type]
        attempts=d.attempts,
        created_at=d.created_at,
        next_attempt_at=d.next_attempt_at,
        last_attempt_at=d.last_attempt_at,
        delivered_at=d.delivered_at,
        response_status=d.response_status,
        last_error=d.last_error,
    )


class DeliveryPage(BaseModel):
    deliveries: list[DeliveryPublic]
    next_cursor: str | None
