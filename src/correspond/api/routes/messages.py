"""Reading synced mail: ``/accounts/{name}/messages``, ``/messages/{id}`` (with ``/raw`` and
``/attachments/{attachment_id}``) and ``/threads/{id}``.

HTML bodies are sanitised on every read (remote images only with ``?remote_images=1``); raw
messages and attachments are always downloads (``Content-Disposition: attachment``, ``nosniff``,
a deny-all CSP), so nothing from a mail is ever rendered as a page of this origin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response

from correspond.api.deps import ReaderDep
from correspond.api.downloads import (
    DOWNLOAD_HEADERS,
    content_disposition,
    download_content_type,
    safe_filename,
)
from correspond.api.message_schemas import (
    MessagePagePublic,
    MessagePublic,
    ThreadPublic,
    message_page_json,
    message_public,
    thread_public,
)
from correspond.api.security import MAX_ID, CurrentUser, ViewAccess, needs
from correspond.mailbox import MailboxReader
from correspond.store.message_queries import MAX_PAGE, MessageView
from correspond.store.visibility import Access

__all__ = ["account_router", "router", "thread_router"]

account_router = APIRouter(prefix="/accounts/{name}", tags=["messages"])
router = APIRouter(prefix="/messages", tags=["messages"])
thread_router = APIRouter(prefix="/threads", tags=["threads"])

# Ids are signed 64-bit in the store: a larger one is a 422, not a database error.
MessageId = Annotated[int, Path(ge=1, le=MAX_ID)]
AttachmentId = Annotated[int, Path(ge=1, le=MAX_ID)]
ThreadId = Annotated[int, Path(ge=1, le=MAX_ID)]

RemoteImages = Annotated[
    bool, Query(description="Let the HTML load remote images (default: placeholders).")
]


def _attachment_url(request: Request) -> Callable[[int, int], str]:
    # Root-relative, honouring a mount prefix: the sanitiser accepts only URLs it issued.
    root = request.scope.get("root_path", "").rstrip("/")

    def url(message_id: int, attachment_id: int) -> str:
        return f"{root}/messages/{message_id}/attachments/{attachment_id}"

    return url


def _public(
    reader: MailboxReader,
    message: MessageView,
    request: Request,
    remote_images: bool,
    access: Access,
) -> MessagePublic:
    url = _attachment_url(request)
    if not access.full:
        # Metadata only: the body is never read, let alone rendered.
        return message_public(
            message, None, remote_images=remote_images, attachment_url=url, full=False
        )
    html = reader.render_html(message, remote_images=remote_images, attachment_url=url)
    return message_public(message, html, remote_images=remote_images, attachment_url=url)


# Routes a metadata-only viewer may call answer without the body fields (left out, not
# empty): response_model_exclude_unset drops what the converters did not set.
@account_router.get(
    "/messages", response_model=MessagePagePublic, response_model_exclude_unset=True
)
@needs("metadata")
def list_messages(
    name: str,
    reader: ReaderDep,
    access: ViewAccess,
    folder: Annotated[str | None, Query(description="Folder id or display name.")] = None,
    thread: Annotated[int | None, Query(ge=1, le=MAX_ID, description="Only this thread.")] = None,
    q: Annotated[str | None, Query(max_length=200, description="Text to look for.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    before: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> Response:
    """The account's messages, newest first, one page at a time (keyset cursor).

    A search (``q``, or ``folder`` with ``thread``) examines at most
    ``message_search_scan_rows`` messages per page: a page may then hold fewer than ``limit``
    messages, or none, and still carry a ``next_cursor`` to search on.

    A caller who sees the account's metadata only gets no ``snippet`` or ``has_attachments``,
    and ``q`` looks at subject and sender only.
    """
    page = reader.list_messages(
        name,
        folder=folder,
        thread_id=thread,
        q=q,
        limit=limit,
        before=before,
        search_bodies=access.full,
    )
    # The response model's JSON written straight from the page (message_page_json): returned
    # as a model, FastAPI would validate it again and dump it through json.dumps. A
    # metadata-only caller's items leave the body fields out, not empty.
    return Response(
        content=message_page_json(page, full=access.full), media_type="application/json"
    )


@router.get("/{message_id}", response_model=MessagePublic, response_model_exclude_unset=True)
@needs("metadata")
def get_message(
    message_id: MessageId,
    reader: ReaderDep,
    request: Request,
    access: ViewAccess,
    remote_images: RemoteImages = False,
) -> MessagePublic:
    """One message: headers, addresses, flags, folders, text, sanitised HTML, attachments
    (for a metadata-only viewer: no snippet, text, html, attachments, has_raw, truncated or
    defects)."""
    return _public(reader, reader.get_message(message_id), request, remote_images, access)


@router.get(
    "/{message_id}/raw",
    response_class=Response,
    responses={200: {"content": {"message/rfc822": {}}}},
)
def get_raw(message_id: MessageId, reader: ReaderDep) -> Response:
    """The message exactly as fetched from the server, as a download."""
    raw = reader.raw(message_id)
    headers = {
        **DOWNLOAD_HEADERS,
        "Content-Disposition": content_disposition(f"message-{message_id}.eml"),
    }
    return Response(content=raw, media_type="message/rfc822", headers=headers)


@router.get(
    "/{message_id}/attachments/{attachment_id}",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def get_attachment(
    message_id: MessageId, attachment_id: AttachmentId, reader: ReaderDep
) -> Response:
    """An attachment's bytes, always as a download (never rendered inline)."""
    view, data = reader.attachment(message_id, attachment_id)
    filename = safe_filename(view.filename, f"attachment-{attachment_id}")
    headers = {**DOWNLOAD_HEADERS, "Content-Disposition": content_disposition(filename)}
    return Response(
        content=data, media_type=download_content_type(view.content_type), headers=headers
    )


@thread_router.get("/{thread_id}", response_model=ThreadPublic, response_model_exclude_unset=True)
@needs("metadata")
def get_thread(
    thread_id: ThreadId,
    reader: ReaderDep,
    request: Request,
    access: ViewAccess,
    user: CurrentUser,
    order: Annotated[
        Literal["oldest_first", "newest_first"] | None,
        Query(description="Default: the caller's preference (GET /me/preferences)."),
    ] = None,
    remote_images: RemoteImages = False,
) -> ThreadPublic:
    """A conversation's messages in the caller's thread order (``PUT /me/preferences``), or
    ``order`` when given; for a metadata-only viewer without the body fields."""
    chosen = order or user.thread_order
    thread = reader.get_thread(thread_id, newest_first=chosen == "newest_first")
    messages = [_public(reader, m, request, remote_images, access) for m in thread.messages]
    return thread_public(thread, messages, order=chosen)
