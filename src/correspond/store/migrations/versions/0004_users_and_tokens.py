"""Users, API tokens and sign-in sessions; accounts gain an owner.

Accounts that exist when this runs have no owner yet: there are no users at migration time.
The first admin created (``correspond users create EMAIL --admin``) takes every ownerless
account in the same transaction (``store.users.UserStore.create_user``), so existing accounts
belong to the first admin as soon as there is one. Until then only admins could see them, and
there are none.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from correspond.store.tables import UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    # On SQLite a downgrade leaves `users` and `accounts.owner_id` in place (see there):
    # upgrading again reuses them.
    if "users" not in sa.inspect(bind).get_table_names():
        _create_users()
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(20), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("last_used_at", UtcDateTime(), nullable=True),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_api_tokens_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_index(op.f("ix_api_tokens_user_id"), "api_tokens", ["user_id"])
    op.create_table(
        "user_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_sessions")),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_user_sessions_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("token_hash", name=op.f("uq_user_sessions_token_hash")),
    )
    op.create_index(op.f("ix_user_sessions_user_id"), "user_sessions", ["user_id"])
    # A plain ADD COLUMN on every backend: SQLite's batch mode would copy and drop `accounts`,
    # and with foreign keys on, dropping it would cascade to every folder and message. SQLite
    # accepts a REFERENCES clause on an added column whose default is NULL (no ON DELETE: its
    # reflection would not see one, and users are disabled, never deleted, so none is needed).
    if bind.dialect.name == "sqlite":
        if "owner_id" not in {c["name"] for c in sa.inspect(bind).get_columns("accounts")}:
            op.execute(
                "ALTER TABLE accounts ADD COLUMN owner_id INTEGER "
                "CONSTRAINT fk_accounts_owner_id_users REFERENCES users (id)"
            )
    else:
        op.add_column("accounts", sa.Column("owner_id", sa.Integer(), nullable=True))
        op.create_foreign_key(
            op.f("fk_accounts_owner_id_users"), "accounts", "users", ["owner_id"], ["id"]
        )
    op.create_index(op.f("ix_accounts_owner_id"), "accounts", ["owner_id"])


def _create_users() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("email_key", sa.String(320), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("password_hash", sa.String(200), nullable=True),
        sa.Column("role", sa.String(10), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email_key", name=op.f("uq_users_email_key")),
        sa.CheckConstraint("role IN ('admin', 'member')", name=op.f("ck_users_role")),
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_accounts_owner_id"), table_name="accounts")
    op.drop_index(op.f("ix_user_sessions_user_id"), table_name="user_sessions")
    op.drop_table("user_sessions")
    op.drop_index(op.f("ix_api_tokens_user_id"), table_name="api_tokens")
    op.drop_table("api_tokens")
    if op.get_bind().dialect.name == "sqlite":
        # SQLite cannot drop a column with a foreign key; rebuilding `accounts` would cascade
        # to every folder and message (foreign keys are on inside the migration's transaction);
        # and with `users` gone every write to `accounts` would fail on the dangling reference.
        # So `users` and `accounts.owner_id` stay (the older code ignores them) and an upgrade
        # takes them back as they are.
        return
    op.drop_constraint(op.f("fk_accounts_owner_id_users"), "accounts", type_="foreignkey")
    op.drop_column("accounts", "owner_id")
    op.drop_table("users")
