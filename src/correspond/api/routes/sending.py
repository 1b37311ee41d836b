"""Sending from the CRM: ``POST /messages`` (a new message), ``POST /messages/{id}/reply``,
``/reply-all`` and ``/forward``, ``POST /outbox/{id}/cancel`` (undo, or call off a
scheduled send), and ``POST /outbox/{id}/mark-sent`` / ``/resend`` (the user's decision on a
send whose fate is ``unknown``: ``sync.sender``).

A send answers at once (202) with the CRM's outgoing message and its outbox row: the message is
in its thread as ``sending`` (``scheduled`` during the undo grace or until ``send_at``), then
``sent`` or ``failed`` with the server's words (``GET /messages/{id}/send``). The body is JSON,
or ``multipart/form-data`` with the JSON in a ``message`` field and files in ``attachments``
fields; stored attachments are named by id (``attachment_ids``). Inline images of the HTML
(referenced as ``cid:<content id>``): stored attachments in ``inline`` (id and content id), or
files in ``inline`` fields of the multipart body with their content ids, in order, in
``inline_content_ids``; they go in multipart/related with the HTML part.

As whom: ``identity_id`` (one of the caller's identities; another user's is a 404, as one that
does not exist); none given, the caller's default identity (``GET /compose/defaults``), or for
a reply or forward the identity of the original's account. The older ``account`` field (the
account's owner, an admin, or a member of its team inbox) still sends as that account; with an
outbound-only identity it names the account that keeps the CRM copy. ``template_id`` with
``contact_id`` / ``deal_id`` renders the template (what the request gives wins): a merge field
without a value is a 422 naming it, before anything is queued. The reply routes take a
template too: it gives the bodies, above the quoted original (the subject stays ``Re:`` /
``Fwd:`` the original's unless one is given; a forward with no recipient goes to the contact).
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, HTTPException, Path, Request
from pydantic import BaseModel, Field, ValidationError

from correspond.api.security import MAX_ID, CurrentUser, ViewAccess, needs
from correspond.composer import RecordMissing
from correspond.errors import ConfigError
from correspond.mail.merge import MissingMergeFields
from correspond.mail.outgoing import OutgoingAttachment, uploaded
from correspond.outgoing import Compose, ReplyMode, SendService, parse_recipients
from correspond.store.sends import SendRecord
from correspond.sync.threads import in_thread

__all__ = ["outbox_router", "read_body", "router", "send_public"]

router = APIRouter(prefix="/messages", tags=["sending"])
outbox_router = APIRouter(prefix="/outbox", tags=["sending"])

MessageId = Annotated[int, Path(ge=1, le=MAX_ID)]
OutboxId = Annotated[int, Path(ge=1, le=MAX_ID)]
#: Files one multipart request may carry.
MAX_UPLOADS = 50


class InlineRef(BaseModel):
    """A stored attachment sent as an inline image of the HTML (``cid:<content_id>``)."""

    attachment_id: int = Field(ge=1, le=MAX_ID)
    content_id: str = Field(min_length=1, max_length=200)


class ComposeFields(BaseModel):
    """What a reply or forward may set (the original gives the rest)."""

    to: list[str] = Field(default_factory=list, max_length=500, description="Recipients")
    cc: list[str] = Field(default_factory=list, max_length=500)
    bcc: list[str] = Field(
        default_factory=list,
        max_length=500,
        description="Kept on the CRM's copy and the Sent copy; never in what is sent",
    )
    subject: str | None = Field(default=None, max_length=2000)
    text: str | None = None
    html: str | None = Field(default=None, description="A text part is derived when no text")
    attachment_ids: list[int] = Field(
        default_factory=list, max_length=100, description="Stored attachments to send on"
    )
    send_at: datetime | None = Field(
        default=None, description="Scheduled send (default: now plus the undo grace)"
    )
    inline: list[InlineRef] = Field(
        default_factory=list, max_length=100, description="Stored attachments as inline images"
    )
    inline_content_ids: list[str] = Field(
        default_factory=list,
        max_length=MAX_UPLOADS,
        description="The content ids of the files in the multipart body's inline fields, in order",
    )
    identity_id: int | None = Field(
        default=None,
        ge=1,
        le=MAX_ID,
        description="The identity to send as (default: yours, or the original's account's)",
    )
    template_id: int | None = Field(default=None, ge=1, le=MAX_ID)
    contact_id: int | None = Field(
        default=None, ge=1, le=MAX_ID, description="Merge fields; the default recipient"
    )
    deal_id: int | None = Field(default=None, ge=1, le=MAX_ID)


class SendRequest(ComposeFields):
    account: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="Send as this account (without identity_id); with an outbound-only "
        "identity: the account that keeps the CRM copy",
    )


class SendPublic(BaseModel):
    """A send: the CRM's message, its thread and the outbox row carrying it."""

    message_id: int
    thread_id: int | None
    outbox_id: int
    status: str = Field(description="scheduled, sending, sent, failed, cancelled or unknown")
    error: str | None = Field(description="The server's words when it failed")
    send_at: datetime
    attempts: int


