"""Drafts saved in the CRM (``drafts``, ``draft_files``: see store.draft_tables), and the outbox
kind ``answered`` (a reply sent from the CRM sets \\Answered on the message it answers).

Revision ID: 0024_drafts
Revises: 0019_send
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from correspond.store.tables import UtcDateTime

revision = "0024_drafts"
down_revision = "0019_send"
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_Time = UtcDateTime()
_OLD_KINDS = (
    "read",
    "unread",
    "star",
    "unstar",
    "archive",
    "unarchive",
    "delete",
    "restore",
    "move",
    "send",
)
_KINDS = (*_OLD_KINDS, "answered")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _kinds(kinds: tuple[str, ...]) -> None:
    # The outbox may be rebuilt on SQLite (a CHECK cannot be altered there); it is not one of
    # the big tables (messages, accounts) that must never be.
    with op.batch_alter_table("outbox", recreate="auto") as batch:
        batch.drop_constraint(op.f("ck_outbox_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_outbox_kind"), _in("kind", kinds))


def upgrade() -> None:
    _kinds(_KINDS)
    op.create_table(
        "drafts",
        sa.Column("id", _Id, primary_key=True),
        sa.Column(
            "owner_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("identity_id", sa.Integer, sa.ForeignKey("identities.id", ondelete="SET NULL")),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="SET NULL")),
        sa.Column("to_addrs", sa.JSON, nullable=False),
        sa.Column("cc_addrs", sa.JSON, nullable=False),
        sa.Column("bcc_addrs", sa.JSON, nullable=False),
        sa.Column("subject", sa.Text),
        sa.Column("text_body", sa.Text),
        sa.Column("html_body", sa.Text),
        sa.Column("attachments", sa.JSON, nullable=False),
        sa.Column("in_reply_to_id", _Id, sa.ForeignKey("messages.id", ondelete="SET NULL")),
        sa.Column("reply_mode", sa.String(10)),
        sa.Column("template_id", sa.Integer, sa.ForeignKey("templates.id", ondelete="SET NULL")),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sending_since", _Time),
        sa.Column("created_at", _Time, nullable=False),
        sa.Column("updated_at", _Time, nullable=False),
        sa.CheckConstraint(
            "reply_mode IS NULL OR reply_mode IN ('reply', 'reply-all', 'forward')",
            name="reply_mode",
        ),
    )
    op.create_index("ix_drafts_owner_updated", "drafts", ["owner_id", "updated_at"])
    op.create_table(
        "draft_files",
        sa.Column("id", _Id, primary_key=True),
        sa.Column("draft_id", _Id, sa.ForeignKey("drafts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("content_type", sa.String(255), nullable=False),
        sa.Column("content_id", sa.String(250)),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_draft_files_draft_id", "draft_files", ["draft_id"])


def downgrade() -> None:
    op.drop_table("draft_files")
    op.drop_table("drafts")
    op.execute("DELETE FROM outbox WHERE kind = 'answered'")
    _kinds(_OLD_KINDS)
