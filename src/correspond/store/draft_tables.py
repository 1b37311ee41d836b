"""Drafts (migration ``0024_drafts``): a user's composer state, saved in the CRM.

``drafts``: who may see it (``owner_id``: its owner alone, admins included:
``store.visibility.draft_terms``), where it goes from (an identity or an account), the
recipients as typed (``"Name <a@b>"`` strings), subject, text and HTML, stored attachments by
id (each with an optional content id: an inline image of the HTML), the message it answers
(``in_reply_to_id`` with ``reply_mode``: reply, reply-all or forward), the template it started
from, and its ``size`` (bodies and files, bounded like a message). ``sending_since``: a send
of it is under way (a second one is refused meanwhile). ``sent_outbox_id``: its send was
queued (in the same transaction): the draft is hidden, kept a while so that sending it again
answers with that send. ``draft_files``: files uploaded to a draft, their bytes in the row
(the blob store's collector only knows mail's blobs; a draft's files are small in number and
bounded in size).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from correspond.store.tables import Base, utcnow

__all__ = ["REPLY_MODES", "DraftFileRow", "DraftRow"]

REPLY_MODES = ("reply", "reply-all", "forward")

_Id = BigInteger().with_variant(Integer(), "sqlite")


class DraftRow(Base):
    """A saved draft (see the module docstring)."""

    __tablename__ = "drafts"
    __table_args__ = (
        CheckConstraint(
            "reply_mode IS NULL OR reply_mode IN ('reply', 'reply-all', 'forward')",
            name="reply_mode",
        ),
        Index("ix_drafts_owner_updated", "owner_id", "updated_at"),
    )

    id: Mapped[int] = mapped_column(_Id, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    identity_id: Mapped[int | None] = mapped_column(
        ForeignKey("identities.id", ondelete="SET NULL")
    )
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id", ondelete="SET NULL"))
    to_addrs: Mapped[list[str]] = mapped_column(JSON, default=list)
    cc_addrs: Mapped[list[str]] = mapped_column(JSON, default=list)
    bcc_addrs: Mapped[list[str]] = mapped_column(JSON, default=list)
    subject: Mapped[str | None] = mapped_column(Text)
    text_body: Mapped[str | None] = mapped_column(Text)
    html_body: Mapped[str | None] = mapped_column(Text)
    #: ``[{"id": attachment id, "content_id": str | None}]``
    attachments: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    in_reply_to_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL")
    )
    reply_mode: Mapped[str | None] = mapped_column(String(10))
    template_id: Mapped[int | None] = mapped_column(ForeignKey("templates.id", ondelete="SET NULL"))
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    sending_since: Mapped[datetime | None] = mapped_column()
    #: The outbox row of its send (migration ``0027_sendpolish``): set in the transaction that
    #: queues it; from then on the draft is hidden (``draft_terms``) and kept only so that a
    #: second send of it answers with that send (``DraftStore.claim``).
    sent_outbox_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class DraftFileRow(Base):
    """A file uploaded to a draft (with ``content_id``: an inline image of its HTML)."""

    __tablename__ = "draft_files"
    __table_args__ = (Index("ix_draft_files_draft_id", "draft_id"),)

    id: Mapped[int] = mapped_column(_Id, primary_key=True)
    draft_id: Mapped[int] = mapped_column(ForeignKey("drafts.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    content_id: Mapped[str | None] = mapped_column(String(250))
    size: Mapped[int] = mapped_column(BigInteger)
    content: Mapped[bytes] = mapped_column(LargeBinary)
