"""API schemas for the inbox views (``GET /inbox``, ``GET /teams/{team_id}/inbox``)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from correspond.api.message_schemas import AddressPublic, address_public
from correspond.store.inbox import InboxPage, InboxThread, LinkChip

__all__ = ["InboxPagePublic", "InboxThreadPublic", "LinkChipPublic", "inbox_page_public"]

_OMITTED = "Left out (not empty) for a caller who sees the account's metadata only"


class LinkChipPublic(BaseModel):
    """A contact or deal the thread's mail is linked to (its timeline)."""

    id: int
    name: str


class InboxThreadPublic(BaseModel):
    thread_id: int
    account: str = Field(description="The account's name")
    account_id: int
    subject: str
    message_count: int = Field(description="Messages of the thread (deleted and gone ones not)")
    unread_count: int = Field(description="Of those, the ones without \\Seen")
    starred: bool = Field(description="Whether a message of the thread has \\Flagged")
    participants: list[AddressPublic] = Field(
        description="From and To of the thread's newest messages, newest first, at most 10"
    )
    latest_message_id: int = Field(
        description="The thread's latest message in this view (the one that places it)"
    )
    latest_at: datetime = Field(description="Its place in the list (Date, else INTERNALDATE)")
    date: datetime | None = Field(description="Its Date header")
    snippet: str = Field(default="", description=f"Its snippet. {_OMITTED}")
    has_attachments: bool = Field(
        default=False, description=f"Whether a message of the thread has one. {_OMITTED}"
    )
    contacts: list[LinkChipPublic] = Field(
        default_factory=list, description="Linked contacts (at most 10; none when metadata only)"
    )
    deals: list[LinkChipPublic] = Field(
        default_factory=list, description="Linked deals (at most 10; none when metadata only)"
    )


class InboxPagePublic(BaseModel):
    threads: list[InboxThreadPublic]
    next_cursor: str | None = Field(
        description="Pass as cursor for the next (older) page; null on the last page"
    )


def _chips(chips: tuple[LinkChip, ...]) -> list[LinkChipPublic]:
    return [LinkChipPublic(id=c.id, name=c.name) for c in chips]


def _thread(t: InboxThread) -> InboxThreadPublic:
    item = InboxThreadPublic(
        thread_id=t.thread_id,
        account=t.account,
        account_id=t.account_id,
        subject=t.subject,
        message_count=t.message_count,
        unread_count=t.unread_count,
        starred=t.starred,
        participants=[address_public(a) for a in t.participants],
        latest_message_id=t.latest_message_id,
        latest_at=t.latest_at,
        date=t.date,
        contacts=_chips(t.contacts),
        deals=_chips(t.deals),
    )
    if t.full:
        # Set only for a full viewer: exclude_unset leaves them out for a metadata-only one.
        item.snippet = t.snippet or ""
        item.has_attachments = bool(t.has_attachments)
    return item


def inbox_page_public(page: InboxPage) -> InboxPagePublic:
    return InboxPagePublic(threads=[_thread(t) for t in page.threads], next_cursor=page.next_cursor)
