"""Sending from the CRM: a send is an outbox row of kind ``send`` (its message is the CRM's
outgoing message row, written in the same transaction); an undone or unscheduled send ends
``cancelled``; ``accounts.sent_copy`` records whether the account's server files its own copy
of sent mail in Sent (``server``) or Correspond must APPEND one (``append``); NULL: not known
yet (the first send finds out).

Revision ID: 0019_send
Revises: 0018_identities_templates
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019_send"
down_revision = "0018_identities_templates"
branch_labels = None
depends_on = None

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
)
_KINDS = (*_OLD_KINDS, "send")
_OLD_STATES = ("pending", "applied", "failed", "superseded")
_STATES = (*_OLD_STATES, "cancelled")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _checks(kinds: tuple[str, ...], states: tuple[str, ...]) -> None:
    # The outbox may be rebuilt on SQLite (CHECK constraints cannot be altered there); it is
    # not one of the big tables (messages, accounts) that must never be.
    with op.batch_alter_table("outbox", recreate="auto") as batch:
        batch.drop_constraint(op.f("ck_outbox_kind"), type_="check")
        batch.drop_constraint(op.f("ck_outbox_state"), type_="check")
        batch.create_check_constraint(op.f("ck_outbox_kind"), _in("kind", kinds))
        batch.create_check_constraint(op.f("ck_outbox_state"), _in("state", states))


def upgrade() -> None:
    _checks(_KINDS, _STATES)
    # Plain ADD COLUMN (never a table rebuild of accounts on SQLite).
    op.add_column("accounts", sa.Column("sent_copy", sa.String(10), nullable=True))


def downgrade() -> None:
    op.execute("DELETE FROM outbox WHERE kind = 'send' OR state = 'cancelled'")
    _checks(_OLD_KINDS, _OLD_STATES)
    op.drop_column("accounts", "sent_copy")
