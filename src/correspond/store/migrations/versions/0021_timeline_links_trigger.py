"""timeline_links: the link to its message is kept by a trigger, not a foreign key.

A foreign key costs one row-level check per inserted link: re-linking an address with
100,000 past messages spent about two thirds of its time in those checks on PostgreSQL.
The links are only ever written by the linker from rows joined to ``messages`` in the same
statement, so the check guards nothing the insert does not; what the key also gave, removing
a message's links with the message, an ``AFTER DELETE`` trigger on ``messages`` now does
(statement-level with a transition table on PostgreSQL, one set-based delete per statement).

Revision ID: 0021_timeline_links_trigger
Revises: 0015_outbox
"""

from __future__ import annotations

from alembic import op

revision = "0021_timeline_links_trigger"
down_revision = "0015_outbox"
branch_labels = None
depends_on = None

_FK = "fk_timeline_links_message_id_messages"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(_FK, "timeline_links", type_="foreignkey")
        op.execute(
            "CREATE FUNCTION timeline_links_message_gone() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN DELETE FROM timeline_links WHERE message_id IN (SELECT id FROM gone); "
            "RETURN NULL; END $$"
        )
        op.execute(
            "CREATE TRIGGER messages_timeline_links_gone AFTER DELETE ON messages "
            "REFERENCING OLD TABLE AS gone FOR EACH STATEMENT "
            "EXECUTE FUNCTION timeline_links_message_gone()"
        )
        return
    with op.batch_alter_table("timeline_links", recreate="always") as batch:
        batch.drop_constraint(_FK, type_="foreignkey")
    op.execute(
        "CREATE TRIGGER messages_timeline_links_gone AFTER DELETE ON messages BEGIN "
        "DELETE FROM timeline_links WHERE message_id = OLD.id; END"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER messages_timeline_links_gone ON messages")
        op.execute("DROP FUNCTION timeline_links_message_gone()")
        op.execute(
            "DELETE FROM timeline_links l WHERE NOT EXISTS "
            "(SELECT 1 FROM messages m WHERE m.id = l.message_id)"
        )
        op.create_foreign_key(
            _FK, "timeline_links", "messages", ["message_id"], ["id"], ondelete="CASCADE"
        )
        return
    op.execute("DROP TRIGGER messages_timeline_links_gone")
    op.execute("DELETE FROM timeline_links WHERE message_id NOT IN (SELECT id FROM messages)")
    with op.batch_alter_table("timeline_links", recreate="always") as batch:
        batch.create_foreign_key(_FK, "messages", ["message_id"], ["id"], ondelete="CASCADE")
