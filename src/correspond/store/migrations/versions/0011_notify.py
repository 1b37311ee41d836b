"""Notifications (stored, fanned out from new messages) and webhooks with their delivery log.

- ``notifications``: one row per (user, message) the user is told about; ``read_at`` NULL while
  unread. ``UNIQUE(user_id, message_id)`` is what makes a replayed fan-out a no-op.
- ``notify_fanout``: the fan-out's watermark (one row): every message id at or below it has
  been looked at. Set to the newest message id here, so mail stored before this revision is
  never announced. ``notify_fanout_seen``: ids above the watermark already looked at (the
  watermark trails the newest id by a grace period, so a batch that commits late, with lower
  ids than one committed before it, is still seen).
- ``webhooks`` (owned by a user; secret sealed like account passwords), ``webhook_deliveries``
  (one per event per webhook: the outbox the sender works through and the delivery log),
  ``webhook_account_states`` (the last account state announced, to tell a change).

Revision ID: 0011_notify
Revises: 0009_crm
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from correspond.store.tables import UtcDateTime

revision = "0011_notify"
down_revision = "0009_crm"
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_Time = UtcDateTime()


def upgrade() -> None:
    op.create_table(
        "notifications",
        sa.Column("id", _Id, primary_key=True),
        sa.Column(
            "user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "message_id", _Id, sa.ForeignKey("messages.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "account_id",
            sa.Integer,
            sa.ForeignKey("accounts.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("created_at", _Time, nullable=False),
        sa.Column("read_at", _Time, nullable=True),
        sa.UniqueConstraint("user_id", "message_id", name="uq_notifications_user_message"),
    )
    op.create_index("ix_notifications_user", "notifications", ["user_id", "id"])
    op.create_index("ix_notifications_message", "notifications", ["message_id"])
    op.create_table(
        "notify_fanout",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("watermark", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "notify_fanout_seen",
        sa.Column("message_id", sa.BigInteger, primary_key=True),
        sa.Column("seen_at", _Time, nullable=False),
    )
    # The watermark moves to ids seen before the grace period: an index range, not a scan.
    op.create_index("ix_notify_fanout_seen_at", "notify_fanout_seen", ["seen_at"])
    bind = op.get_bind()
    newest = bind.execute(sa.text("SELECT coalesce(max(id), 0) FROM messages")).scalar_one()
    bind.execute(
        sa.text("INSERT INTO notify_fanout (id, watermark) VALUES (1, :w)"), {"w": int(newest)}
    )
    op.create_table(
        "webhooks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("events", sa.JSON, nullable=False),
        sa.Column("secret_encrypted", sa.LargeBinary, nullable=False),
        sa.Column("created_at", _Time, nullable=False),
    )
    op.create_index("ix_webhooks_user", "webhooks", ["user_id"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", _Id, primary_key=True),
        sa.Column(
            "webhook_id",
            sa.Integer,
            sa.ForeignKey("webhooks.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("event_id", sa.String(40), nullable=False, unique=True),
        sa.Column("event_type", sa.String(40), nullable=False),
        # Same event told twice (two fan-outs racing) is one delivery; NULL: always new.
        sa.Column("dedupe_key", sa.String(100), nullable=True),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", _Time, nullable=False),
        sa.Column("next_attempt_at", _Time, nullable=True),
        sa.Column("last_attempt_at", _Time, nullable=True),
        sa.Column("delivered_at", _Time, nullable=True),
        sa.Column("response_status", sa.Integer, nullable=True),
        sa.Column("last_error", sa.Text, nullable=False, server_default=""),
        sa.UniqueConstraint("webhook_id", "dedupe_key", name="uq_webhook_deliveries_dedupe"),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'failed')", name="ck_webhook_deliveries_status"
        ),
    )
    op.create_index(
        "ix_webhook_deliveries_due", "webhook_deliveries", ["status", "next_attempt_at"]
    )
    op.create_index("ix_webhook_deliveries_webhook", "webhook_deliveries", ["webhook_id", "id"])
    op.create_table(
        "webhook_account_states",
        sa.Column(
            "account_id",
            sa.Integer,
            sa.ForeignKey("accounts.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("state", sa.String(20), nullable=False),
    )
    bind.execute(
        sa.text(
            "INSERT INTO webhook_account_states (account_id, state) SELECT id, state FROM accounts"
        )
    )


def downgrade() -> None:
    for table in (
        "webhook_account_states",
        "webhook_deliveries",
        "webhooks",
        "notify_fanout_seen",
        "notify_fanout",
        "notifications",
    ):
        op.drop_table(table)
