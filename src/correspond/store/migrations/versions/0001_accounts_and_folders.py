"""Accounts and folders.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from correspond.store.tables import UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_STATES = "'connecting', 'backfilling', 'live', 'paused', 'auth_failed', 'error', 'disconnected'"
_ROLES = "'inbox', 'sent', 'drafts', 'trash', 'archive', 'junk', 'all'"


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("preset", sa.String(40), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("imap_host", sa.String(255), nullable=False),
        sa.Column("imap_port", sa.Integer(), nullable=False),
        sa.Column("imap_security", sa.String(10), nullable=False),
        sa.Column("smtp_host", sa.String(255), nullable=True),
        sa.Column("smtp_port", sa.Integer(), nullable=False),
        sa.Column("smtp_security", sa.String(10), nullable=False),
        sa.Column("username", sa.String(320), nullable=False),
        sa.Column("auth_kind", sa.String(10), nullable=False),
        sa.Column("secret_encrypted", sa.LargeBinary(), nullable=True),
        sa.Column("allow_plaintext", sa.Boolean(), nullable=False),
        sa.Column("trusted_cert_pem", sa.Text(), nullable=True),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("state_detail", sa.Text(), nullable=False),
        sa.Column("folders_mode", sa.String(10), nullable=False),
        sa.Column("window_days", sa.Integer(), nullable=False),
        sa.Column("delete_in_crm_on_remote_delete", sa.Boolean(), nullable=False),
        sa.Column("delete_remote_on_crm_delete", sa.Boolean(), nullable=False),
        sa.Column("archive_in_crm_on_remote_archive", sa.Boolean(), nullable=False),
        sa.Column("archive_remote_on_crm_archive", sa.Boolean(), nullable=False),
        sa.Column("connected_at", UtcDateTime(), nullable=True),
        sa.Column("last_sync_at", UtcDateTime(), nullable=True),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_expires_at", UtcDateTime(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
        sa.UniqueConstraint("name", name=op.f("uq_accounts_name")),
        sa.CheckConstraint(f"state IN ({_STATES})", name=op.f("ck_accounts_state")),
        sa.CheckConstraint(
            "folders_mode IN ('all', 'selected')", name=op.f("ck_accounts_folders_mode")
        ),
        sa.CheckConstraint(
            "auth_kind IN ('password', 'oauth2')", name=op.f("ck_accounts_auth_kind")
        ),
        sa.CheckConstraint(
            "imap_security IN ('tls', 'starttls', 'plain')", name=op.f("ck_accounts_imap_security")
        ),
        sa.CheckConstraint(
            "smtp_security IN ('tls', 'starttls', 'plain')", name=op.f("ck_accounts_smtp_security")
        ),
    )
    op.create_table(
        "folders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("remote_name_raw", sa.LargeBinary(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("delimiter", sa.String(8), nullable=True),
        sa.Column("flags", sa.JSON(), nullable=False),
        sa.Column("role", sa.String(10), nullable=True),
        sa.Column("selectable", sa.Boolean(), nullable=False),
        sa.Column("selected", sa.Boolean(), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=True),
        sa.Column("uidnext", sa.BigInteger(), nullable=True),
        sa.Column("highestmodseq", sa.BigInteger(), nullable=True),
        sa.Column("exists_count", sa.BigInteger(), nullable=True),
        sa.Column("backfill_done", sa.Boolean(), nullable=False),
        sa.Column("backfill_low_uid", sa.BigInteger(), nullable=True),
        sa.Column("backfill_total", sa.BigInteger(), nullable=True),
        sa.Column("backfill_done_count", sa.BigInteger(), nullable=False),
        sa.Column("removed", sa.Boolean(), nullable=False),
        sa.Column("last_seen_at", UtcDateTime(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_folders")),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_folders_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "account_id", "remote_name_raw", name=op.f("uq_folders_account_id_remote_name_raw")
        ),
        sa.CheckConstraint(f"role IS NULL OR role IN ({_ROLES})", name=op.f("ck_folders_role")),
    )
    op.create_index(op.f("ix_folders_account_id"), "folders", ["account_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_folders_account_id"), table_name="folders")
    op.drop_table("folders")
    op.drop_table("accounts")
