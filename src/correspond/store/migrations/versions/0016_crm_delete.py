"""Deleted messages: when a message became ``deleted`` (purged ``deleted_retention_days``
later) and the synced folders it last sat in (``home_folder_ids``: where a restore puts it
back, and what the two-way rule compares with when it turns up again).

Revision ID: 0016_crm_delete
Revises: 0017_lifecycle
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from correspond.store.tables import UtcDateTime

revision = "0016_crm_delete"
down_revision = "0017_lifecycle"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (never a batch rebuild of messages on SQLite).
    op.add_column("messages", sa.Column("deleted_at", UtcDateTime()))
    op.add_column("messages", sa.Column("home_folder_ids", sa.JSON))
    # Messages deleted before this revision count from now.
    op.execute(
        sa.text("UPDATE messages SET deleted_at = CURRENT_TIMESTAMP WHERE state = 'deleted'")
    )
    # The purge's scan: only deleted messages have a deleted_at.
    op.create_index("ix_messages_deleted_at", "messages", ["deleted_at"])


def downgrade() -> None:
    op.drop_index("ix_messages_deleted_at", "messages")
    op.drop_column("messages", "home_folder_ids")
    op.drop_column("messages", "deleted_at")
