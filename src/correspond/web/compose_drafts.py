"""Drafts from the web composer, through ``DraftService`` as the JSON API's ``/drafts``.

- ``POST /compose/draft``: the composer's autosave (and its "Save draft" with script): the
  whole form as ``multipart/form-data`` with the session's CSRF token in the ``X-CSRF-Token``
  header; a new draft, or saved over ``draft_id``; answers JSON (the draft's id and files).
- ``GET /compose/drafts``: the caller's drafts, the last changed first, each with Open and
  Delete (``POST /compose/drafts/{id}/delete``, a signed form).
- ``GET /compose/drafts/{id}/open``: the composer on it (a reply's on its thread's reply page).
- ``GET /compose/drafts/{id}/files/{file_id}``: a draft's file (the editor shows its inline
  images from here): ``nosniff``, an attachment unless it is a raster image.

A draft is its owner's alone: another user's id is a 404, as one that does not exist.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from correspond.api.security import MAX_ID
from correspond.drafts import DraftService
from correspond.errors import ConfigError
from correspond.mailbox import MailboxReader
from correspond.store.drafts import Draft
from correspond.sync.threads import in_thread
from correspond.web.composer import draft_file_url, read_composer_form, save_draft
from correspond.web.pages import PageRoute, PageUser, PathId, SignedForm, _render

__all__ = ["router"]

router = APIRouter(route_class=PageRoute, include_in_schema=False)

FileId = Annotated[int, Path(ge=1, le=MAX_ID)]
#: Images the editor shows from a draft (everything else is downloaded, never rendered).
_SHOWN = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})


def _drafts(request: Request) -> DraftService:
    service: DraftService = request.app.state.drafts
    return service


def _public(draft: Draft) -> dict[str, object]:
    return {
        "id": draft.id,
        "size": draft.size,
        "updated_at": draft.updated_at.isoformat(),
        "files": [
            {
                "id": f.id,
                "filename": f.filename,
                "size": f.size,
                "content_id": f.content_id,
                "url": draft_file_url(draft.id, f.id),
            }
            for f in draft.files
        ],
    }


@router.post("/compose/draft")
async def autosave_draft(request: Request, user: PageUser) -> JSONResponse:
    """Save the composer's form as a draft (new, or over ``draft_id``); 403 without the
    token in ``X-CSRF-Token``; 422 with the reason when over a limit."""
    form = await read_composer_form(request, token=request.headers.get("x-csrf-token", ""))
    service = _drafts(request)
    draft_id = form.fields["draft_id"].strip()
    existing: Draft | None = None
    if draft_id:
        if not draft_id.isdigit() or not 0 < int(draft_id) <= MAX_ID:
            return JSONResponse({"detail": "bad draft_id"}, status_code=422)
        existing = await in_thread(service.get, user, int(draft_id))
    try:
        saved = await in_thread(
            lambda: save_draft(service, user, form.fields, form.files, form.keep, existing)
        )
    except ConfigError as exc:
        return JSONResponse({"detail": f"Not saved: {exc}"}, status_code=422)
    return JSONResponse(_public(saved), headers={"Cache-Control": "no-store"})


@router.get("/compose/drafts")
def drafts_page(
    request: Request,
    user: PageUser,
    deleted: Annotated[int | None, Query(ge=1, le=1)] = None,
) -> HTMLResponse:
    """The caller's drafts, the last changed first."""
    drafts = _drafts(request).list(user, limit=200)
    notice = "Draft deleted." if deleted else None
    return _render(request, "drafts.html", {"drafts": drafts, "notice": notice}, user=user)


@router.get("/compose/drafts/{draft_id}/open")
def open_draft(request: Request, user: PageUser, draft_id: PathId) -> RedirectResponse:
    """The composer on the draft: a reply's on the reply page of its thread."""
    draft = _drafts(request).get(user, draft_id)
    f = draft.fields
    if f.in_reply_to_id is not None and f.reply_mode is not None:
        reader: MailboxReader = request.app.state.reader
        thread_id = reader.get_message(f.in_reply_to_id).thread_id
        if thread_id is not None:
            return RedirectResponse(
                f"/conversation/{thread_id}/reply?message={f.in_reply_to_id}"
                f"&mode={f.reply_mode}&draft={draft.id}",
                status_code=303,
            )
    return RedirectResponse(f"/compose?draft={draft.id}", status_code=303)


@router.post("/compose/drafts/{draft_id}/delete")
def delete_draft(
    request: Request, user: PageUser, draft_id: PathId, _form: SignedForm
) -> RedirectResponse:
    """Delete one of the caller's drafts (``DELETE /drafts/{id}``'s service)."""
    _drafts(request).delete(user, draft_id)
    return RedirectResponse("/compose/drafts?deleted=1", status_code=303)


@router.get("/compose/drafts/{draft_id}/files/{file_id}")
def draft_file(request: Request, user: PageUser, draft_id: PathId, file_id: FileId) -> Response:
    """One file of the caller's draft; raster images shown inline, the rest downloaded."""
    draft = _drafts(request).drafts.get(user, draft_id, content=True)
    found = next((f for f in draft.files if f.id == file_id), None)
    if found is None:
        return Response("no such file", status_code=404, media_type="text/plain")
    kind = found.content_type.lower()
    shown = kind in _SHOWN
    return Response(
        found.content or b"",
        media_type=kind if shown else "application/octet-stream",
        headers={
            "Content-Disposition": "inline" if shown else "attachment",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, no-store",
        },
    )
