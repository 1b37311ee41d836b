"""Messages, their folder locations, references, threads and attachments.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# 64-bit ids on PostgreSQL; SQLite auto-increments only a column declared exactly INTEGER.
_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts(name: str, nullable: bool = True) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "threads",
        sa.Column("id", _Id, nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("gm_thrid", sa.BigInteger(), nullable=True),
        sa.Column("message_count", sa.Integer(), nullable=False),
        _ts("first_message_at"),
        _ts("last_message_at"),
        _ts("created_at", nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name="fk_threads_account_id_accounts",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_threads"),
    )
    op.create_index("ix_threads_account_last", "threads", ["account_id", "last_message_at"])

    op.create_table(
        "messages",
        sa.Column("id", _Id, nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("thread_id", _Id, nullable=True),
        sa.Column("dedupe_key", sa.Text(), nullable=False),
        sa.Column("message_id_header", sa.Text(), nullable=True),
        sa.Column("in_reply_to", sa.Text(), nullable=True),
        sa.Column("reference_ids", sa.JSON(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("normalized_subject", sa.Text(), nullable=False),
        sa.Column("from_name", sa.Text(), nullable=True),
        sa.Column("from_email", sa.String(320), nullable=True),
        sa.Column("sender", sa.JSON(), nullable=False),
        sa.Column("reply_to", sa.JSON(), nullable=False),
        sa.Column("to_addrs", sa.JSON(), nullable=False),
        sa.Column("cc_addrs", sa.JSON(), nullable=False),
        sa.Column("bcc_addrs", sa.JSON(), nullable=False),
        sa.Column("participants", sa.JSON(), nullable=False),
        _ts("date"),
        _ts("internaldate"),
        sa.Column("snippet", sa.Text(), nullable=False),
        sa.Column("text_body", sa.Text(), nullable=True),
        sa.Column("html_body", sa.Text(), nullable=True),
        sa.Column("flags", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("direction", sa.String(10), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("raw_blob_key", sa.String(64), nullable=True),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("gm_msgid", sa.BigInteger(), nullable=True),
        sa.Column("gm_thrid", sa.BigInteger(), nullable=True),
        sa.Column("defects", sa.JSON(), nullable=False),
        _ts("created_at", nullable=False),
        _ts("updated_at", nullable=False),
        sa.CheckConstraint("state IN ('active', 'archived', 'deleted')", name="ck_messages_state"),
        sa.CheckConstraint("direction IN ('inbound', 'outbound')", name="ck_messages_direction"),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name="fk_messages_account_id_accounts",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["thread_id"],
            ["threads.id"],
            name="fk_messages_thread_id_threads",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
        sa.UniqueConstraint("account_id", "dedupe_key", name="uq_messages_account_id_dedupe_key"),
    )
    op.create_index(
        "ix_messages_account_message_id", "messages", ["account_id", "message_id_header"]
    )
    op.create_index("ix_messages_account_subject", "messages", ["account_id", "normalized_subject"])
    op.create_index("ix_messages_account_date", "messages", ["account_id", "date"])
    op.create_index("ix_messages_thread", "messages", ["thread_id"])

    op.create_table(
        "message_locations",
        sa.Column("id", _Id, nullable=False),
        sa.Column("message_id", _Id, nullable=False),
        sa.Column("folder_id", sa.Integer(), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column("modseq", sa.BigInteger(), nullable=True),
        sa.Column("flags", sa.JSON(), nullable=False),
        _ts("created_at", nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name="fk_message_locations_message_id_messages",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["folder_id"],
            ["folders.id"],
            name="fk_message_locations_folder_id_folders",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_message_locations"),
        sa.UniqueConstraint("folder_id", "uid", name="uq_message_locations_folder_id_uid"),
    )
    op.create_index("ix_message_locations_message", "message_locations", ["message_id"])

    op.create_table(
        "message_refs",
        sa.Column("id", _Id, nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("message_id", _Id, nullable=False),
        sa.Column("ref", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name="fk_message_refs_account_id_accounts",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name="fk_message_refs_message_id_messages",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_message_refs"),
        sa.UniqueConstraint("message_id", "ref", name="uq_message_refs_message_id_ref"),
    )
    op.create_index("ix_message_refs_account_ref", "message_refs", ["account_id", "ref"])

    op.create_table(
        "attachments",
        sa.Column("id", _Id, nullable=False),
        sa.Column("message_id", _Id, nullable=False),
        sa.Column("filename", sa.Text(), nullable=True),
        sa.Column("content_type", sa.String(255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("content_id", sa.Text(), nullable=True),
        sa.Column("inline", sa.Boolean(), nullable=False),
        sa.Column("blob_key", sa.String(64), nullable=True),
        sa.Column("section", sa.String(64), nullable=True),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name="fk_attachments_message_id_messages",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_attachments"),
    )
    op.create_index("ix_attachments_message", "attachments", ["message_id"])


def downgrade() -> None:
    op.drop_index("ix_attachments_message", table_name="attachments")
    op.drop_table("attachments")
    op.drop_index("ix_message_refs_account_ref", table_name="message_refs")
    op.drop_table("message_refs")
    op.drop_index("ix_message_locations_message", table_name="message_locations")
    op.drop_table("message_locations")
    for name in (
        "ix_messages_thread",
        "ix_messages_account_date",
        "ix_messages_account_subject",
        "ix_messages_account_message_id",
    ):
        op.drop_index(name, table_name="messages")
    op.drop_table("messages")
    op.drop_index("ix_threads_account_last", table_name="threads")
    op.drop_table("threads")
