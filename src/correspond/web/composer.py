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

The body is HTML when the browser has script (``static/app.js``'s editor: bold, italic, link,
bulleted list, inline images), posted in ``html`` and sanitised by the thread page's own
sanitizer (``mail.sanitize.sanitize_html``, nh3) before the message is built; its text part
is derived from it by the builder. Inline images come as ``inline`` files with their content
ids in ``inline_cid`` (the JSON API's ``inline``/``inline_content_ids``), referenced as
``cid:`` in the HTML; they count against the send limit. Drafts (``DraftService``, as
``/drafts``): ``action=draft`` saves the form and reopens it, ``/compose/draft`` is the
autosave's JSON (:mod:`correspond.web.compose_drafts`); a form with ``draft_id`` sends with
that draft's kept files (``keep_file``) and the send removes the draft (``SendService``'s
``draft_id``: in the queueing transaction).

"Send later" (``send_at``, the browser's local time with its offset in ``tz_offset``) gives
``Compose.send_at``; ``/compose/scheduled`` lists the caller's unsent sends
(``SendStore.open_sends``) with Cancel (``SendService.cancel``). ``/compose/contacts?q=`` is the
To/Cc/Bcc suggestions' JSON (``CrmStore.list_contacts``, as ``GET /contacts?q=``). What the
browser adds (file sizes and the limit, the suggestion list, local times) is ``static/app.js``'s
composer functions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.datastructures import UploadFile

from correspond.api.security import MAX_ID, needs
from correspond.composer import ComposeService, RecordMissing
from correspond.drafts import DraftService
from correspond.errors import ConfigError, NotFound
from correspond.mail.compose import ComposeError, MessageTooLarge
from correspond.mail.merge import MissingMergeFields
from correspond.mail.outgoing import OutgoingAttachment, uploaded
from correspond.mail.sanitize import sanitize_html
from correspond.mailbox import MailboxReader
from correspond.outgoing import Compose, ReplyMode, SendService, parse_recipients
from correspond.store.drafts import Draft, DraftFields, DraftFile
from correspond.store.sends import SendListing, SendRecord
from correspond.store.tables import utcnow
from correspond.store.users import User
from correspond.sync.threads import in_thread
from correspond.web.csrf import tokens_match
from correspond.web.pages import PageRoute, PageUser, PathId, SignedForm, _csrf, _render

__all__ = [
    "MAX_FILES",
    "ComposerForm",
    "clean_html",
    "draft_fields",
    "read_composer_form",
    "router",
    "sent_notice",
    "split_addresses",
]

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
    "html",
    "draft_id",
    "in_reply_to",
    "reply_mode",
)
_MAX_FIELD = {"text": 1_000_000, "html": 4_000_000, "subject": 2000}
#: The largest text field a composer form may carry (the HTML body).
MAX_PART = 4_000_000
#: An inline image's content id as the editor makes it (``mail.compose`` checks it again).
_CID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,100}@[A-Za-z0-9.-]{1,100}\Z")
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
    draft: Draft | None = None,
    status: int = 200,
) -> HTMLResponse:
    composer = _composer(request)
    editor = _editor_context(form, draft)
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
        "dropped": [f.filename for f in dropped or () if f.content_id is None],
        **editor,
        "reply": reply,
        "notice": notice,
        "action": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
    }
    return _render(request, "compose.html", context, status=status, user=user)


@dataclass
class ComposerForm:
    """A composer form as posted: its text fields, the uploaded files (inline images with
    their content id), and the ids of a draft's earlier files to keep (``keep_file``)."""

    fields: dict[str, str]
    files: list[OutgoingAttachment] = field(default_factory=list)
    keep: list[int] = field(default_factory=list)


def draft_file_url(draft_id: int, file_id: int | None) -> str:
    return f"/compose/drafts/{draft_id}/files/{file_id}"


def _editor_context(form: dict[str, str], draft: Draft | None) -> dict[str, Any]:
    """The editor's HTML (sanitised again for this page: a draft's ``cid:`` images shown from
    the draft's files), and the draft's other files, kept unless removed."""
    inline = {f.content_id: f for f in draft.files if f.content_id} if draft else {}
    urls = {cid: draft_file_url(draft.id, f.id) for cid, f in inline.items() if draft}
    html = form.get("html") or ""
    editor_html = sanitize_html(html, cid_urls=urls, allow_remote_images=True).html if html else ""
    keep = {int(k) for k in (form.get("keep_file") or "").split(",") if k.isdigit()}
    return {
        "editor_html": editor_html,
        "draft": draft,
        "draft_files": [
            f
            for f in (draft.files if draft else ())
            if f.content_id is None and (not form.get("keep_file") or f.id in keep)
        ],
        "draft_inline": [{"cid": cid, "id": f.id, "url": urls[cid]} for cid, f in inline.items()],
    }


