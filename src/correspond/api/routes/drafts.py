"""``/drafts``: the composer's state saved in the CRM (``correspond.drafts``).

``POST /drafts`` saves a new draft, ``PUT /drafts/{id}`` saves over one (the composer's whole
state each time; uploaded files are added, and ``keep_file_ids`` says which earlier files
stay: all when absent), ``GET /drafts`` lists the caller's drafts (the last changed first),
``GET /drafts/{id}`` reads one, ``DELETE /drafts/{id}`` removes it, ``POST /drafts/{id}/send``
queues it as ``POST /messages`` (or the reply routes, for a draft that answers a message) does
and removes it in the same transaction (a retry answers with the same send). The body is
JSON, or multipart with the JSON in a ``draft`` field and files in ``attachments`` and
``inline`` fields (the inline ones' content ids in ``inline_content_ids``).
A draft is its owner's alone: anyone else's id is a 404, as for no draft.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, Field

from correspond.api.routes.sending import (
    MAX_UPLOADS,
    InlineRef,
    SendPublic,
    multipart_body_doc,
    read_body,
    send_public,
)
from correspond.api.schemas import ErrorPublic
from correspond.api.security import MAX_ID, CurrentUser
from correspond.drafts import DraftService
from correspond.store.drafts import Draft, DraftFields, DraftFile, StoredRef
from correspond.sync.threads import in_thread

__all__ = ["router"]

router = APIRouter(
    prefix="/drafts",
    tags=["drafts"],
    responses={404: {"model": ErrorPublic, "description": "No such draft of the caller's"}},
)

DraftId = Annotated[int, Path(ge=1, le=MAX_ID)]


class DraftRequest(BaseModel):
    """The composer's state. Recipients as typed (checked when the draft is sent)."""

    identity_id: int | None = Field(default=None, ge=1, le=MAX_ID)
    account: str | None = Field(default=None, min_length=1, max_length=100)
    to: list[str] = Field(default_factory=list, max_length=500)
    cc: list[str] = Field(default_factory=list, max_length=500)
    bcc: list[str] = Field(default_factory=list, max_length=500)
    subject: str | None = Field(default=None, max_length=2000)
    text: str | None = None
    html: str | None = None
    attachment_ids: list[int] = Field(
        default_factory=list, max_length=100, description="Stored attachments to send on"
    )
    inline: list[InlineRef] = Field(
        default_factory=list, max_length=100, description="Stored attachments as inline images"
    )
    inline_content_ids: list[str] = Field(default_factory=list, max_length=MAX_UPLOADS)
    in_reply_to_id: int | None = Field(
        default=None, ge=1, le=MAX_ID, description="The message it answers or forwards"
    )
    reply_mode: str | None = Field(default=None, description="reply, reply-all or forward")
    template_id: int | None = Field(default=None, ge=1, le=MAX_ID)
    keep_file_ids: list[int] | None = Field(
        default=None, max_length=200, description="PUT: the earlier files to keep (all: absent)"
    )


class StoredRefPublic(BaseModel):
    attachment_id: int
    content_id: str | None


class DraftFilePublic(BaseModel):
    id: int
    filename: str
    content_type: str
    size: int
    content_id: str | None


class DraftPublic(BaseModel):
    id: int
    identity_id: int | None
    account_id: int | None
    to: list[str]
    cc: list[str]
    bcc: list[str]
    subject: str | None
    text: str | None
    html: str | None
    attachments: list[StoredRefPublic]
    files: list[DraftFilePublic]
    in_reply_to_id: int | None
    reply_mode: str | None
    template_id: int | None
    size: int = Field(description="Bytes of its bodies and files (at most a message's limit)")
    sending: bool = Field(description="A send of it is under way")
    created_at: datetime
    updated_at: datetime


