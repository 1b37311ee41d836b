"""The composer: ``/compose`` (a new message) and ``/conversation/{id}/reply?message=ID&mode=``
(reply, reply-all, forward), sending through ``SendService`` (``send_new``, ``respond``) as the
JSON API's ``POST /messages`` and ``/messages/{id}/reply`` do; undo (``SendService.cancel``, as
``POST /outbox/{id}/cancel``) from the thread page's confirmation.

The form is ``multipart/form-data`` (attachments by upload) with the session's CSRF token in a
field. A field that cannot be used is shown beside that field, the form kept: a bad recipient
names the address, a template's missing merge field names it, files over the send limit
(``send_max_bytes``) say the limit. A reply's To/Cc and ``Re:`` subject and the quoted original
are ``SendService.response_draft``'s (the same ``reply_draft``/``forward_draft`` as a send); the
quote is shown under the body and added by ``respond`` below what is typed.

"Send later" (``send_at``, the browser's local time with its offset in ``tz_offset``) gives
``Compose.send_at``; ``/compose/scheduled`` lists the caller's unsent sends
(``SendStore.open_sends``) with Cancel (``SendService.cancel``). ``/compose/contacts?q=`` is the
To/Cc/Bcc suggestions' JSON (``CrmStore.list_contacts``, as ``GET /contacts?q=``). What the
browser adds (file sizes and the limit, the suggestion list, local times) is ``static/app.js``'s
composer functions.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.datastructures import UploadFile

from correspond.api.security import MAX_ID, needs
from correspond.composer import ComposeService, RecordMissing
from correspond.errors import ConfigError, NotFound
from correspond.mail.compose import ComposeError, MessageTooLarge
from correspond.mail.merge import MissingMergeFields
from correspond.mail.outgoing import OutgoingAttachment, uploaded
from correspond.mailbox import MailboxReader
from correspond.outgoing import Compose, ReplyMode, SendService, parse_recipients
from correspond.store.sends import SendListing, SendRecord
from correspond.store.tables import utcnow
from correspond.store.users import User
from correspond.sync.threads import in_thread
from correspond.web.csrf import tokens_match
from correspond.web.pages import PageRoute, PageUser, PathId, SignedForm, _csrf, _render

__all__ = ["MAX_FILES", "router", "sent_notice", "split_addresses"]

router = APIRouter(route_class=PageRoute, include_in_schema=False)

#: Files one composer form may carry; recipients per field.
MAX_FILES = 20
MAX_RECIPIENTS = 100
_MODES: tuple[ReplyMode, ...] = ("reply", "reply-all", "forward")
_TEXT_FIELDS = (
    "identity_id",
    "to",
    "cc",
    "bcc",
    "subject",
    "text",
    "template_id",
    "contact_id",
    "send_at",
    "tz_offset",
)
_MAX_FIELD = {"text": 1_000_000, "subject": 2000}
#: How far ahead a send may be scheduled; how many contacts a suggestion list shows.
MAX_SCHEDULE_AHEAD = timedelta(days=366)
SUGGESTIONS = 8


def _sending(request: Request) -> SendService:
    service: SendService = request.app.state.sending
    return service


def _composer(request: Request) -> ComposeService:
    service: ComposeService = request.app.state.composer
    return service


def _id(value: str) -> int | None:
    value = value.strip()
    return int(value) if value.isdigit() and 0 < int(value) <= MAX_ID else None


def split_addresses(value: str) -> list[str]:
    """A To/Cc/Bcc field's addresses: split at commas (and semicolons) outside a quoted name
    and outside ``<...>``, so ``"Hopper, Grace" <g@x.test>`` stays one."""
    parts: list[str] = []
    current: list[str] = []
    quoted = angled = False
    for char in value:
        if char == '"' and not angled:
            quoted = not quoted
        elif char == "<" and not quoted:
            angled = True
        elif char == ">" and not quoted:
            angled = False
        elif char in ",;" and not quoted and not angled:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


def _send_at(fields: dict[str, str], now: datetime) -> datetime | None:
    """The "Send later" field: the form's local date and time (``datetime-local``) moved to
    UTC by the browser's offset (``tz_offset``: minutes, as JavaScript's
    ``getTimezoneOffset``; none: the time is UTC). None: send now (after the undo grace).
    Raises ``ConfigError``."""
    value = fields["send_at"].strip()
    if not value:
        return None
    try:
        local = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError("Give a date and a time, e.g. 2030-01-31 09:00.") from None
    offset = fields["tz_offset"].strip()
    minutes = int(offset) if offset.lstrip("-").isdigit() and abs(int(offset)) <= 24 * 60 else 0
    when = local.replace(tzinfo=UTC) + timedelta(minutes=minutes)
    if local.tzinfo is not None:
        when = local.astimezone(UTC)
    if when <= now:
        raise ConfigError(
            "That time has passed: choose a later one, or leave it empty to send now."
        )
    if when - now > MAX_SCHEDULE_AHEAD:
        raise ConfigError("At most a year ahead.")
    return when


def _page(
    request: Request,
    user: User,
    *,
    form: dict[str, str],
    errors: dict[str, str] | None = None,
    reply: dict[str, Any] | None = None,
    notice: str | None = None,
    dropped: list[OutgoingAttachment] | None = None,
    status: int = 200,
) -> HTMLResponse:
    composer = _composer(request)
    sending = _sending(request)
    identities = composer.identities.list(user)
    if not form.get("identity_id"):
        default = next((i for i in identities if i.is_default), None)
        form = {**form, "identity_id": str(default.id) if default else ""}
    contacts = composer.crm.list_contacts(limit=200).items
    context = {
        "form": form,
        "errors": errors or {},
        "identities": identities,
        "templates": composer.templates.list(user),
        "contacts": contacts,
        "addresses": sorted({e for c in contacts for e in c.emails}),
        "limit": sending.settings.send_max_bytes,
        "undo_seconds": int(sending.settings.send_undo_seconds),
        "scheduled": len(_scheduled(sending, user)),
        "dropped": [f.filename for f in dropped or ()],
        "reply": reply,
        "notice": notice,
        "action": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
    }
    return _render(request, "compose.html", context, status=status, user=user)


async def _read_form(request: Request) -> tuple[dict[str, str], list[OutgoingAttachment]]:
    """The text fields and uploaded files; 403 without the session's CSRF token."""
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        raise HTTPException(415, "expected the composer's form (multipart/form-data)")
    files: list[OutgoingAttachment] = []
    async with request.form(max_files=MAX_FILES, max_fields=50) as form:
        if not tokens_match(_csrf(request), str(form.get("csrf") or "")):
            raise HTTPException(403, "This form has expired or did not come from this app. "
                                "Reload the page and try again.")  # fmt: skip
        fields = {
            name: str(form.get(name) or "")[: _MAX_FIELD.get(name, 4096)] for name in _TEXT_FIELDS
        }
        fields["action"] = str(form.get("action") or "send")
        for upload in form.getlist("attachments"):
            if isinstance(upload, UploadFile) and upload.filename:
                data = await upload.read()
                files.append(
                    uploaded(
                        upload.filename, upload.content_type or "application/octet-stream", data
                    )
                )
    return fields, files