async def read_composer_form(request: Request, *, token: str | None = None) -> ComposerForm:
    """The text fields, uploaded files and kept draft files; 403 without the session's CSRF
    token (in the ``csrf`` field, or ``token``: the autosave's header)."""
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        raise HTTPException(415, "expected the composer's form (multipart/form-data)")
    files: list[OutgoingAttachment] = []
    async with request.form(
        max_files=MAX_FILES * 2, max_fields=50 + MAX_FILES * 2, max_part_size=MAX_PART
    ) as form:
        given = token if token is not None else str(form.get("csrf") or "")
        if not tokens_match(_csrf(request), given):
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
        cids = [str(c) for c in form.getlist("inline_cid")]
        inline = [u for u in form.getlist("inline") if isinstance(u, UploadFile)]
        for upload, cid in zip(inline, cids, strict=False):
            if not _CID.match(cid) or not (upload.content_type or "").startswith("image/"):
                continue  # not the editor's: left out (the HTML's reference shows broken)
            data = await upload.read()
            image = uploaded(upload.filename or "image", upload.content_type or "", data)
            files.append(replace(image, content_id=cid))
        keep = [int(v) for v in (str(x) for x in form.getlist("keep_file")) if _id(v)]
    return ComposerForm(fields, files, keep[: MAX_FILES * 2])


async def _read_form(request: Request) -> tuple[dict[str, str], list[OutgoingAttachment]]:
    form = await read_composer_form(request)
    form.fields["keep_file"] = ",".join(str(k) for k in form.keep)
    return form.fields, form.files


def clean_html(html: str, content_ids: set[str] | frozenset[str]) -> str | None:
    """The editor's HTML made safe to send by the thread page's sanitizer (nh3): ``cid:``
    references kept for the given inline images only; None when nothing is left to show."""
    if not html.strip():
        return None
    cleaned = sanitize_html(
        html, cid_urls={cid: f"cid:{cid}" for cid in content_ids}, allow_remote_images=True
    ).html
    has_image = "<img" in cleaned
    if not has_image and not re.sub(r"<[^>]*>|&nbsp;|\s", "", cleaned):
        return None
    return cleaned


