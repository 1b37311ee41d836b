"""A sent draft remembers its send (``drafts.sent_outbox_id``): queueing a draft's send marks
the draft sent in the same transaction, and sending it again answers with that send.

Revision ID: 0027_sendpolish
Revises: 0024_drafts
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0027_sendpolish"
down_revision = "0024_drafts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN (no table rebuild); no foreign key: an outbox row may be pruned, and
    # then the draft still says it was sent.
    op.add_column("drafts", sa.Column("sent_outbox_id", sa.BigInteger, nullable=True))


def downgrade() -> None:
    op.execute(
        "DELETE FROM draft_files WHERE draft_id IN "
        "(SELECT id FROM drafts WHERE sent_outbox_id IS NOT NULL)"
    )
    op.execute("DELETE FROM drafts WHERE sent_outbox_id IS NOT NULL")
    with op.batch_alter_table("drafts") as batch:
        batch.drop_column("sent_outbox_id")
