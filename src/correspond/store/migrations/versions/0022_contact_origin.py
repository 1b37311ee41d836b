"""Contacts say where they came from (``origin``), and deleted contacts' addresses are kept
in ``contact_dismissals`` so contact auto-creation does not make them again.

Revision ID: 0022_contact_origin
Revises: 0021_timeline_links_trigger
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from correspond.store.tables import UtcDateTime

revision = "0022_contact_origin"
down_revision = "0021_timeline_links_trigger"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN on both backends (no table rebuild); the check is a named
    # constraint on PostgreSQL and inline on SQLite, where ADD COLUMN may carry it.
    check = "origin IN ('manual', 'import', 'auto')"
    if op.get_bind().dialect.name == "postgresql":
        op.add_column(
            "contacts",
            sa.Column("origin", sa.String(8), nullable=False, server_default="manual"),
        )
        op.create_check_constraint("ck_contacts_origin", "contacts", check)
    else:
        op.execute(
            "ALTER TABLE contacts ADD COLUMN origin VARCHAR(8) DEFAULT 'manual' NOT NULL "
            f"CONSTRAINT ck_contacts_origin CHECK ({check})"
        )
    op.create_table(
        "contact_dismissals",
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("dismissed_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("address", name=op.f("pk_contact_dismissals")),
    )


def downgrade() -> None:
    op.drop_table("contact_dismissals")
    with op.batch_alter_table("contacts") as batch:
        batch.drop_column("origin")