def draft_fields(fields: dict[str, str], content_ids: set[str]) -> DraftFields:
    """A composer form as a draft (``DraftService``): recipients as typed, the HTML cleaned."""
    html = clean_html(fields["html"], content_ids)
    mode = fields["reply_mode"] if fields["reply_mode"] in _MODES else None
    in_reply_to = _id(fields["in_reply_to"]) if mode else None
    return DraftFields(
        identity_id=_id(fields["identity_id"]),
        to=tuple(split_addresses(fields["to"])[:MAX_RECIPIENTS]),
        cc=tuple(split_addresses(fields["cc"])[:MAX_RECIPIENTS]),
        bcc=tuple(split_addresses(fields["bcc"])[:MAX_RECIPIENTS]),
        subject=fields["subject"] or None,
        text=None if html is not None else (fields["text"].replace("\r\n", "\n") or None),
        html=html,
        in_reply_to_id=in_reply_to if mode else None,
        reply_mode=mode if in_reply_to else None,
        template_id=_id(fields["template_id"]),
    )


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
            f"The attachments and inline images are {size:,} bytes ({_mb(size)}); the limit "
            f"is {limit:,} bytes "
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
    cids = {f.content_id for f in files if f.content_id}
    html = clean_html(fields["html"], cids)
    if html is not None:
        # Only the images the HTML shows go along; the text part is derived from the HTML.
        files = [f for f in files if f.content_id is None or f"cid:{f.content_id}" in html]
        text = ""
    else:
        files = [f for f in files if f.content_id is None]
    return Compose(
        to=parsed["to"],
        cc=parsed["cc"],
        bcc=parsed["bcc"],
        subject=fields["subject"] or None,
        # With a template, an empty body is the template's (what is typed wins).
        text=text if text.strip() or (template_id is None and html is None) else None,
        html=html,
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
    # The template's HTML (if any) goes in the editor; the typed HTML gives way, as the text.
    return {**fields, "subject": subject, "text": text, "html": rendered.html or ""}


def save_draft(
    drafts: DraftService,
    user: User,
    fields: dict[str, str],
    files: list[OutgoingAttachment],
    keep: list[int],
    draft: Draft | None,
) -> Draft:
    """The form saved as a new draft, or over ``draft`` (its files in ``keep`` stay; the
    uploaded ones are added). Raises as ``DraftService`` does (ConfigError: over a limit)."""
    cids = {f.content_id for f in files if f.content_id}
    cids |= {f.content_id for f in (draft.files if draft else ()) if f.content_id and f.id in keep}
    saved = draft_fields(fields, cids)
    uploads = [
        DraftFile(f.filename, f.content_type, len(f.content or b""), f.content_id, f.content)
        for f in files
        if f.content_id is None or (saved.html and f"cid:{f.content_id}" in saved.html)
    ]
    if draft is None:
        return drafts.create(user, saved, uploads)
    return drafts.replace(user, draft.id, saved, uploads, keep_file_ids=keep)


async def _save_draft(
    request: Request,
    user: User,
    fields: dict[str, str],
    files: list[OutgoingAttachment],
    keep: list[int],
    draft: Draft | None,
    *,
    reply: dict[str, Any] | None,
) -> Response:
    """ "Save draft": saved through ``DraftService``, the composer reopened on it."""
    if reply is not None:
        fields = {**fields, "in_reply_to": str(reply["message_id"]), "reply_mode": reply["mode"]}
    drafts: DraftService = request.app.state.drafts
    try:
        saved = await in_thread(lambda: save_draft(drafts, user, fields, files, keep, draft))
    except ConfigError as exc:
        problem = {"form": f"Not saved: {exc}"}
        return await in_thread(
            lambda: _page(
                request,
                user,
                form=fields,
                errors=problem,
                reply=reply,
                dropped=files,
                draft=draft,
                status=422,
            )
        )
    if reply is not None:
        where = f"/conversation/{reply['thread'].id}/reply?message={reply['message_id']}"
        return RedirectResponse(
            f"{where}&mode={reply['mode']}&draft={saved.id}&saved=1", status_code=303
        )
    return RedirectResponse(f"/compose?draft={saved.id}&saved=1", status_code=303)


def draft_form(draft: Draft) -> dict[str, str]:
    """A saved draft as the composer's form."""
    f = draft.fields
    return {
        "identity_id": str(f.identity_id or ""),
        "to": ", ".join(f.to),
        "cc": ", ".join(f.cc),
        "bcc": ", ".join(f.bcc),
        "subject": f.subject or "",
        "text": f.text or "",
        "html": f.html or "",
        "template_id": str(f.template_id or ""),
        "contact_id": "",
        "send_at": "",
        "tz_offset": "",
        "draft_id": str(draft.id),
    }


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
    draft: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    saved: Annotated[int | None, Query(ge=1, le=1)] = None,
) -> HTMLResponse:
    """A new message, from the default identity (``GET /compose/defaults``' choice), or a
    saved draft of the caller's (``draft``; another's is a 404)."""
    notice = (
        "Undone: the message was not sent." if undone else ("Queued to send." if sent else None)
    )
    if draft is not None:
        found = request.app.state.drafts.get(user, draft)
        if saved:
            notice = "Draft saved."
        return _page(request, user, form=draft_form(found), notice=notice, draft=found)
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
    drafts: DraftService = request.app.state.drafts
    draft_id = _id(fields["draft_id"])
    keep = [int(k) for k in fields.get("keep_file", "").split(",") if k.isdigit()]
    draft: Draft | None = None
    if draft_id is not None:
        # The draft's files the form kept (NotFound: not the caller's draft, a 404).
        draft = await in_thread(lambda: drafts.drafts.get(user, draft_id, content=True))
    if fields["action"] == "draft":
        return await _save_draft(request, user, fields, files, keep, draft, reply=reply)
    kept = [
        OutgoingAttachment(
            filename=f.filename,
            content_type=f.content_type,
            content=f.content or b"",
            content_id=f.content_id,
        )
        for f in (draft.files if draft else ())
        if f.id in keep
    ]
    service = _sending(request)
    compose, errors = _compose(fields, kept + files, service.settings.send_max_bytes)

    async def refused(errors: dict[str, str]) -> Response:
        """The form again, with each error beside its field (the files must be chosen again)."""
        return await in_thread(
            lambda: _page(
                request,
                user,
                form=fields,
                errors=errors,
                reply=reply,
                dropped=files,
                draft=draft,
                status=422,
            )
        )

    if compose is None:
        return await refused(errors)
    identity_id = _id(fields["identity_id"])

    def send() -> SendRecord:
        assert compose is not None
        if reply is None:
            return service.send_new(user, None, compose, identity_id=identity_id, draft_id=draft_id)
        return service.respond(
            user,
            reply["message_id"],
            reply["mode"],
            compose,
            identity_id=identity_id,
            draft_id=draft_id,
        )

    try:
        record = await in_thread(send)
    except (ConfigError, PermissionError) as exc:  # merge fields, size, a recipient, As whom
        return await refused(_send_errors(exc))
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
    request: Request,
    user: PageUser,
    thread_id: PathId,
    message: MessageQuery,
    mode: Mode = "reply",
    draft: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    saved: Annotated[int | None, Query(ge=1, le=1)] = None,
) -> HTMLResponse:
    """The composer prefilled to reply, reply to all or forward ``message`` (or with a saved
    draft of that reply, ``draft``)."""
    reply, form = _reply_context(request, user, thread_id, message, mode)
    if draft is not None:
        found = request.app.state.drafts.get(user, draft)
        notice = "Draft saved." if saved else None
        return _page(request, user, form=draft_form(found), reply=reply, draft=found, notice=notice)
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
