"""The full-text search index: filled in the background from ``messages``.

- ``search_index_state``: one row, the indexer's watermark. ``last_indexed`` is the highest message
  id indexed; ``settled`` the id below which every message is known to be indexed (ids above
  it are checked again until they are older than the settle time: on PostgreSQL a
  transaction may commit a lower id after a higher one).
- PostgreSQL: ``message_search`` (message id, account, list order, one ``tsvector`` built by
  the indexer from its own tokens, language-neutral) with a GIN index, and an index in list
  order so a page of a common word is a walk of it. Its rows go with their message
  (``ON DELETE CASCADE``).
- SQLite: ``message_fts``, an FTS5 table whose rowid is the message id, one column per
  searchable field; a trigger drops a deleted message's entry and moves the watermark back
  below its id (SQLite may hand the largest id out again).

Revision ID: 0010_search
Revises: 0011_notify
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010_search"
down_revision = "0011_notify"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "search_index_state",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("last_indexed", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("settled", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.execute("INSERT INTO search_index_state (id, last_indexed, settled) VALUES (1, 0, 0)")
    if op.get_bind().dialect.name == "postgresql":
        op.create_table(
            "message_search",
            sa.Column(
                "message_id",
                sa.BigInteger(),
                sa.ForeignKey("messages.id", ondelete="CASCADE"),
                primary_key=True,
            ),
            sa.Column("account_id", sa.BigInteger(), nullable=False),
            sa.Column("sort_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("doc", postgresql.TSVECTOR(), nullable=False),
        )
        op.create_index("ix_message_search_doc", "message_search", ["doc"], postgresql_using="gin")
        op.create_index("ix_message_search_sort", "message_search", ["sort_at", "message_id"])
        return
    op.execute(
        "CREATE VIRTUAL TABLE message_fts USING fts5("
        "f_subject, f_from, f_to, f_cc, f_bcc, f_body, f_filename, "
        "tokenize = 'unicode61 remove_diacritics 0')"
    )
    op.execute(
        "CREATE TRIGGER message_fts_gone AFTER DELETE ON messages BEGIN "
        "DELETE FROM message_fts WHERE rowid = old.id; "
        "UPDATE search_index_state SET last_indexed = min(last_indexed, old.id - 1), "
        "settled = min(settled, old.id - 1); "
        "END"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_table("message_search")
    else:
        op.execute("DROP TRIGGER IF EXISTS message_fts_gone")
        op.execute("DROP TABLE IF EXISTS message_fts")
    op.drop_table("search_index_state")
