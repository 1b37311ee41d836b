"""Tables for synced mail: threads, messages, their folder locations, references and attachments.

Same :class:`~correspond.store.tables.Base` as accounts and folders (migration ``0002``).

- One row in ``messages`` per mailbox message per account, whatever the number of folders it sits
  in: ``UNIQUE(account_id, dedupe_key)`` is what makes invariant 2 ("nothing duplicated") hold
  even when two writers race.
- ``message_locations`` says where it lives: ``UNIQUE(folder_id, uid)`` (a UID names one message
  in a folder, RFC 3501 §2.3.1.1). UID and MODSEQ are 64-bit (RFC 7162 §3.1.6).
- ``message_refs`` indexes every Message-ID a message points at (In-Reply-To and References), so
  a parent that arrives *after* its replies (backfill walks newest first) finds them.
- ``attachments`` never store a file name as a path: the body is a content-addressed blob
  (``blob_key``) or, above the size limit, only metadata (``blob_key`` NULL, ``section`` kept so
  it can be fetched later).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.sql.elements import ColumnElement

from correspond.store.tables import Base, utcnow

__all__ = [
    "GONE_REASONS",
    "MESSAGE_DIRECTIONS",
    "MESSAGE_STATES",
    "AttachmentRow",
    "MessageLocationRow",
    "MessageRefRow",
    "MessageRow",
    "MessageSubjectKeyRow",
    "ThreadRow",
    "list_sort_at",
    "shown",
]

MESSAGE_STATES = ("active", "archived", "deleted")
#: Why a message has no location left: ``expunged`` (not in any folder of the mailbox, as far as
#: the unsynced folders were searched), ``moved`` (found in a folder that is not synced),
#: ``unsynced`` (its folder stopped being synced or vanished), ``unknown`` (no Message-ID to
#: look for, or the search was not possible).
GONE_REASONS = ("expunged", "moved", "unsynced", "unknown")
MESSAGE_DIRECTIONS = ("inbound", "outbound")

# 64-bit ids on PostgreSQL; SQLite only auto-increments a column declared exactly INTEGER.
_Id = BigInteger().with_variant(Integer(), "sqlite")


def list_sort_at(
    date: datetime | None, internaldate: datetime | None, created_at: datetime
) -> datetime:
    """A message's place in lists (newest first): its Date, else INTERNALDATE, else the time
    it was stored (broken mail may have neither). Stored as ``sort_at`` so lists are served by
    an index instead of sorting every message of the account."""
    if date is not None:
        return date
    if internaldate is not None:
        return internaldate
    return created_at


def shown(state: Any) -> ColumnElement[bool]:
    """The one filter every list, thread, inbox view, timeline, search and notification query
    applies to ``messages.state`` (``state``: the column, of the table or of an alias): a
    ``deleted`` message is hidden everywhere until it is restored or purged, and is still read
    by id (with its state)."""
    return cast("ColumnElement[bool]", state != "deleted")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class ThreadRow(Base):
    """A conversation. ``gm_thrid`` is Gmail's X-GM-THRID when the server has one."""

    __tablename__ = "threads"
    __table_args__ = (Index("ix_threads_account_last", "account_id", "last_message_at"),)

    id: Mapped[int] = mapped_column(_Id, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    subject: Mapped[str] = mapped_column(Text, default="")
    gm_thrid: Mapped[int | None] = mapped_column(BigInteger)
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    first_message_at: Mapped[datetime | None] = mapped_column()
    last_message_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"ThreadRow(id={self.id!r}, subject={self.subject!r})"


class MessageRow(Base):
    """One mail message, however many folders hold it."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("account_id", "dedupe_key"),
        CheckConstraint(_in("state", MESSAGE_STATES), name="state"),
        CheckConstraint(_in("direction", MESSAGE_DIRECTIONS), name="direction"),
        Index("ix_messages_account_message_id", "account_id", "message_id_header"),
        Index("ix_messages_account_subject", "account_id", "normalized_subject"),
        Index("ix_messages_account_date", "account_id", "date"),
        # The list order (newest first, ties by id) within an account and within a thread:
        # a page is one index range scan, however big the mailbox (migration 0006).
        Index("ix_messages_account_sort", "account_id", "sort_at", "id"),
        Index("ix_messages_thread_sort", "thread_id", "sort_at", "id"),
        # The purge's scan (migration 0016): only deleted messages have a deleted_at.
        Index("ix_messages_deleted_at", "deleted_at"),
    )

    id: Mapped[int] = mapped_column(_Id, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    thread_id: Mapped[int | None] = mapped_column(ForeignKey("threads.id", ondelete="SET NULL"))
    dedupe_key: Mapped[str] = mapped_column(Text)
    message_id_header: Mapped[str | None] = mapped_column(Text)
    in_reply_to: Mapped[str | None] = mapped_column(Text)
    # Not "references": a reserved word in SQL.
    reference_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    subject: Mapped[str] = mapped_column(Text, default="")
    normalized_subject: Mapped[str] = mapped_column(Text, default="")
    from_name: Mapped[str | None] = mapped_column(Text)
    from_email: Mapped[str | None] = mapped_column(String(320))
    # Address lists as JSON [{"name": ..., "email": ...}]: read whole, never queried inside.
    sender: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    reply_to: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    to_addrs: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    cc_addrs: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    bcc_addrs: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    participants: Mapped[list[str]] = mapped_column(JSON, default=list)
    date: Mapped[datetime | None] = mapped_column()
    internaldate: Mapped[datetime | None] = mapped_column()
    snippet: Mapped[str] = mapped_column(Text, default="")
    text_body: Mapped[str | None] = mapped_column(Text)
    # Stored as received; sanitized when rendered (DESIGN.md invariant 6).
    html_body: Mapped[str | None] = mapped_column(Text)
    flags: Mapped[list[str]] = mapped_column(JSON, default=list)
    state: Mapped[str] = mapped_column(String(10), default="active")
    direction: Mapped[str] = mapped_column(String(10), default="inbound")
    size: Mapped[int | None] = mapped_column(BigInteger)
    raw_blob_key: Mapped[str | None] = mapped_column(String(64))
    # True when the message was above max_message_bytes: headers and text only, no raw blob.
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    gm_msgid: Mapped[int | None] = mapped_column(BigInteger)
    gm_thrid: Mapped[int | None] = mapped_column(BigInteger)
    defects: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Set when the last location went (migration 0005): ``gone_reason`` is one of
    # GONE_REASONS, or NULL while the engine has not yet looked for it in the unsynced folders.
    gone_from_mailbox_at: Mapped[datetime | None] = mapped_column()
    gone_reason: Mapped[str | None] = mapped_column(String(40))
    #: When the message became ``deleted`` (NULL otherwise); purged
    #: ``Settings.deleted_retention_days`` later (migration 0016).
    deleted_at: Mapped[datetime | None] = mapped_column()
    #: The synced folders (ids) it sat in when its last location went (to Trash, another
    #: folder, or expunged): where a restore puts it back, and the "before" of the two-way
    #: rule when it turns up again. NULL while it has a location.
    home_folder_ids: Mapped[list[int] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: Where the message sits in lists: Date, else INTERNALDATE, else when it was stored
    #: (:func:`list_sort_at`). Set once at insert; those three never change afterwards.
    sort_at: Mapped[datetime] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    locations: Mapped[list[MessageLocationRow]] = relationship(
        back_populates="message", cascade="all, delete-orphan", passive_deletes=True
    )
    attachments: Mapped[list[AttachmentRow]] = relationship(
        back_populates="message",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="AttachmentRow.id",
    )

    def __repr__(self) -> str:
        return f"MessageRow(id={self.id!r}, subject={self.subject!r})"


class MessageLocationRow(Base):
    """Message ``message_id`` is UID ``uid`` in folder ``folder_id`` (under that folder's
    current UIDVALIDITY). ``flags`` are this copy's flags, the base of the flag diff."""

    __tablename__ = "message_locations"
    __table_args__ = (
        UniqueConstraint("folder_id", "uid"),
        Index("ix_message_locations_message", "message_id"),
        # A folder's list order: the message's sort_at is copied here (one message may sit in
        # many folders), so a folder's page is one index range scan (migration 0006).
        Index("ix_message_locations_folder_sort", "folder_id", "sort_at", "message_id"),
    )

    id: Mapped[int] = mapped_column(_Id, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    folder_id: Mapped[int] = mapped_column(ForeignKey("folders.id", ondelete="CASCADE"))
    uid: Mapped[int] = mapped_column(BigInteger)
    modseq: Mapped[int | None] = mapped_column(BigInteger)
    flags: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: The message's :attr:`MessageRow.sort_at`, copied (it never changes).
    sort_at: Mapped[datetime] = mapped_column()

    message: Mapped[MessageRow] = relationship(back_populates="locations")


class MessageRefRow(Base):
    """Message ``message_id`` refers to the Message-ID ``ref`` (In-Reply-To or References)."""

    __tablename__ = "message_refs"
    __table_args__ = (
        UniqueConstraint("message_id", "ref"),
        Index("ix_message_refs_account_ref", "account_id", "ref"),
    )

    id: Mapped[int] = mapped_column(_Id, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    ref: Mapped[str] = mapped_column(Text)


class MessageSubjectKeyRow(Base):
    """Message ``message_id`` (dated ``date``) can join a conversation by subject under ``key``:
    one row per (normalised subject, counterpart) pair
    (:func:`correspond.mail.threading.subject_keys`), so the subject fallback finds only the
    messages that share a participant other than the owner, however common the subject."""

    __tablename__ = "message_subject_keys"
    __table_args__ = (
        Index("ix_message_subject_keys_lookup", "account_id", "key", "date"),
        Index("ix_message_subject_keys_message", "message_id"),
    )

    id: Mapped[int] = mapped_column(_Id, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(32))
    date: Mapped[datetime] = mapped_column()


class AttachmentRow(Base):
    """An attachment (or inline part) of a message; ``blob_key`` NULL means "still remote"."""

    __tablename__ = "attachments"
    __table_args__ = (Index("ix_attachments_message", "message_id"),)

    id: Mapped[int] = mapped_column(_Id, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    # Display only; sanitised on download, never a path.
    filename: Mapped[str | None] = mapped_column(Text)
    content_type: Mapped[str] = mapped_column(String(255), default="application/octet-stream")
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    content_id: Mapped[str | None] = mapped_column(Text)
    inline: Mapped[bool] = mapped_column(Boolean, default=False)
    blob_key: Mapped[str | None] = mapped_column(String(64))
    section: Mapped[str | None] = mapped_column(String(64))

    message: Mapped[MessageRow] = relationship(back_populates="attachments")