def draft_public(draft: Draft) -> DraftPublic:
    f = draft.fields
    return DraftPublic(
        id=draft.id,
        identity_id=f.identity_id,
        account_id=f.account_id,
        to=list(f.to),
        cc=list(f.cc),
        bcc=list(f.bcc),
        subject=f.subject,
        text=f.text,
        html=f.html,
        attachments=[
            StoredRefPublic(attachment_id=a.attachment_id, content_id=a.content_id)
            for a in f.attachments
        ],
        files=[
            DraftFilePublic(
                id=x.id or 0,
                filename=x.filename,
                content_type=x.content_type,
                size=x.size,
                content_id=x.content_id,
            )
            for x in draft.files
        ],
        in_reply_to_id=f.in_reply_to_id,
        reply_mode=f.reply_mode,
        template_id=f.template_id,
        size=draft.size,
        sending=draft.sending,
        created_at=draft.created_at,
        updated_at=draft.updated_at,
    )


def _service(request: Request) -> DraftService:
    service: DraftService = request.app.state.drafts
    return service


async def _fields(request: Request, user: Any) -> tuple[DraftRequest, DraftFields, list[DraftFile]]:
    body, uploads = await read_body(request, DraftRequest, "draft")
    service = _service(request)
    account_id = await in_thread(service.account_id, user, body.account) if body.account else None
    fields = DraftFields(
        identity_id=body.identity_id,
        account_id=account_id,
        to=tuple(body.to),
        cc=tuple(body.cc),
        bcc=tuple(body.bcc),
        subject=body.subject,
        text=body.text,
        html=body.html,
        attachments=(
            *(StoredRef(i) for i in body.attachment_ids),
            *(StoredRef(r.attachment_id, r.content_id) for r in body.inline),
        ),
        in_reply_to_id=body.in_reply_to_id,
        reply_mode=body.reply_mode,
        template_id=body.template_id,
    )
    files = [
        DraftFile(u.filename, u.content_type, len(u.content or b""), u.content_id, u.content)
        for u in uploads
    ]
    return body, fields, files


_BODY_DOC = multipart_body_doc(DraftRequest, "draft")


@router.get("", response_model=list[DraftPublic])
def list_drafts(
    request: Request,
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    before_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> list[DraftPublic]:
    """The caller's drafts, the last changed first (files listed, not their bytes)."""
    return [draft_public(d) for d in _service(request).list(user, limit=limit, before_id=before_id)]


@router.post("", response_model=DraftPublic, status_code=201, openapi_extra=_BODY_DOC)
async def create_draft(request: Request, user: CurrentUser) -> DraftPublic:
    """Save a new draft (at most 1,000 per user; a draft is at most a message's size)."""
    _body, fields, files = await _fields(request, user)
    return draft_public(await in_thread(_service(request).create, user, fields, files))


@router.get("/{draft_id}", response_model=DraftPublic)
def get_draft(draft_id: DraftId, request: Request, user: CurrentUser) -> DraftPublic:
    """One of the caller's drafts."""
    return draft_public(_service(request).get(user, draft_id))


@router.put("/{draft_id}", response_model=DraftPublic, openapi_extra=_BODY_DOC)
async def save_draft(draft_id: DraftId, request: Request, user: CurrentUser) -> DraftPublic:
    """Save the composer's state over a draft (files uploaded are added; ``keep_file_ids``
    says which earlier files stay)."""
    body, fields, files = await _fields(request, user)
    service = _service(request)
    draft = await in_thread(
        lambda: service.replace(user, draft_id, fields, files, keep_file_ids=body.keep_file_ids)
    )
    return draft_public(draft)


@router.delete("/{draft_id}", status_code=204)
def delete_draft(draft_id: DraftId, request: Request, user: CurrentUser) -> Response:
    """Delete a draft."""
    _service(request).delete(user, draft_id)
    return Response(status_code=204)


@router.post("/{draft_id}/send", response_model=SendPublic, status_code=202)
def send_draft(draft_id: DraftId, request: Request, user: CurrentUser) -> SendPublic:
    """Queue the draft as ``POST /messages`` does (a reply, reply-all or forward of the message
    it answers, when it answers one) and delete it, in one transaction; sending a draft that
    was sent already answers with that send (one message, however often); 409 while another
    send of it is under way.
    The draft stays when the send is refused (a bad address, too big)."""
    try:
        record = _service(request).send(user, draft_id)
    except PermissionError as exc:
        raise HTTPException(403, detail=str(exc)) from exc
    return send_public(record)
