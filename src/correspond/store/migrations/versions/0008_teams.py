"""Teams, team memberships, account sharing and team inboxes; users' thread order.

``teams`` (name unique whatever its letter case, through ``name_key``) and ``team_members``
(team, user). ``accounts.sharing`` (private, the default for every existing account; team;
metadata) and ``accounts.team_id`` (a team inbox), ``users.thread_order`` (oldest_first, the
order threads were shown in so far). Columns are added in place on every backend: SQLite's
batch mode would rebuild ``accounts`` and the drop would cascade to its folders and messages.

Revision ID: 0008_teams
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from correspond.store.tables import UtcDateTime

revision = "0008_teams"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    # On SQLite a downgrade leaves the tables and columns in place (see there): upgrading
    # again reuses them.
    if "teams" not in sa.inspect(bind).get_table_names():
        _create_tables()
    if bind.dialect.name == "sqlite":
        _add_columns_sqlite(bind)
    else:
        _add_columns()
    op.create_index(op.f("ix_accounts_team_id"), "accounts", ["team_id"])


def _create_tables() -> None:
    op.create_table(
        "teams",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("name_key", sa.String(100), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_teams")),
        sa.UniqueConstraint("name_key", name=op.f("uq_teams_name_key")),
    )
    op.create_table(
        "team_members",
        sa.Column("team_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("team_id", "user_id", name=op.f("pk_team_members")),
        sa.ForeignKeyConstraint(
            ["team_id"],
            ["teams.id"],
            name=op.f("fk_team_members_team_id_teams"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_team_members_user_id_users"),
            ondelete="CASCADE",
        ),
    )
    op.create_index(op.f("ix_team_members_user_id"), "team_members", ["user_id"])


def _add_columns_sqlite(bind: sa.Connection) -> None:
    # ADD COLUMN with a constant default, a CHECK and a REFERENCES (default NULL) is plain
    # SQLite: no table rebuild.
    accounts = {c["name"] for c in sa.inspect(bind).get_columns("accounts")}
    users = {c["name"] for c in sa.inspect(bind).get_columns("users")}
    if "sharing" not in accounts:
        op.execute(
            "ALTER TABLE accounts ADD COLUMN sharing VARCHAR(10) DEFAULT 'private' NOT NULL "
            "CONSTRAINT ck_accounts_sharing CHECK (sharing IN ('private', 'team', 'metadata'))"
        )
    if "team_id" not in accounts:
        op.execute(
            "ALTER TABLE accounts ADD COLUMN team_id INTEGER "
            "CONSTRAINT fk_accounts_team_id_teams REFERENCES teams (id)"
        )
    if "thread_order" not in users:
        op.execute(
            "ALTER TABLE users ADD COLUMN thread_order VARCHAR(20) DEFAULT 'oldest_first' "
            "NOT NULL CONSTRAINT ck_users_thread_order "
            "CHECK (thread_order IN ('oldest_first', 'newest_first'))"
        )


def _add_columns() -> None:
    op.add_column(
        "accounts",
        sa.Column("sharing", sa.String(10), nullable=False, server_default="private"),
    )
    op.create_check_constraint(
        op.f("ck_accounts_sharing"), "accounts", "sharing IN ('private', 'team', 'metadata')"
    )
    op.add_column("accounts", sa.Column("team_id", sa.Integer(), nullable=True))
    op.create_foreign_key(
        op.f("fk_accounts_team_id_teams"), "accounts", "teams", ["team_id"], ["id"]
    )
    op.add_column(
        "users",
        sa.Column("thread_order", sa.String(20), nullable=False, server_default="oldest_first"),
    )
    op.create_check_constraint(
        op.f("ck_users_thread_order"), "users", "thread_order IN ('oldest_first', 'newest_first')"
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_accounts_team_id"), table_name="accounts")
    if op.get_bind().dialect.name == "sqlite":
        # SQLite cannot drop a column with a foreign key or a CHECK without rebuilding the
        # table (which would cascade to every folder and message): the columns and tables
        # stay, unused by the older code; clear the team inboxes so nothing points anywhere.
        op.execute("UPDATE accounts SET team_id = NULL")
        return
    op.drop_constraint(op.f("ck_users_thread_order"), "users", type_="check")
    op.drop_column("users", "thread_order")
    op.drop_constraint(op.f("fk_accounts_team_id_teams"), "accounts", type_="foreignkey")
    op.drop_column("accounts", "team_id")
    op.drop_constraint(op.f("ck_accounts_sharing"), "accounts", type_="check")
    op.drop_column("accounts", "sharing")
    op.drop_index(op.f("ix_team_members_user_id"), table_name="team_members")
    op.drop_table("team_members")
    op.drop_table("teams")