def _compose(
    fields: dict[str, str], files: list[OutgoingAttachment], limit: int
) -> tuple[Compose | None, dict[str, str]]:
    """The send, or the errors by field."""
    errors: dict[str, str] = {}
    parsed: dict[str, tuple[tuple[str, str], ...]] = {}
    for name in ("to", "cc", "bcc"):
        values = split_addresses(fields[name])
        if len(values) > MAX_RECIPIENTS:
            errors[name] = f"At most {MAX_RECIPIENTS} addresses here."
            continue
        try:
            parsed[name] = parse_recipients(values)
        except ConfigError as exc:  # BadRecipient: names the address
            errors[name] = str(exc)
    size = sum(len(f.content or b"") for f in files)
    if size > limit:
        errors["attachments"] = (
            f"The attachments are {size:,} bytes ({_mb(size)}); the limit is {limit:,} bytes "
            f"({_mb(limit)}) in all. Remove some and attach the rest again."
        )
    send_at: datetime | None = None
    try:
        send_at = _send_at(fields, utcnow())
    except ConfigError as exc:
        errors["send_at"] = str(exc)
    if errors:
        return None, errors
    template_id = _id(fields["template_id"])
    text = fields["text"].replace("\r\n", "\n")
    return Compose(
        to=parsed["to"],
        cc=parsed["cc"],
        bcc=parsed["bcc"],
        subject=fields["subject"] or None,
        # With a template, an empty body is the template's (what is typed wins).
        text=text if text.strip() or template_id is None else None,
        attachments=tuple(files),
        template_id=template_id,
        contact_id=_id(fields["contact_id"]),
        send_at=send_at,
    ), {}


