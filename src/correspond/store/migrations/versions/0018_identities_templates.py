"""Outbound identities and message templates (see store.compose_tables).

Revision ID: 0018_identities_templates
Revises: 0016_crm_delete
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from correspond.store.tables import UtcDateTime

revision = "0018_identities_templates"
down_revision = "0016_crm_delete"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "identities",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=True),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("address_key", sa.String(320), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("smtp_host", sa.String(255), nullable=True),
        sa.Column("smtp_port", sa.Integer(), nullable=True),
        sa.Column("smtp_security", sa.String(10), nullable=True),
        sa.Column("smtp_username", sa.String(320), nullable=True),
        sa.Column("secret_encrypted", sa.LargeBinary(), nullable=True),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identities")),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["users.id"],
            name=op.f("fk_identities_owner_id_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_identities_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "owner_id", "address_key", name=op.f("uq_identities_owner_id_address_key")
        ),
        sa.CheckConstraint("kind IN ('account', 'smtp')", name=op.f("ck_identities_kind")),
        sa.CheckConstraint(
            "smtp_security IS NULL OR smtp_security IN ('starttls', 'tls')",
            name=op.f("ck_identities_smtp_security"),
        ),
        sa.CheckConstraint(
            "(kind = 'account' AND account_id IS NOT NULL) OR "
            "(kind = 'smtp' AND account_id IS NULL AND smtp_host IS NOT NULL "
            "AND smtp_port IS NOT NULL AND smtp_security IS NOT NULL)",
            name=op.f("ck_identities_kind_fields"),
        ),
    )
    op.create_index(
        "ix_identities_one_default",
        "identities",
        ["owner_id"],
        unique=True,
        sqlite_where=sa.text("is_default"),
        postgresql_where=sa.text("is_default"),
    )
    op.create_index("ix_identities_account_id", "identities", ["account_id"])
    op.create_table(
        "templates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("team_id", sa.Integer(), nullable=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("body_text", sa.Text(), nullable=True),
        sa.Column("body_html", sa.Text(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_templates")),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["users.id"],
            name=op.f("fk_templates_owner_id_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["team_id"],
            ["teams.id"],
            name=op.f("fk_templates_team_id_teams"),
            ondelete="SET NULL",
        ),
    )
    op.create_index("ix_templates_owner_id", "templates", ["owner_id"])
    op.create_index("ix_templates_team_id", "templates", ["team_id"])


def downgrade() -> None:
    op.drop_table("templates")
    op.drop_table("identities")
