"""The outbox: one row per CRM action that must reach the mailbox (see store.outbox_tables).

Revision ID: 0015_outbox
Revises: 0010_search
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from correspond.store.tables import UtcDateTime

revision = "0015_outbox"
down_revision = "0010_search"
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_Time = UtcDateTime()
_KINDS = ("read", "unread", "star", "unstar", "archive", "unarchive", "delete", "restore", "move")
_STATES = ("pending", "applied", "failed", "superseded")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", _Id, primary_key=True),
        sa.Column(
            "account_id",
            sa.Integer,
            sa.ForeignKey("accounts.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("message_id", _Id, sa.ForeignKey("messages.id", ondelete="CASCADE")),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="SET NULL")),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", _Time, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", _Time, nullable=False),
        sa.Column("applied_at", _Time),
        sa.CheckConstraint(_in("state", _STATES), name="state"),
        sa.CheckConstraint(_in("kind", _KINDS), name="kind"),
    )
    op.create_index("ix_outbox_account_state", "outbox", ["account_id", "state", "id"])
    op.create_index("ix_outbox_message", "outbox", ["message_id"])


def downgrade() -> None:
    op.drop_table("outbox")
