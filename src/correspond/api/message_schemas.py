"""API schemas for reading the mirror: folder counts, message pages, messages, threads.

Converters take the store's read records (:mod:`correspond.store.message_queries`) and never
hand out unsanitised HTML: :func:`message_public` takes the already sanitised body.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import pydantic_core
from pydantic import BaseModel, Field

from correspond.api.schemas import FolderPublic, folder_public
from correspond.mail.sanitize import SanitizedHtml
from correspond.mailbox import FolderWithCounts
from correspond.store.message_queries import (
    AddressView,
    AttachmentView,
    LocationView,
    MessageListItem,
    MessagePage,
    MessageView,
    ThreadView,
)

__all__ = [
    "BODY_FIELDS",
    "AddressPublic",
    "AttachmentPublic",
    "FolderCountsPublic",
    "FolderWithCountsPublic",
    "HtmlBodyPublic",
    "LocationPublic",
    "MessageListItemPublic",
    "MessagePagePublic",
    "MessagePublic",
    "ThreadPublic",
    "address_public",
    "folder_with_counts_public",
    "message_list_item_public",
    "message_page_json",
    "message_page_public",
    "message_public",
    "thread_public",
]


class FolderCountsPublic(BaseModel):
    """``messages``: distinct messages stored for the folder; ``locations``: stored (folder,
    UID) pairs; ``unread``: locations without ``\\Seen``; ``server``: what the server reported
    at the last sync (None: not known yet)."""

    messages: int
    locations: int
    unread: int
    server: int | None


class FolderWithCountsPublic(FolderPublic):
    counts: FolderCountsPublic


class AddressPublic(BaseModel):
    name: str | None
    email: str


class LocationPublic(BaseModel):
    folder_id: int
    folder: str
    role: str | None
    uid: int
    flags: list[str]


class AttachmentPublic(BaseModel):
    """``url`` downloads the bytes (always as a download, never shown inline); null when the
    body was left on the server. ``filename`` is for display only."""

    id: int
    filename: str | None
    content_type: str
    size: int
    content_id: str | None
    inline: bool
    downloaded: bool
    url: str | None


class HtmlBodyPublic(BaseModel):
    """The sanitised HTML, safe to show in a sandboxed frame; what was held back."""

    html: str
    remote_images_blocked: int
    remote_images_allowed: bool
    unknown_cids: list[str]


_OMITTED = "Left out (not empty) for a caller who sees the account's metadata only"


class MessageListItemPublic(BaseModel):
    id: int
    thread_id: int | None
    subject: str
    from_: AddressPublic | None = Field(serialization_alias="from")
    to: list[AddressPublic]
    date: datetime | None
    snippet: str = Field(default="", description=_OMITTED)
    flags: list[str]
    state: str
    direction: str
    has_attachments: bool = Field(default=False, description=_OMITTED)


class MessagePagePublic(BaseModel):
    messages: list[MessageListItemPublic]
    next_cursor: str | None


class MessagePublic(BaseModel):
    id: int
    account_id: int
    thread_id: int | None
    message_id: str | None
    in_reply_to: str | None
    references: list[str]
    subject: str
    from_: AddressPublic | None = Field(serialization_alias="from")
    sender: list[AddressPublic]
    reply_to: list[AddressPublic]
    to: list[AddressPublic]
    cc: list[AddressPublic]
    bcc: list[AddressPublic]
    date: datetime | None
    internaldate: datetime | None
    snippet: str = Field(default="", description=_OMITTED)
    text: str | None = Field(default=None, description=_OMITTED)
    html: HtmlBodyPublic | None = Field(default=None, description=_OMITTED)
    flags: list[str]
    state: str
    direction: str
    size: int | None
    has_raw: bool = Field(default=False, description=_OMITTED)
    truncated: bool = Field(default=False, description=_OMITTED)
    defects: list[str] = Field(default_factory=list, description=_OMITTED)
    locations: list[LocationPublic]
    attachments: list[AttachmentPublic] = Field(default_factory=list, description=_OMITTED)
    gone_from_mailbox_at: datetime | None = Field(
        default=None,
        description="When the message left every synced folder (locations is then empty); "
        "null while it is in one",
    )
    gone_reason: str | None = Field(
        default=None,
        description="Why: 'expunged' (deleted on the server), 'moved to an unsynced folder', "
        "'folder no longer synced', 'unknown', 'account disconnected (kept as history)'; "
        "null while not yet known",
    )


#: A gone message's reason as the API and CLI say it.
GONE_WORDS = {
    "expunged": "expunged",
    "moved": "moved to an unsynced folder",
    "unsynced": "folder no longer synced",
    "unknown": "unknown",
    "disconnected": "account disconnected (kept as history)",
}


class ThreadPublic(BaseModel):
    id: int
    account_id: int
    subject: str
    message_count: int
    first_message_at: datetime | None
    last_message_at: datetime | None
    order: str
    messages: list[MessagePublic]


def address_public(a: AddressView) -> AddressPublic:
    return AddressPublic(name=a.name, email=a.email)


def folder_with_counts_public(item: FolderWithCounts) -> FolderWithCountsPublic:
    base = folder_public(item.folder)
    return FolderWithCountsPublic(
        **base.model_dump(),
        counts=FolderCountsPublic(
            messages=item.counts.messages,
            locations=item.counts.locations,
            unread=item.counts.unread,
            server=item.server_count,
        ),
    )


#: Fields a metadata-only viewer never gets: what the body says or carries.
BODY_FIELDS = frozenset(
    {"snippet", "text", "html", "has_raw", "truncated", "defects", "attachments", "has_attachments"}
)


def _without_body(fields: dict[str, object], full: bool) -> dict[str, object]:
    """``fields``, minus :data:`BODY_FIELDS` unless ``full``. Left unset, the routes (which
    answer with ``response_model_exclude_unset``) omit them rather than show them empty."""
    return fields if full else {k: v for k, v in fields.items() if k not in BODY_FIELDS}


def message_list_item_public(m: MessageListItem, *, full: bool = True) -> MessageListItemPublic:
    fields: dict[str, object] = {
        "id": m.id,
        "thread_id": m.thread_id,
        "subject": m.subject,
        "from_": address_public(m.from_) if m.from_ else None,
        "to": [address_public(a) for a in m.to],
        "date": m.date,
        "snippet": m.snippet,
        "flags": list(m.flags),
        "state": m.state,
        "direction": m.direction,
        "has_attachments": m.has_attachments,
    }
    return MessageListItemPublic.model_validate(_without_body(fields, full))


def message_page_public(page: MessagePage, *, full: bool = True) -> MessagePagePublic:
    return MessagePagePublic(
        messages=[message_list_item_public(m, full=full) for m in page.items],
        next_cursor=page.next_cursor,
    )


def message_page_json(page: MessagePage, *, full: bool = True) -> bytes:
    """The JSON of ``message_page_public(page, full=full)`` dumped by alias with unset fields
    left out (what ``GET /accounts/{name}/messages`` answers), byte for byte, without building
    a model per item and address: plain dicts through pydantic's JSON writer (its datetime
    format). A quarter of the CPU of the models for a page of 50; the list route's hot path.
    ``tests/test_message_page_json.py`` holds it equal to the models' output."""
    items = []
    for m in page.items:
        sender = m.from_
        item: dict[str, object] = {
            "id": m.id,
            "thread_id": m.thread_id,
            "subject": m.subject,
            "from": None if sender is None else {"name": sender.name, "email": sender.email},
            "to": [{"name": a.name, "email": a.email} for a in m.to],
            "date": m.date,
        }
        if full:
            item["snippet"] = m.snippet
        item["flags"] = list(m.flags)
        item["state"] = m.state
        item["direction"] = m.direction
        if full:
            item["has_attachments"] = m.has_attachments
        items.append(item)
    return pydantic_core.to_json({"messages": items, "next_cursor": page.next_cursor})


