"""Schemas of ``/identities``, ``/templates`` and ``/compose/defaults``.

A password is write-only: sealed with the store's key, never returned (``has_password``)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from correspond.api.security import MAX_ID
from correspond.mail.merge import MAX_TEMPLATE_CHARS, fields_used
from correspond.store.compose import MAX_SIGNATURE, MAX_TEMPLATE_NAME, Identity, Template

__all__ = [
    "ComposeDefaults",
    "IdentityCreate",
    "IdentityPublic",
    "IdentityUpdate",
    "RenderedPublic",
    "SmtpPublic",
    "TemplateCreate",
    "TemplatePublic",
    "TemplateRenderRequest",
    "TemplateUpdate",
    "identity_public",
    "template_public",
]

Security = Literal["starttls", "tls"]


def _no_nul(value: SecretStr | None) -> SecretStr | None:
    if value is not None and "\x00" in value.get_secret_value():
        raise ValueError("the password contains a NUL character")
    return value


class IdentityCreate(BaseModel):
    """A new identity. ``kind`` ``account``: sends through the account named ``account`` (one
    of the caller's, or a team inbox of theirs) as its address or an alias (``address``).
    ``smtp``: an outbound-only server; the settings are tested (EHLO, STARTTLS or TLS,
    AUTH) before anything is saved."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["account", "smtp"]
    account: str | None = Field(default=None, max_length=100)
    address: str | None = Field(default=None, max_length=320)
    display_name: str = Field(default="", max_length=200)
    signature: str = Field(default="", max_length=MAX_SIGNATURE)
    smtp_host: str | None = Field(default=None, max_length=255)
    smtp_port: int | None = Field(default=None, ge=1, le=65535)
    smtp_security: Security = "starttls"
    smtp_username: str | None = Field(default=None, max_length=320)
    password: SecretStr | None = Field(default=None, min_length=1, max_length=1000)
    make_default: bool = False

    _password = field_validator("password")(_no_nul)


class IdentityUpdate(BaseModel):
    """A partial change: only the fields sent change. New SMTP settings (host, port,
    security, user name) without ``password`` drop the stored password (it was entered for
    the old server); with a password (new or kept) they are tested before being saved."""

    model_config = ConfigDict(extra="forbid")

    display_name: str | None = Field(default=None, max_length=200)
    signature: str | None = Field(default=None, max_length=MAX_SIGNATURE)
    smtp_host: str | None = Field(default=None, max_length=255)
    smtp_port: int | None = Field(default=None, ge=1, le=65535)
    smtp_security: Security | None = None
    smtp_username: str | None = Field(default=None, max_length=320)
    password: SecretStr | None = Field(default=None, min_length=1, max_length=1000)

    _password = field_validator("password")(_no_nul)


class SmtpPublic(BaseModel):
    host: str | None
    port: int | None
    security: str | None
    username: str | None


class IdentityPublic(BaseModel):
    id: int
    kind: str
    account: str | None = Field(description="The account it sends through (kind account)")
    address: str
    display_name: str
    signature: str
    is_default: bool
    smtp: SmtpPublic
    has_password: bool
    created_at: datetime
    updated_at: datetime


def identity_public(i: Identity) -> IdentityPublic:
    return IdentityPublic(
        id=i.id,
        kind=i.kind,
        account=i.account_name,
        address=i.address,
        display_name=i.display_name,
        signature=i.signature,
        is_default=i.is_default,
        smtp=SmtpPublic(
            host=i.smtp_host, port=i.smtp_port, security=i.smtp_security, username=i.smtp_username
        ),
        has_password=i.has_secret,
        created_at=i.created_at,
        updated_at=i.updated_at,
    )


class ComposeDefaults(BaseModel):
    """What the composer opens with: the default identity preselected, every identity to
    switch to, the size limit checked before sending, and the merge fields templates take."""

    identity: IdentityPublic | None
    identities: list[IdentityPublic]
    size_limit: int
    merge_fields: dict[str, str]


class TemplateCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=MAX_TEMPLATE_NAME)
    subject: str = Field(default="", max_length=2000)
    text: str | None = Field(default=None, max_length=MAX_TEMPLATE_CHARS)
    html: str | None = Field(default=None, max_length=MAX_TEMPLATE_CHARS)
    team_id: int | None = Field(
        default=None, ge=1, le=MAX_ID, description="Share with this team (one you are in)"
    )


class TemplateUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=MAX_TEMPLATE_NAME)
    subject: str | None = Field(default=None, max_length=2000)
    text: str | None = Field(default=None, max_length=MAX_TEMPLATE_CHARS)
    html: str | None = Field(default=None, max_length=MAX_TEMPLATE_CHARS)
    team_id: int | None = Field(
        default=None, ge=0, le=MAX_ID, description="Share with this team; 0 makes it personal"
    )


class TemplatePublic(BaseModel):
    id: int
    name: str
    subject: str
    text: str | None
    html: str | None
    team_id: int | None = Field(description="Shared with this team; null: personal")
    owner_id: int
    can_edit: bool
    fields: list[str] = Field(description="The merge fields it uses")
    created_at: datetime
    updated_at: datetime


def template_public(t: Template) -> TemplatePublic:
    used: dict[str, None] = {}
    for part in (t.subject, t.text, t.html):
        if part:
            used.update(dict.fromkeys(fields_used(part)))
    return TemplatePublic(
        id=t.id,
        name=t.name,
        subject=t.subject,
        text=t.text,
        html=t.html,
        team_id=t.team_id,
        owner_id=t.owner_id,
        can_edit=t.can_edit,
        fields=list(used),
        created_at=t.created_at,
        updated_at=t.updated_at,
    )


class TemplateRenderRequest(BaseModel):
    """The records whose fields fill the template (all optional): a contact, a company
    (default: the deal's, else the contact's), a deal, and the identity sending (default: the
    caller's default identity; its signature is ``{{user.signature}}``)."""

    model_config = ConfigDict(extra="forbid")

    contact_id: int | None = Field(default=None, ge=1, le=MAX_ID)
    company_id: int | None = Field(default=None, ge=1, le=MAX_ID)
    deal_id: int | None = Field(default=None, ge=1, le=MAX_ID)
    identity_id: int | None = Field(default=None, ge=1, le=MAX_ID)


class RenderedPublic(BaseModel):
    subject: str
    text: str | None
    html: str | None
