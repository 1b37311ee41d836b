"""Keys of mail without a Message-ID whose body was never fetched gain the message's size.

Such a message (above the size limit, no Message-ID) was keyed on a hash of its header block
alone, which another message with the same headers (a bounce, a scanner's mail) shares: the
other one was linked to it and its own content never stored. Its key is now that hash and its
size (``correspond.mail.dedupe.unfetched_body_key``); existing rows get the new key here, so
their copies found in other folders, or after a UIDVALIDITY reset, still link to them.

Those rows are the ones stored by the large-message path: ``truncated``, no raw blob, an
``h:`` key. The formula is written out here, not imported, so this migration keeps meaning
what it did if the function changes. Message-ID keys need no migration: a reused id only
changes the key of the *later* message (``mid:<id>#<hash>``); rows stored already keep theirs.

Downgrade leaves the keys as they are (a hash cannot be undone); code before this revision
then stores a later copy of such a message as a message of its own.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_PAGE = 2000


def new_key(old_key: str, size: int | None) -> str:
    """``unfetched_body_key`` as of this revision."""
    return "h:" + hashlib.sha256(f"{old_key}\x00size:{size}".encode()).hexdigest()


def upgrade() -> None:
    conn = op.get_bind()
    messages = sa.Table(
        "messages",
        sa.MetaData(),
        sa.Column("id", _Id),
        sa.Column("dedupe_key", sa.Text()),
        sa.Column("size", sa.BigInteger()),
        sa.Column("truncated", sa.Boolean()),
        sa.Column("raw_blob_key", sa.String(64)),
    )
    last = 0
    while True:
        page = conn.execute(
            sa.select(messages.c.id, messages.c.dedupe_key, messages.c.size)
            .where(
                messages.c.id > last,
                messages.c.truncated.is_(True),
                messages.c.raw_blob_key.is_(None),
                messages.c.dedupe_key.like("h:%"),
            )
            .order_by(messages.c.id)
            .limit(_PAGE)
        ).all()
        if not page:
            return
        last = int(page[-1].id)
        conn.execute(
            sa.update(messages)
            .where(messages.c.id == sa.bindparam("b_id"))
            .values(dedupe_key=sa.bindparam("b_key")),
            [{"b_id": int(r.id), "b_key": new_key(r.dedupe_key, r.size)} for r in page],
        )


def downgrade() -> None:
    pass
