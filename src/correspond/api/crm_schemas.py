"""Request and response bodies of the CRM routes (contacts, companies, deals, activities)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from correspond.store.crm import Activity, Company, Contact, Deal, ImportReport

__all__ = [
    "ActivityCreate",
    "ActivityPublic",
    "ActivityUpdate",
    "CompanyCreate",
    "CompanyPublic",
    "CompanyUpdate",
    "ContactCreate",
    "ContactPublic",
    "ContactUpdate",
    "DealCreate",
    "DealPublic",
    "DealUpdate",
    "ImportPublic",
    "PagePublic",
    "ThreadDealPublic",
    "changes",
]

T = TypeVar("T")
_External = Field(default=None, max_length=200)
_Addresses: list[str] = Field(default_factory=list, max_length=100)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def changes(body: BaseModel) -> dict[str, Any]:
    """The fields a PATCH body set (null included), for the store's keyword arguments."""
    return body.model_dump(exclude_unset=True)


class ContactCreate(_Body):
    name: str = Field(default="", max_length=500)
    emails: list[str] = _Addresses
    company_id: int | None = Field(default=None, ge=1, le=2**63 - 1)
    external_id: str | None = _External


class ContactUpdate(_Body):
    name: str | None = Field(default=None, max_length=500)
    emails: list[str] | None = Field(default=None, max_length=100)
    company_id: int | None = Field(default=None, ge=1, le=2**63 - 1)
    external_id: str | None = _External


class ContactPublic(BaseModel):
    id: int
    name: str
    emails: list[str]
    company_id: int | None
    external_id: str | None
    created_at: datetime
    updated_at: datetime
    origin: str = Field(
        description="manual (made or last changed by a person), import (bulk import), or "
        "auto (made by contact auto-creation, untouched since)."
    )

    @classmethod
    def of(cls, c: Contact) -> ContactPublic:
        return cls(
            id=c.id,
            name=c.name,
            emails=list(c.emails),
            company_id=c.company_id,
            external_id=c.external_id,
            created_at=c.created_at,
            updated_at=c.updated_at,
            origin=c.origin,
        )


class DismissalPublic(BaseModel):
    address: str
    dismissed_at: datetime


class DismissalPagePublic(BaseModel):
    items: list[DismissalPublic]
    next_cursor: str | None


class CompanyCreate(_Body):
    name: str = Field(min_length=1, max_length=500)
    domains: list[str] = _Addresses
    external_id: str | None = _External


class CompanyUpdate(_Body):
    name: str | None = Field(default=None, min_length=1, max_length=500)
    domains: list[str] | None = Field(default=None, max_length=100)
    external_id: str | None = _External


class CompanyPublic(BaseModel):
    id: int
    name: str
    domains: list[str]
    external_id: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, c: Company) -> CompanyPublic:
        return cls(
            id=c.id,
            name=c.name,
            domains=list(c.domains),
            external_id=c.external_id,
            created_at=c.created_at,
            updated_at=c.updated_at,
        )


DealStatus = Literal["open", "won", "lost"]


class DealCreate(_Body):
    name: str = Field(min_length=1, max_length=500)
    status: DealStatus = "open"
    company_id: int | None = Field(default=None, ge=1, le=2**63 - 1)
    contact_ids: list[int] = Field(default_factory=list, max_length=1000)
    external_id: str | None = _External


class DealUpdate(_Body):
    name: str | None = Field(default=None, min_length=1, max_length=500)
    status: DealStatus | None = None
    company_id: int | None = Field(default=None, ge=1, le=2**63 - 1)
    contact_ids: list[int] | None = Field(default=None, max_length=1000)
    external_id: str | None = _External


class DealPublic(BaseModel):
    id: int
    name: str
    status: str
    company_id: int | None
    contact_ids: list[int]
    external_id: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, d: Deal) -> DealPublic:
        return cls(
            id=d.id,
            name=d.name,
            status=d.status,
            company_id=d.company_id,
            contact_ids=list(d.contact_ids),
            external_id=d.external_id,
            created_at=d.created_at,
            updated_at=d.updated_at,
        )


ActivityKind = Literal["meeting", "call", "task"]


class ActivityCreate(_Body):
    kind: ActivityKind
    title: str = Field(min_length=1, max_length=500)
    at: datetime | None = None
    participants: list[str] = _Addresses
    external_id: str | None = _External


class ActivityUpdate(_Body):
    kind: ActivityKind | None = None
    title: str | None = Field(default=None, min_length=1, max_length=500)
    at: datetime | None = None
    participants: list[str] | None = Field(default=None, max_length=100)
    external_id: str | None = _External


class ActivityPublic(BaseModel):
    id: int
    kind: str
    title: str
    at: datetime | None
    participants: list[str]
    external_id: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, a: Activity) -> ActivityPublic:
        return cls(
            id=a.id,
            kind=a.kind,
            title=a.title,
            at=a.at,
            participants=list(a.participants),
            external_id=a.external_id,
            created_at=a.created_at,
            updated_at=a.updated_at,
        )


class PagePublic(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: int | None


class RowErrorPublic(BaseModel):
    row: int
    error: str


class ImportPublic(BaseModel):
    created: int
    updated: int
    errors: list[RowErrorPublic]

    @classmethod
    def of(cls, r: ImportReport) -> ImportPublic:
        return cls(
            created=r.created,
            updated=r.updated,
            errors=[RowErrorPublic(row=e.row, error=e.error) for e in r.errors],
        )


class ThreadDealPublic(BaseModel):
    thread_id: int
    deal_id: int
    linked: bool
    messages: int