def send_public(record: SendRecord) -> SendPublic:
    return SendPublic(
        message_id=record.message_id,
        thread_id=record.thread_id,
        outbox_id=record.outbox.id,
        status=record.status,
        error=record.error,
        send_at=record.send_at,
        attempts=record.outbox.attempts,
    )


def _service(request: Request) -> SendService:
    service: SendService = request.app.state.sending
    return service


M = TypeVar("M", bound=BaseModel)


async def read_body(
    request: Request, model: type[M], field: str = "message"
) -> tuple[M, list[OutgoingAttachment]]:
    """The JSON fields (the body, or the multipart field ``field``) and the uploaded files
    of a request: ``attachments`` fields, then ``inline`` fields, each of these with its
    content id from ``inline_content_ids`` (same order)."""
    kind = request.headers.get("content-type", "")
    files: list[OutgoingAttachment] = []
    inline: list[tuple[str, str, bytes]] = []
    try:
        if kind.startswith("multipart/form-data"):
            async with request.form(max_files=MAX_UPLOADS) as form:
                raw = form.get(field)
                data = json.loads(raw) if isinstance(raw, str) and raw else {}
                for name in ("attachments", "inline"):
                    for upload in form.getlist(name):
                        if isinstance(upload, str):
                            continue
                        item = (
                            upload.filename or "attachment",
                            upload.content_type or "application/octet-stream",
                            await upload.read(),
                        )
                        if name == "inline":
                            inline.append(item)
                        else:
                            files.append(uploaded(*item))
        else:
            data = await request.json()
        fields = model.model_validate(data)
    except ValidationError as exc:
        raise HTTPException(422, detail=[_plain(e) for e in exc.errors()]) from exc
    except ValueError as exc:
        raise HTTPException(422, detail=f"the request body is not valid: {exc}") from exc
    cids: list[str] = list(getattr(fields, "inline_content_ids", []) or [])
    if len(cids) != len(inline):
        raise HTTPException(
            422,
            detail=f"{len(inline)} inline files but {len(cids)} inline_content_ids: give one "
            "content id for each inline file, in order",
        )
    files += [
        replace(uploaded(*item), content_id=cid) for item, cid in zip(inline, cids, strict=True)
    ]
    return fields, files


async def _read(
    request: Request, model: type[ComposeFields]
) -> tuple[Any, list[OutgoingAttachment]]:
    """The JSON fields and the uploaded files (multipart) of a send request."""
    return await read_body(request, model)


async def _with_inline(
    service: SendService, user: Any, fields: ComposeFields, compose: Compose
) -> Compose:
    """``compose`` with the stored attachments named as inline images loaded (checked as
    every stored attachment: of a message the user sees in full)."""
    if not fields.inline:
        return compose
    refs = [(r.attachment_id, r.content_id) for r in fields.inline]
    loaded = await in_thread(service.load_attachments, user, refs)
    return replace(compose, attachments=compose.attachments + loaded)


def _plain(error: Any) -> dict[str, Any]:
    return {"type": error.get("type"), "loc": list(error.get("loc", ())), "msg": error.get("msg")}


def _compose(fields: ComposeFields, attachments: list[OutgoingAttachment]) -> Compose:
    try:
        return Compose(
            to=parse_recipients(fields.to),
            cc=parse_recipients(fields.cc),
            bcc=parse_recipients(fields.bcc),
            subject=fields.subject,
            text=fields.text,
            html=fields.html,
            attachments=tuple(attachments),
            attachment_ids=tuple(fields.attachment_ids),
            send_at=fields.send_at,
            template_id=fields.template_id,
            contact_id=fields.contact_id,
            deal_id=fields.deal_id,
        )
    except ConfigError as exc:
        raise HTTPException(422, detail=str(exc)) from exc


def multipart_body_doc(model: type[BaseModel], part: str) -> dict[str, Any]:
    """The OpenAPI request body of a route that takes ``model`` as JSON, or as a multipart
    form whose ``part`` holds it as JSON beside uploaded ``attachments`` and ``inline``
    images (their content ids in ``inline_content_ids``)."""
    files = {"type": "array", "items": {"type": "string", "format": "binary"}}
    return {
        "requestBody": {
            "content": {
                "application/json": {"schema": model.model_json_schema()},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            part: {"type": "string", "description": f"{model.__name__} as JSON"},
                            "attachments": files,
                            "inline": {
                                **files,
                                "description": "Inline images; content ids in inline_content_ids",
                            },
                        },
                    }
                },
            },
            "required": True,
        }
    }


_BODY_DOC = multipart_body_doc(SendRequest, "message")


def _forbidden(exc: PermissionError) -> HTTPException:
    return HTTPException(403, detail=str(exc))


