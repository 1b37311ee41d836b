"""Table definitions (SQLAlchemy 2 typed declarative). Row classes end in ``Row``.

Later tables (messages, locations, ...) extend the same :class:`Base` from their own modules, and
each schema change ships as an Alembic migration in ``store/migrations/versions``.
UIDs, UIDVALIDITY, UIDNEXT and MODSEQ are 64-bit columns: RFC 3501 §2.3.1.1 makes UIDs 32-bit
unsigned (too big for a signed 32-bit column) and RFC 7162 §3.1.6 allows mod-sequences up to
2^63-1.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

__all__ = [
    "ACCOUNT_SHARING",
    "ACCOUNT_STATES",
    "FOLDERS_MODES",
    "FOLDER_ROLES",
    "THREAD_ORDERS",
    "USER_ROLES",
    "AccountRow",
    "ApiTokenRow",
    "Base",
    "FolderRow",
    "TeamMemberRow",
    "TeamRow",
    "UserRow",
    "UserSessionRow",
    "UtcDateTime",
    "utcnow",
]

ACCOUNT_STATES = (
    "connecting",
    "backfilling",
    "live",
    "paused",
    "auth_failed",
    "error",
    "disconnected",
)
FOLDERS_MODES = ("all", "selected")
USER_ROLES = ("admin", "member")
#: Who else sees a personal account: nobody, the owner's teams in full, or only its metadata.
ACCOUNT_SHARING = ("private", "team", "metadata")
#: How a user reads a thread: newest message on top, or oldest on top (newest at the bottom).
THREAD_ORDERS = ("oldest_first", "newest_first")
FOLDER_ROLES = ("inbox", "sent", "drafts", "trash", "archive", "junk", "all")

# Stable constraint names so migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Now, timezone-aware UTC (every timestamp in the store is UTC)."""
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and always read back timezone-aware.

    SQLite keeps no zone, so naive values read from it are UTC by construction.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        # SQLite compares timestamps as text: store them without an offset suffix.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base shared by every table of the store."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: dict[Any, Any] = {datetime: UtcDateTime()}


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class AccountRow(Base):
    """A mailbox Correspond syncs. ``secret_encrypted`` holds a Fernet token, never plaintext."""

    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint(_in("state", ACCOUNT_STATES), name="state"),
        CheckConstraint(_in("folders_mode", FOLDERS_MODES), name="folders_mode"),
        CheckConstraint("auth_kind IN ('password', 'oauth2')", name="auth_kind"),
        CheckConstraint("imap_security IN ('tls', 'starttls', 'plain')", name="imap_security"),
        CheckConstraint("smtp_security IN ('tls', 'starttls', 'plain')", name="smtp_security"),
        CheckConstraint(_in("sharing", ACCOUNT_SHARING), name="sharing"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    # The user who owns the account (None: added before any user existed; the first admin
    # created takes it, see store.users).
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    # Shared with the owner's teams (see store.visibility): private, team (full) or metadata.
    sharing: Mapped[str] = mapped_column(String(10), default="private", server_default="private")
    # A team inbox: every member of this team sees the account in full.
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"), index=True)
    preset: Mapped[str] = mapped_column(String(40))
    email: Mapped[str] = mapped_column(String(320))
    imap_host: Mapped[str] = mapped_column(String(255))
    imap_port: Mapped[int] = mapped_column(Integer)
    imap_security: Mapped[str] = mapped_column(String(10))
    smtp_host: Mapped[str | None] = mapped_column(String(255))
    smtp_port: Mapped[int] = mapped_column(Integer)
    smtp_security: Mapped[str] = mapped_column(String(10))
    username: Mapped[str] = mapped_column(String(320))
    auth_kind: Mapped[str] = mapped_column(String(10), default="password")
    secret_encrypted: Mapped[bytes | None] = mapped_column(LargeBinary)
    allow_plaintext: Mapped[bool] = mapped_column(Boolean, default=False)
    trusted_cert_pem: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(20), default="connecting")
    state_detail: Mapped[str] = mapped_column(Text, default="")
    folders_mode: Mapped[str] = mapped_column(String(10), default="all")
    window_days: Mapped[int] = mapped_column(Integer, default=60)
    delete_in_crm_on_remote_delete: Mapped[bool] = mapped_column(Boolean, default=False)
    delete_remote_on_crm_delete: Mapped[bool] = mapped_column(Boolean, default=False)
    archive_in_crm_on_remote_archive: Mapped[bool] = mapped_column(Boolean, default=True)
    archive_remote_on_crm_archive: Mapped[bool] = mapped_column(Boolean, default=True)
    connected_at: Mapped[datetime | None] = mapped_column()
    last_sync_at: Mapped[datetime | None] = mapped_column()
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    # Set by a disconnect (migration 0017): no credentials, folders or locations; the state
    # is ``paused`` (never run) until a reconnect clears it.
    disconnected_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    folders: Mapped[list[FolderRow]] = relationship(
        back_populates="account", cascade="all, delete-orphan", passive_deletes=True
    )

    def __repr__(self) -> str:
        # Never show the secret, even encrypted.
        return f"AccountRow(id={self.id!r}, name={self.name!r}, state={self.state!r})"


