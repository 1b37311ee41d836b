"""Messages gone from the mailbox: when, and why (expunged, moved to a folder not synced).

A message whose last location goes (an expunge or a move out of the synced folders) stays in
the CRM with ``locations: []``; these columns tell the two cases apart until the two-way issue
gives them their toggles.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from correspond.store.tables import UtcDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("gone_from_mailbox_at", UtcDateTime(), nullable=True))
    op.add_column("messages", sa.Column("gone_reason", sa.String(40), nullable=True))


def downgrade() -> None:
    # A plain DROP COLUMN (SQLite 3.35+), not batch mode: batch mode recreates the table, and
    # dropping the old messages table would cascade to its locations and attachments.
    op.drop_column("messages", "gone_reason")
    op.drop_column("messages", "gone_from_mailbox_at")
