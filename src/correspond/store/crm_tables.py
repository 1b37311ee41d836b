"""Tables for CRM records, the participant index and timeline links (migration ``0009``).

- Records (``contacts``, ``companies``, ``deals``, ``activities``) are the organisation's:
  every signed-in user sees them. ``external_id`` (the host CRM's id) is unique per kind.
  An address belongs to at most one contact (``contact_emails.address`` unique) and a domain
  to at most one company: the linker must know whose timeline a message goes on.
- ``message_participants`` is the index the linker fills from the ``messages`` JSON columns
  in the background (never at ingest): one row per (message, normalised address, role),
  with the address's domain for company matches.
- ``timeline_links``: message ``message_id`` is on the timeline of ``target_kind``
  ``target_id`` (``auto`` by the rules, or ``manual``: never undone by them). ``sort_at`` is
  the message's, copied (it never changes), so a timeline page is one index range scan.
- ``thread_deal_links``: a person linked (``linked``) or unlinked a thread and a deal by
  hand; the rules respect both, for the thread's later messages too.
- ``crm_linker_state`` (one row: the last message id indexed) and ``crm_relink_queue``
  (addresses and domains whose messages must be linked again, written in the same
  transaction as the record change, with how far the linker got).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
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
from sqlalchemy.orm import Mapped, mapped_column

from correspond.rules.crm import ACTIVITY_KINDS, DEAL_STATUSES, ROLES, TARGET_KINDS
from correspond.store.tables import Base, utcnow

__all__ = [
    "ActivityParticipantRow",
    "ActivityRow",
    "CompanyDomainRow",
    "CompanyRow",
    "ContactEmailRow",
    "ContactRow",
    "DealContactRow",
    "DealRow",
    "LinkerStateRow",
    "MessageParticipantRow",
    "RelinkQueueRow",
    "ThreadDealLinkRow",
    "TimelineLinkRow",
]

_Id = BigInteger().with_variant(Integer(), "sqlite")
CONTACT_ORIGINS = ("manual", "import", "auto")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class CompanyRow(Base):
    __tablename__ = "companies"

    id: Mapped[int] = mapped_column(_Id, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    external_id: Mapped[str | None] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class CompanyDomainRow(Base):
    __tablename__ = "company_domains"

    id: Mapped[int] = mapped_column(_Id, primary_key=True)
    company_id: Mapped[int] = mapped_column(
        ForeignKey("companies.id", ondelete="CASCADE"), index=True
    )
    domain: Mapped[str] = mapped_column(String(255), unique=True)


class ContactRow(Base):
    __tablename__ = "contacts"
    __table_args__ = (CheckConstraint(_in("origin", CONTACT_ORIGINS), name="origin"),)

    id: Mapped[int] = mapped_column(_Id, primary_key=True)
    name: Mapped[str] = mapped_column(Text, default="")
    company_id: Mapped[int | None] = mapped_column(
        ForeignKey("companies.id", ondelete="SET NULL"), index=True
    )
    external_id: Mapped[str | None] = mapped_column(String(200), unique=True)
    #: ``manual`` (made or last changed by a person), ``import`` (by a bulk import), ``auto``
    #: (made by contact auto-creation and not touched since).
    origin: Mapped[str] = mapped_column(String(8), default="manual", server_default="manual")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ContactDismissalRow(Base):
    """An address whose contact was deleted: contact auto-creation never makes it again
    (until a person makes a contact with it, which removes the row)."""

    __tablename__ = "contact_dismissals"

    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    dismissed_at: Mapped[datetime] = mapped_column(default=utcnow)


class ContactEmailRow(Base):
    __tablename__ = "contact_emails"

    id: Mapped[int] = mapped_column(_Id, primary_key=True)
    contact_id: Mapped[int] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), index=True
    )
    address: Mapped[str] = mapped_column(String(320), unique=True)


class DealRow(Base):
    __tablename__ = "deals"
    __table_args__ = (CheckConstraint(_in("status", DEAL_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(_Id, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(10), default="open")
    company_id: Mapped[int | None] = mapped_column(
        ForeignKey("companies.id", ondelete="SET NULL"), index=True
    )
    external_id: Mapped[str | None] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class DealContactRow(Base):
    __tablename__ = "deal_contacts"
    __table_args__ = (Index("ix_deal_contacts_contact", "contact_id"),)

    deal_id: Mapped[int] = mapped_column(
        ForeignKey("deals.id", ondelete="CASCADE"), primary_key=True
    )
    contact_id: Mapped[int] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True
    )


class ActivityRow(Base):
    __tablename__ = "activities"
    __table_args__ = (CheckConstraint(_in("kind", ACTIVITY_KINDS), name="kind"),)

    id: Mapped[int] = mapped_column(_Id, primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))
    title: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime | None] = mapped_column()
    external_id: Mapped[str | None] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ActivityParticipantRow(Base):
    __tablename__ = "activity_participants"
    __table_args__ = (Index("ix_activity_participants_address", "address"),)

    activity_id: Mapped[int] = mapped_column(
        ForeignKey("activities.id", ondelete="CASCADE"), primary_key=True
    )
    address: Mapped[str] = mapped_column(String(320), primary_key=True)


class MessageParticipantRow(Base):
    __tablename__ = "message_participants"
    __table_args__ = (
        CheckConstraint(_in("role", ROLES), name="role"),
        Index("ix_message_participants_address", "address", "message_id"),
        Index("ix_message_participants_domain", "domain", "message_id"),
    )

    message_id: Mapped[int] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    )
    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    role: Mapped[str] = mapped_column(String(4), primary_key=True)
    domain: Mapped[str] = mapped_column(String(255))


class TimelineLinkRow(Base):
    __tablename__ = "timeline_links"
    __table_args__ = (
        UniqueConstraint("message_id", "target_kind", "target_id"),
        CheckConstraint(_in("target_kind", TARGET_KINDS), name="target_kind"),
        CheckConstraint("source IN ('auto', 'manual')", name="source"),
        Index("ix_timeline_links_target", "target_kind", "target_id", "sort_at", "message_id"),
    )

    id: Mapped[int] = mapped_column(_Id, primary_key=True)
    # No foreign key: its per-row check was most of a large re-link's time. The linker only
    # writes links joined to their message, and a trigger on ``messages`` removes a deleted
    # message's links (migration 0021).
    message_id: Mapped[int] = mapped_column(_Id)
    target_kind: Mapped[str] = mapped_column(String(10))
    target_id: Mapped[int] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(6), default="auto")
    sort_at: Mapped[datetime] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ThreadDealLinkRow(Base):
    __tablename__ = "thread_deal_links"
    __table_args__ = (Index("ix_thread_deal_links_deal", "deal_id"),)

    thread_id: Mapped[int] = mapped_column(
        ForeignKey("threads.id", ondelete="CASCADE"), primary_key=True
    )
    deal_id: Mapped[int] = mapped_column(
        ForeignKey("deals.id", ondelete="CASCADE"), primary_key=True
    )
    linked: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LinkerStateRow(Base):
    __tablename__ = "crm_linker_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    indexed_through: Mapped[int] = mapped_column(BigInteger, default=0)


class RelinkQueueRow(Base):
    __tablename__ = "crm_relink_queue"

    id: Mapped[int] = mapped_column(_Id, primary_key=True)
    address: Mapped[str | None] = mapped_column(String(320))
    domain: Mapped[str | None] = mapped_column(String(255))
    #: Or one message whose addresses changed after it was indexed (a Sent copy brought Bcc).
    message_id: Mapped[int | None] = mapped_column(BigInteger)
    #: Messages up to this id are linked again already (a crash resumes after it).
    done_through: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