class FolderRow(Base):
    """A remote folder of an account, identified by its raw (byte-exact) name."""

    __tablename__ = "folders"
    __table_args__ = (
        UniqueConstraint("account_id", "remote_name_raw"),
        CheckConstraint(f"role IS NULL OR {_in('role', FOLDER_ROLES)}", name="role"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    remote_name_raw: Mapped[bytes] = mapped_column(LargeBinary)
    name: Mapped[str] = mapped_column(Text)
    delimiter: Mapped[str | None] = mapped_column(String(8))
    flags: Mapped[list[str]] = mapped_column(JSON, default=list)
    role: Mapped[str | None] = mapped_column(String(10))
    selectable: Mapped[bool] = mapped_column(Boolean, default=True)
    selected: Mapped[bool] = mapped_column(Boolean, default=False)
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    uidnext: Mapped[int | None] = mapped_column(BigInteger)
    highestmodseq: Mapped[int | None] = mapped_column(BigInteger)
    exists_count: Mapped[int | None] = mapped_column(BigInteger)
    backfill_done: Mapped[bool] = mapped_column(Boolean, default=False)
    backfill_low_uid: Mapped[int | None] = mapped_column(BigInteger)
    backfill_total: Mapped[int | None] = mapped_column(BigInteger)
    backfill_done_count: Mapped[int] = mapped_column(BigInteger, default=0)
    removed: Mapped[bool] = mapped_column(Boolean, default=False)
    last_seen_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    account: Mapped[AccountRow] = relationship(back_populates="folders")

    def __repr__(self) -> str:
        return f"FolderRow(id={self.id!r}, account_id={self.account_id!r}, name={self.name!r})"


class UserRow(Base):
    """A person who signs in to the API. ``email_key`` (the address lower-cased) is unique, so
    two users never differ only by case; ``password_hash`` is an argon2id hash (None: the user
    signs in with API tokens only)."""

    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(_in("role", USER_ROLES), name="role"),
        CheckConstraint(_in("thread_order", THREAD_ORDERS), name="thread_order"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    email_key: Mapped[str] = mapped_column(String(320), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str | None] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(10), default="member")
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    thread_order: Mapped[str] = mapped_column(
        String(20), default="oldest_first", server_default="oldest_first"
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"UserRow(id={self.id!r}, email={self.email!r}, role={self.role!r})"


class ApiTokenRow(Base):
    """A personal API token: only the SHA-256 of the token is kept (it is shown once)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()

    def __repr__(self) -> str:
        return f"ApiTokenRow(id={self.id!r}, user_id={self.user_id!r}, name={self.name!r})"


class UserSessionRow(Base):
    """A signed-in browser session: only the SHA-256 of the cookie value is kept."""

    __tablename__ = "user_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()

    def __repr__(self) -> str:
        return f"UserSessionRow(id={self.id!r}, user_id={self.user_id!r})"


class TeamRow(Base):
    """A group of users (a user may be in several). ``name_key`` (the name lower-cased) is
    unique, so two teams never differ only by case."""

    __tablename__ = "teams"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    name_key: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"TeamRow(id={self.id!r}, name={self.name!r})"


class TeamMemberRow(Base):
    """A user's membership of a team (the pair is the key; user_id is indexed for "my teams")."""

    __tablename__ = "team_members"

    team_id: Mapped[int] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"TeamMemberRow(team_id={self.team_id!r}, user_id={self.user_id!r})"
