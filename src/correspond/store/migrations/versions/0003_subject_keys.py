"""Same-subject lookup keys: one row per (normalised subject, counterpart) of a dated message.

Threading's subject fallback needs the stored messages with the same subject that share a
participant other than the mailbox owner. Reading every same-subject row and filtering in
Python made a common subject ("Quarterly review") cost most of a backfill's commit time, and
counted the owner (in nearly every message) as a shared participant. Existing messages get
their keys here, computed by the same function ingest uses.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from alembic import op

from correspond.mail.threading import subject_keys
from correspond.store.tables import UtcDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_PAGE = 2000


def upgrade() -> None:
    op.create_table(
        "message_subject_keys",
        sa.Column("id", _Id, nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("message_id", _Id, nullable=False),
        sa.Column("key", sa.String(32), nullable=False),
        sa.Column("date", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name="fk_message_subject_keys_account_id_accounts",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name="fk_message_subject_keys_message_id_messages",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_message_subject_keys"),
    )
    op.create_index(
        "ix_message_subject_keys_lookup", "message_subject_keys", ["account_id", "key", "date"]
    )
    op.create_index("ix_message_subject_keys_message", "message_subject_keys", ["message_id"])
    _fill_existing()


def _fill_existing() -> None:
    conn = op.get_bind()
    meta = sa.MetaData()
    messages = sa.Table(
        "messages",
        meta,
        sa.Column("id", _Id),
        sa.Column("account_id", sa.Integer()),
        sa.Column("normalized_subject", sa.Text()),
        sa.Column("participants", sa.JSON()),
        sa.Column("date", UtcDateTime()),
    )
    accounts = sa.Table(
        "accounts", meta, sa.Column("id", sa.Integer()), sa.Column("email", sa.Text)
    )
    keys = sa.Table(
        "message_subject_keys",
        meta,
        sa.Column("account_id", sa.Integer()),
        sa.Column("message_id", _Id),
        sa.Column("key", sa.String(32)),
        sa.Column("date", UtcDateTime()),
    )
    owners = {int(i): str(e or "").lower() for i, e in conn.execute(sa.select(accounts))}
    last = 0
    while True:
        page = conn.execute(
            sa.select(messages)
            .where(messages.c.id > last, messages.c.date.is_not(None))
            .order_by(messages.c.id)
            .limit(_PAGE)
        ).all()
        if not page:
            return
        last = int(page[-1].id)
        rows = list(_rows(page, owners))
        if rows:
            conn.execute(sa.insert(keys), rows)


def _rows(page: Any, owners: dict[int, str]) -> Iterator[dict[str, Any]]:
    for m in page:
        own = owners.get(int(m.account_id), "")
        counterparts = [p for p in (m.participants or ()) if p != own]
        for key in subject_keys(m.normalized_subject or "", counterparts):
            yield {
                "account_id": m.account_id,
                "message_id": m.id,
                "key": key,
                "date": m.date,
            }


def downgrade() -> None:
    op.drop_index("ix_message_subject_keys_message", table_name="message_subject_keys")
    op.drop_index("ix_message_subject_keys_lookup", table_name="message_subject_keys")
    op.drop_table("message_subject_keys")
