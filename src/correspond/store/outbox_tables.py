"""The outbox (migration ``0015_outbox``): one row per CRM action that must reach the mailbox.

Written in the same transaction as the CRM change it carries (``store.outbox``), applied by the
account's syncer (the lease holder) in order per message. ``state``: ``pending`` (waiting, or
retrying after a transient error at ``next_attempt_at``), ``applied``, ``failed`` (a permanent
failure: the message or the folder is gone, the server refused; ``last_error`` says which) or
``superseded`` (the mailbox changed the same flag later: the conflict rule, rules.two_way) or
``cancelled`` (a send undone or unscheduled before it went: ``store.sends``).

A ``send`` row (migration ``0019_send``) carries its message's envelope and progress in
``payload`` (see ``store.sends``); its message is the CRM's outgoing message row. An
``answered`` row (migration ``0024_drafts``) sets \\Answered on every location of a message a
reply from the CRM answered, written in the transaction that shows the reply as sent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from correspond.store.tables import Base, utcnow

__all__ = ["OUTBOX_KINDS", "OUTBOX_STATES", "OutboxRow"]

OUTBOX_STATES = ("pending", "applied", "failed", "superseded", "cancelled")
OUTBOX_KINDS = (
    "read",
    "unread",
    "star",
    "unstar",
    "archive",
    "unarchive",
    "delete",
    "restore",
    "move",
    "send",
    "answered",
)

_Id = BigInteger().with_variant(Integer(), "sqlite")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class OutboxRow(Base):
    """A CRM action on a message, to be applied to the mailbox exactly once."""

    __tablename__ = "outbox"
    __table_args__ = (
        CheckConstraint(_in("state", OUTBOX_STATES), name="state"),
        CheckConstraint(_in("kind", OUTBOX_KINDS), name="kind"),
        # The applier's query: an account's pending rows in order.
        Index("ix_outbox_account_state", "account_id", "state", "id"),
        Index("ix_outbox_message", "message_id"),
    )

    id: Mapped[int] = mapped_column(_Id, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    # Who acted (kept when the user goes: the action happened).
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(20))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(12), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    applied_at: Mapped[datetime | None] = mapped_column()

    def __repr__(self) -> str:
        return f"OutboxRow(id={self.id!r}, kind={self.kind!r}, state={self.state!r})"