def _mb(size: int) -> str:
    return f"{size / 1048576:.1f} MB"


def _send_errors(exc: Exception) -> dict[str, str]:
    """A refused send's sentence, keyed by the form field it is about."""
    if isinstance(exc, MissingMergeFields):
        return {"template_id": str(exc)}
    if isinstance(exc, RecordMissing):
        return {"contact_id": str(exc)}
    if isinstance(exc, MessageTooLarge):
        return {"attachments": str(exc)}
    field = exc.field if isinstance(exc, ComposeError) else ""
    field = {"from": "form", "subject": "form"}.get(field, field)
    return {field if field in ("to", "cc", "bcc", "attachments") else "form": str(exc)}


def _fill(
    request: Request, user: User, fields: dict[str, str], *, keep_subject: bool = False
) -> dict[str, str]:
    """The chosen template rendered for the chosen contact into Subject and body (the API's
    ``POST /templates/{id}/render``); raises as the render does. A reply keeps its ``Re:``
    subject (``keep_subject``), as the API's reply routes do."""
    template_id = _id(fields["template_id"])
    if template_id is None:
        raise ConfigError("Choose a template first.")
    rendered = _composer(request).render(
        user,
        template_id,
        contact_id=_id(fields["contact_id"]),
        identity_id=_id(fields["identity_id"]),
        user_name=user.display_name or "",
        user_email=user.email,
    )
    text = rendered.text if rendered.text is not None else ""
    subject = fields["subject"] if keep_subject else rendered.subject or fields["subject"]
    return {**fields, "subject": subject, "text": text}


def _done(record: SendRecord) -> RedirectResponse:
    where = f"/conversation/{record.thread_id}" if record.thread_id else "/compose"
    return RedirectResponse(f"{where}?sent={record.outbox.id}", status_code=303)


# --- a new message ----------------------------------------------------------------------------


