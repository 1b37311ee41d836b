"""Disconnect keeps the account row: ``accounts.disconnected_at`` (issue 9, lifecycle).

A disconnected account has no credentials, folders or locations; its messages stay in the CRM
as history (``messages.gone_reason = 'disconnected'``), and a reconnect of the same account
reuses its id, so the dedupe key (``UNIQUE(account_id, dedupe_key)``) finds them again.

Revision ID: 0017_lifecycle
Revises: 0022_contact_origin
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from correspond.store.tables import UtcDateTime

revision = "0017_lifecycle"
down_revision = "0022_contact_origin"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN on both backends (no table rebuild of accounts on SQLite).
    op.add_column("accounts", sa.Column("disconnected_at", UtcDateTime(), nullable=True))


def downgrade() -> None:
    op.drop_column("accounts", "disconnected_at")