def _location(loc: LocationView) -> LocationPublic:
    return LocationPublic(
        folder_id=loc.folder_id,
        folder=loc.folder_name,
        role=loc.role,
        uid=loc.uid,
        flags=list(loc.flags),
    )


def _attachment(a: AttachmentView, url: Callable[[int, int], str]) -> AttachmentPublic:
    return AttachmentPublic(
        id=a.id,
        filename=a.filename,
        content_type=a.content_type,
        size=a.size,
        content_id=a.content_id,
        inline=a.inline,
        downloaded=a.downloaded,
        url=url(a.message_id, a.id) if a.downloaded else None,
    )


def message_public(
    m: MessageView,
    html: SanitizedHtml | None,
    *,
    remote_images: bool,
    attachment_url: Callable[[int, int], str],
    full: bool = True,
) -> MessagePublic:
    """``html`` must be the output of the sanitiser for ``m`` (None: no HTML body). Not
    ``full``: the body fields are left out (:data:`BODY_FIELDS`)."""
    fields: dict[str, object] = {
        "id": m.id,
        "account_id": m.account_id,
        "thread_id": m.thread_id,
        "message_id": m.message_id,
        "in_reply_to": m.in_reply_to,
        "references": list(m.references),
        "subject": m.subject,
        "from_": address_public(m.from_) if m.from_ else None,
        "sender": [address_public(a) for a in m.sender],
        "reply_to": [address_public(a) for a in m.reply_to],
        "to": [address_public(a) for a in m.to],
        "cc": [address_public(a) for a in m.cc],
        "bcc": [address_public(a) for a in m.bcc],
        "date": m.date,
        "internaldate": m.internaldate,
        "flags": list(m.flags),
        "state": m.state,
        "direction": m.direction,
        "size": m.size,
        "locations": [_location(loc) for loc in m.locations],
        "gone_from_mailbox_at": m.gone_from_mailbox_at,
        "gone_reason": GONE_WORDS.get(m.gone_reason or "", m.gone_reason),
    }
    if full:
        fields.update(
            snippet=m.snippet,
            text=m.text,
            html=None
            if html is None
            else HtmlBodyPublic(
                html=html.html,
                remote_images_blocked=html.remote_images_blocked,
                remote_images_allowed=remote_images,
                unknown_cids=list(html.unknown_cids),
            ),
            has_raw=m.raw_blob_key is not None,
            truncated=m.truncated,
            defects=list(m.defects),
            attachments=[_attachment(a, attachment_url) for a in m.attachments],
        )
    return MessagePublic.model_validate(fields)


def thread_public(t: ThreadView, messages: list[MessagePublic], *, order: str) -> ThreadPublic:
    return ThreadPublic(
        id=t.id,
        account_id=t.account_id,
        subject=t.subject,
        message_count=t.message_count,
        first_message_at=t.first_message_at,
        last_message_at=t.last_message_at,
        order=order,
        messages=messages,
    )