@router.get("/compose")
def compose_page(
    request: Request,
    user: PageUser,
    undone: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    sent: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> HTMLResponse:
    """A new message, from the default identity (``GET /compose/defaults``' choice)."""
    notice = (
        "Undone: the message was not sent." if undone else ("Queued to send." if sent else None)
    )
    return _page(request, user, form={}, notice=notice)


@router.post("/compose")
async def compose_send(request: Request, user: PageUser) -> Response:
    """Send (``SendService.send_new``), or fill the template in (``action=fill``)."""
    fields, files = await _read_form(request)
    return await _submit(request, user, fields, files, reply=None)


async def _submit(
    request: Request,
    user: User,
    fields: dict[str, str],
    files: list[OutgoingAttachment],
    *,
    reply: dict[str, Any] | None,
) -> Response:
    if fields["action"] == "fill":
        try:
            filled = await in_thread(
                lambda: _fill(request, user, fields, keep_subject=reply is not None)
            )
        except ConfigError as exc:
            errors = _send_errors(exc)
            if "form" in errors:
                errors = {"template_id": errors["form"]}
            return await in_thread(
                lambda: _page(
                    request,
                    user,
                    form=fields,
                    errors=errors,
                    reply=reply,
                    dropped=files,
                    status=422,
                )
            )
        return await in_thread(
            lambda: _page(request, user, form=filled, reply=reply, dropped=files)
        )
    service = _sending(request)
    compose, errors = _compose(fields, files, service.settings.send_max_bytes)
    if compose is None:
        return await in_thread(
            lambda: _page(
                request, user, form=fields, errors=errors, reply=reply, dropped=files, status=422
            )
        )
    identity_id = _id(fields["identity_id"])

    def send() -> SendRecord:
        assert compose is not None
        if reply is None:
            return service.send_new(user, None, compose, identity_id=identity_id)
        return service.respond(
            user, reply["message_id"], reply["mode"], compose, identity_id=identity_id
        )

    try:
        record = await in_thread(send)
    except (ConfigError, PermissionError) as exc:  # merge fields, size, a recipient, As whom
        errors = _send_errors(exc)
        return await in_thread(
            lambda: _page(
                request, user, form=fields, errors=errors, reply=reply, dropped=files, status=422
            )
        )
    return _done(record)


# --- replies and forwards ---------------------------------------------------------------------

Mode = Annotated[str, Query(pattern="^(reply|reply-all|forward)$")]
MessageQuery = Annotated[int, Query(ge=1, le=MAX_ID)]


def _reply_context(
    request: Request, user: User, thread_id: int, message_id: int, mode: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """The original (a message of the thread the caller may see) and the prefilled fields."""
    reader: MailboxReader = request.app.state.reader
    thread = reader.get_thread(thread_id)
    if message_id not in {m.id for m in thread.messages}:
        raise NotFound(f"no message {message_id} in this conversation")
    chosen: ReplyMode = next(m for m in _MODES if m == mode)
    draft, sender = _sending(request).response_draft(user, message_id, chosen)

    def shown(addresses: Any) -> str:
        return ", ".join(a.email if not a.name else f"{a.name} <{a.email}>" for a in addresses)

    reply = {
        "message_id": message_id,
        "mode": chosen,
        "thread": thread,
        "quoted": draft.text or "",
        "forwarded": [a.filename or "attachment" for a in draft.attachments],
    }
    form = {
        "identity_id": str(sender.identity.id) if sender.identity is not None else "",
        "to": shown(draft.to),
        "cc": shown(draft.cc),
        "bcc": "",
        "subject": draft.subject,
        "text": "",
        "template_id": "",
        "contact_id": "",
    }
    return reply, form


@router.get("/conversation/{thread_id}/reply")
@needs("full")
def reply_page(
    request: Request, user: PageUser, thread_id: PathId, message: MessageQuery, mode: Mode = "reply"
) -> HTMLResponse:
    """The composer prefilled to reply, reply to all or forward ``message``."""
    reply, form = _reply_context(request, user, thread_id, message, mode)
    return _page(request, user, form=form, reply=reply)


@router.post("/conversation/{thread_id}/reply")
@needs("full")
async def reply_send(
    request: Request, user: PageUser, thread_id: PathId, message: MessageQuery, mode: Mode = "reply"
) -> Response:
    """Send the reply or forward (``SendService.respond``)."""
    fields, files = await _read_form(request)
    reply, _prefill = await in_thread(
        lambda: _reply_context(request, user, thread_id, message, mode)
    )
    return await _submit(request, user, fields, files, reply=reply)


# --- the confirmation and undo ----------------------------------------------------------------


def _own_send(request: Request, user: User, outbox_id: int) -> SendRecord:
    """A send the caller queued (an admin: any); another's is a 404, as one that is not."""
    service = _sending(request)
    if not user.is_admin and service.sends.actor_of(outbox_id) != user.id:
        raise NotFound(f"no send with id {outbox_id}")
    return service.sends.get(outbox_id)


def sent_notice(request: Request, user: User, outbox_id: int) -> dict[str, Any] | None:
    """The thread page's confirmation of a send (None: not the caller's): its status, and
    whether it can still be undone (``scheduled``: in the undo grace)."""
    try:
        record = _own_send(request, user, outbox_id)
    except NotFound:
        return None
    grace = timedelta(seconds=_sending(request).settings.send_undo_seconds + 1)
    return {
        "outbox_id": outbox_id,
        "status": record.status,
        "send_at": record.send_at,
        "undo": record.status == "scheduled",
        # Scheduled by "Send later" (not only the undo grace): said so, and where to find it.
        "later": record.send_at - record.outbox.created_at > grace,
    }


@router.post("/compose/sent/{outbox_id}/undo")
@needs("full")
def undo_send(
    request: Request, user: PageUser, outbox_id: PathId, _form: SignedForm
) -> RedirectResponse:
    """Undo a send during its grace (``POST /outbox/{id}/cancel``'s service); too late is a
    409 page saying what it is now."""
    _own_send(request, user, outbox_id)
    record = _sending(request).cancel(outbox_id)
    reader: MailboxReader = request.app.state.reader
    if record.thread_id is not None:
        try:
            if reader.get_thread(record.thread_id).messages:
                return RedirectResponse(
                    f"/conversation/{record.thread_id}?sent={outbox_id}", status_code=303
                )
        except NotFound:
            pass
    return RedirectResponse(f"/compose?undone={outbox_id}", status_code=303)


# --- scheduled sends ------------------------------------------------------------------------


def _scheduled(service: SendService, user: User) -> list[SendListing]:
    """The caller's sends not yet done (scheduled, going, failed or unknown), newest first:
    ``SendStore.open_sends``, as ``correspond outbox list`` shows them."""
    return service.sends.open_sends(user_id=user.id, limit=200)


@router.get("/compose/scheduled")
def scheduled_page(
    request: Request,
    user: PageUser,
    cancelled: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> HTMLResponse:
    """The caller's scheduled and unfinished sends, each scheduled one with Cancel."""
    sends = _scheduled(_sending(request), user)
    notice = "Cancelled: the message will not be sent." if cancelled else None
    return _render(request, "scheduled.html", {"sends": sends, "notice": notice}, user=user)


@router.post("/compose/scheduled/{outbox_id}/cancel")
@needs("full")
def cancel_scheduled(
    request: Request, user: PageUser, outbox_id: PathId, _form: SignedForm
) -> RedirectResponse:
    """Call off a scheduled send (``POST /outbox/{id}/cancel``'s service); too late is a 409
    page saying what it is now."""
    _own_send(request, user, outbox_id)
    _sending(request).cancel(outbox_id)
    return RedirectResponse(f"/compose/scheduled?cancelled={outbox_id}", status_code=303)


# --- recipient suggestions ------------------------------------------------------------------


@router.get("/compose/contacts")
def contact_suggestions(
    request: Request,
    user: PageUser,
    q: Annotated[str, Query(max_length=200)] = "",
) -> JSONResponse:
    """To/Cc/Bcc suggestions: contacts whose name or address has ``q`` (``CrmStore.
    list_contacts``, as ``GET /contacts?q=``; CRM records are everyone's), one entry per
    address, at most :data:`SUGGESTIONS`."""
    q = q.strip()
    items: list[dict[str, str]] = []
    if q:
        found = _composer(request).crm.list_contacts(q=q, limit=SUGGESTIONS).items
        needle = q.lower()
        for contact in found:
            emails = sorted(contact.emails, key=lambda e: needle not in e.lower())
            for address in emails:
                items.append({"name": contact.name or "", "email": address})
    return JSONResponse({"items": items[:SUGGESTIONS]}, headers={"Cache-Control": "no-store"})
