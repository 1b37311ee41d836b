"""Outbound identities and message templates (migration ``0018_identities_templates``).

``identities``: the addresses a user sends as. Kind ``account``: through a synced account's
own SMTP server and credentials (``account_id``); kind ``smtp``: an outbound-only server of
its own (host, port, ``starttls`` or ``tls``, user name, a secret sealed with the store's key,
never plaintext). At most one ``is_default`` per user (a partial unique index). An identity
is its owner's alone: nobody else sees or uses it (``store.visibility.identity_terms``).

``templates``: a subject and a text and/or HTML body with merge fields (``mail.merge``);
personal (``team_id`` NULL) or shared with one team the owner is in.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from correspond.store.tables import Base, utcnow

__all__ = ["IDENTITY_KINDS", "IDENTITY_SECURITY", "IdentityRow", "TemplateRow"]

IDENTITY_KINDS = ("account", "smtp")
#: Outbound-only servers: STARTTLS (587) or implicit TLS (465). Never plaintext.
IDENTITY_SECURITY = ("starttls", "tls")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class IdentityRow(Base):
    """An address a user sends as. ``secret_encrypted`` holds a Fernet token, never
    plaintext (kind ``smtp`` only: an account identity uses its account's secret)."""

    __tablename__ = "identities"
    __table_args__ = (
        CheckConstraint(_in("kind", IDENTITY_KINDS), name="kind"),
        CheckConstraint(
            f"smtp_security IS NULL OR {_in('smtp_security', IDENTITY_SECURITY)}",
            name="smtp_security",
        ),
        CheckConstraint(
            "(kind = 'account' AND account_id IS NOT NULL) OR "
            "(kind = 'smtp' AND account_id IS NULL AND smtp_host IS NOT NULL "
            "AND smtp_port IS NOT NULL AND smtp_security IS NOT NULL)",
            name="kind_fields",
        ),
        UniqueConstraint("owner_id", "address_key"),
        # One default per user, enforced by the database whatever the code does.
        Index(
            "ix_identities_one_default",
            "owner_id",
            unique=True,
            sqlite_where=text("is_default"),
            postgresql_where=text("is_default"),
        ),
        Index("ix_identities_account_id", "account_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(10))
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    address: Mapped[str] = mapped_column(String(320))
    address_key: Mapped[str] = mapped_column(String(320))
    display_name: Mapped[str] = mapped_column(String(200), default="")
    smtp_host: Mapped[str | None] = mapped_column(String(255))
    smtp_port: Mapped[int | None] = mapped_column(Integer)
    smtp_security: Mapped[str | None] = mapped_column(String(10))
    smtp_username: Mapped[str | None] = mapped_column(String(320))
    secret_encrypted: Mapped[bytes | None] = mapped_column(LargeBinary)
    signature: Mapped[str] = mapped_column(Text, default="")
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    def __repr__(self) -> str:
        # Never the secret, even encrypted.
        return f"IdentityRow(id={self.id!r}, owner_id={self.owner_id!r}, kind={self.kind!r})"


class TemplateRow(Base):
    """A message template: personal, or shared with ``team_id``'s members."""

    __tablename__ = "templates"
    __table_args__ = (
        Index("ix_templates_owner_id", "owner_id"),
        Index("ix_templates_team_id", "team_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id", ondelete="SET NULL"))
    name: Mapped[str] = mapped_column(String(200))
    subject: Mapped[str] = mapped_column(Text, default="")
    body_text: Mapped[str | None] = mapped_column(Text)
    body_html: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    def __repr__(self) -> str:
        return f"TemplateRow(id={self.id!r}, owner_id={self.owner_id!r}, name={self.name!r})"