def _unfit(exc: MissingMergeFields | RecordMissing) -> HTTPException:
    """A template that cannot be filled: 422 naming the fields (or the missing record)."""
    if isinstance(exc, MissingMergeFields):
        return HTTPException(
            422,
            detail=[
                {
                    "type": "missing_merge_fields",
                    "loc": ["body", "template_id"],
                    "msg": str(exc),
                    "fields": exc.fields,
                }
            ],
        )
    return HTTPException(
        422, detail=[{"type": "not_found", "loc": ["body", exc.field], "msg": str(exc)}]
    )


@router.post("", response_model=SendPublic, status_code=202, openapi_extra=_BODY_DOC)
async def send_message(request: Request, user: CurrentUser) -> SendPublic:
    """Send a new message from an account (JSON, or multipart with files)."""
    fields, files = await _read(request, SendRequest)
    compose = _compose(fields, files)
    service = _service(request)
    compose = await _with_inline(service, user, fields, compose)
    try:
        record = await in_thread(
            lambda: service.send_new(user, fields.account, compose, identity_id=fields.identity_id)
        )
    except PermissionError as exc:
        raise _forbidden(exc) from exc
    except (MissingMergeFields, RecordMissing) as exc:
        raise _unfit(exc) from exc
    return send_public(record)


def _respond_route(mode: ReplyMode, summary: str) -> None:
    async def respond(
        message_id: MessageId, request: Request, user: CurrentUser, _access: ViewAccess
    ) -> SendPublic:
        fields, files = await _read(request, ComposeFields)
        compose = _compose(fields, files)
        service = _service(request)
        compose = await _with_inline(service, user, fields, compose)
        try:
            record = await in_thread(
                lambda: service.respond(
                    user, message_id, mode, compose, identity_id=fields.identity_id
                )
            )
        except PermissionError as exc:
            raise _forbidden(exc) from exc
        except (MissingMergeFields, RecordMissing) as exc:
            raise _unfit(exc) from exc
        return send_public(record)

    respond.__doc__ = summary
    respond.__name__ = f"{mode.replace('-', '_')}_message"
    extra = {
        "requestBody": {
            "content": {"application/json": {"schema": ComposeFields.model_json_schema()}}
        }
    }
    router.post(
        f"/{{message_id}}/{mode}",
        response_model=SendPublic,
        status_code=202,
        name=respond.__name__,
        summary=summary.split(":")[0],
        description=summary,
        openapi_extra=extra,
    )(needs("full")(respond))


_respond_route(
    "reply", "Reply: to the sender (Reply-To), In-Reply-To and References set, Re: once."
)
_respond_route("reply-all", "Reply to all: the sender, and To and Cc but your own address in Cc.")
_respond_route("forward", "Forward: the original's attachments go along, Fwd: once.")


@router.get("/{message_id}/send", response_model=SendPublic | None)
@needs("metadata")
def message_send(message_id: MessageId, request: Request) -> SendPublic | None:
    """The send of a message written in the CRM: its status (and the server's words); null
    for a message that was not sent from the CRM."""
    record = _service(request).sends.for_message(message_id)
    return None if record is None else send_public(record)


@outbox_router.post("/{outbox_id}/cancel", response_model=SendPublic)
@needs("full")
def cancel_send(outbox_id: OutboxId, request: Request, user: CurrentUser) -> SendPublic:
    """Undo a send, or call off a scheduled one, before it goes (409 once it is going)."""
    service = _service(request)
    access = request.state.access
    if not (access is not None and access.manage) and service.sends.actor_of(outbox_id) != user.id:
        raise HTTPException(403, detail="only who sent it, the account's owner or an admin")
    return send_public(service.cancel(outbox_id))


def _resolve(request: Request, user: CurrentUser, outbox_id: int, *, went: bool) -> SendPublic:
    service = _service(request)
    access = request.state.access
    if not (access is not None and access.manage) and service.sends.actor_of(outbox_id) != user.id:
        raise HTTPException(403, detail="only who sent it, the account's owner or an admin")
    return send_public(service.sends.resolve_unknown(outbox_id, went=went))


@outbox_router.post("/{outbox_id}/mark-sent", response_model=SendPublic)
@needs("full")
def mark_unknown_sent(outbox_id: OutboxId, request: Request, user: CurrentUser) -> SendPublic:
    """A send whose fate is ``unknown`` (an outbound-only identity's send cut while the server
    was receiving it) went: show it as sent (409 for any other status)."""
    return _resolve(request, user, outbox_id, went=True)


@outbox_router.post("/{outbox_id}/resend", response_model=SendPublic)
@needs("full")
def resend_unknown(outbox_id: OutboxId, request: Request, user: CurrentUser) -> SendPublic:
    """A send whose fate is ``unknown`` did not go: send it again now, the same message and
    Message-ID (409 for any other status)."""
    return _resolve(request, user, outbox_id, went=False)
