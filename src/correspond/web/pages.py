"""The web app's pages: sign-in, sign-out and first run; the personal and team inboxes; a
thread; Email Settings (SMTP & BCC, Email Preferences; Full Email Sync is
:mod:`correspond.web.settings_sync`); templates.

Each page is a route of :data:`router` (left out of the OpenAPI document: HTML, not API) and
reads the same services as the JSON API from ``app.state`` (``InboxQueries``, ``MailboxReader``,
``OutboxStore``, ``AuthService``, ``ComposeService``), with the same sign-in and visibility checks
(:func:`correspond.api.security.current_user` and :func:`~correspond.api.security.authorize`)
by the session cookie. Without a session a page answers 303 to ``/login``; a thing the caller
may not see is a 404 page, as in the API.

Every response of a page carries :data:`PAGE_HEADERS` (a strict CSP: scripts and styles only
from ``/static``, no inline script, no framing); a message's HTML is served on its own route
with :data:`FRAME_CSP` (nothing but images and inline styles) into a sandboxed iframe (no
``allow-scripts``, no ``allow-same-origin``). Every form carries a CSRF token
(:mod:`correspond.web.csrf`).
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from correspond.api.security import MAX_ID, authorize, current_user, needs
from correspond.auth import SESSION_COOKIE, AuthService, LoginThrottled
from correspond.composer import ComposeService
from correspond.errors import ConfigError, CorrespondError, NotFound
from correspond.mail.merge import FIELDS, RenderedTemplate
from correspond.mailbox import MailboxReader
from correspond.store.compose import Template, TemplateFields
from correspond.store.outbox import OutboxStore
from correspond.store.users import User
from correspond.web.csrf import FORM_COOKIE, new_form_token, session_token, tokens_match

__all__ = ["FRAME_CSP", "PAGE_HEADERS", "PUBLIC_PAGES", "STATIC_URL", "mount_web", "router"]

STATIC_URL = "/static"
_HERE = FilePath(__file__).parent
_MAX_FORM_FIELD = 4096

#: Sent with every page (and every redirect or error page of the web app).
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
#: A message's sanitised HTML: no script, no fetch, no form, no font, no frame; inline styles;
#: images from this origin (cid: parts) and data: URLs, remote ones only when asked for.
FRAME_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:{remote}; "
    "form-action 'none'; base-uri 'none'; frame-ancestors 'self'; sandbox allow-popups "
    "allow-popups-to-escape-sandbox"
)
#: cid: images a message frame carries as data: URLs (raster types, the sanitiser's list too)
#: and how many decoded bytes of them per frame.
INLINE_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
FRAME_INLINE_BYTES = 8 * 1024 * 1024
#: Pages reachable without a session (the walk in tests/test_auth_api.py).
PUBLIC_PAGES = {("GET", "/login"), ("POST", "/login"), ("GET", "/welcome"), ("POST", "/welcome")}

_templates = Environment(
    loader=FileSystemLoader(_HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
_first_run_lock = threading.Lock()


#: The longest page address kept across a sign-in (``next``).
_MAX_NEXT = 2000


def local_path(value: str) -> bool:
    """Whether ``value`` is a path on this site that a sign-in may send the user back to:
    one leading slash, no scheme or host (``//host``, ``/\\host`` and control characters
    are how an open redirect is made), printable ASCII, bounded."""
    return (
        0 < len(value) <= _MAX_NEXT
        and value.startswith("/")
        and not value.startswith(("//", "/\\"))
        and value.isascii()
        and value.isprintable()
        and "\\" not in value
    )


class _SignInNeeded(Exception):
    """No session (or an ended one): the page answers 303 to /login."""


def _error_page(request: Request, status: int, detail: str) -> HTMLResponse:
    return _render(request, "error.html", {"status": status, "detail": detail}, status=status)


class PageRoute(APIRoute):
    """A page: errors become HTML pages (or a 303 to /login) and every answer gets
    :data:`PAGE_HEADERS` (the frame route sets its own CSP first, which is kept)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            try:
                response = await handler(request)
            except _SignInNeeded:
                where = "/login"
                if request.method == "GET":
                    back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                    if back != "/" and local_path(back):
                        where += "?" + urlencode({"next": back})
                response = RedirectResponse(where, status_code=303)
                response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")
            except HTTPException as exc:
                response = _error_page(request, exc.status_code, str(exc.detail))
            except RequestValidationError:
                response = _error_page(request, 422, "That address is not one this app knows.")
            except CorrespondError as exc:
                from correspond.api.app import status_for  # the app imports this module

                response = _error_page(request, status_for(exc), str(exc))
            for name, value in PAGE_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return run


router = APIRouter(route_class=PageRoute, include_in_schema=False)


# --- who is calling ---------------------------------------------------------------------------


async def page_user(request: Request) -> User:
    """The signed-in user by session cookie, with the API's visibility checks on what the path
    names (404 hidden, 403 not enough access). Bearer tokens are not for pages."""
    if "authorization" in request.headers or not request.cookies.get(SESSION_COOKIE):
        raise _SignInNeeded
    try:
        user = await asyncio.to_thread(current_user, request)
        return await authorize(request, user)
    except HTTPException as exc:
        if exc.status_code == 401:
            raise _SignInNeeded from exc
        raise


PageUser = Annotated[User, Depends(page_user)]


def _auth(request: Request) -> AuthService:
    auth: AuthService = request.app.state.auth
    return auth


def _csrf(request: Request) -> str:
    return session_token(request.cookies.get(SESSION_COOKIE, ""))


async def _form(request: Request) -> dict[str, str]:
    """The urlencoded form's fields (first value of each; bounded by the guard's body limit)."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise HTTPException(415, "expected a form (application/x-www-form-urlencoded)")
    body = (await request.body()).decode("utf-8", errors="replace")
    fields = parse_qs(body, keep_blank_values=True, max_num_fields=50)
    return {k: v[0][:_MAX_FORM_FIELD] for k, v in fields.items() if v}


async def signed_form(request: Request, _user: PageUser) -> dict[str, str]:
    """The form of a signed-in page, refused (403) without the session's CSRF token."""
    form = await _form(request)
    if not tokens_match(_csrf(request), form.get("csrf")):
        raise HTTPException(403, "This form has expired or did not come from this app. Reload "
                            "the page and try again.")  # fmt: skip
    return form


SignedForm = Annotated[dict[str, str], Depends(signed_form)]


async def signed_multi_form(request: Request, *, max_fields: int) -> dict[str, list[str]]:
    """A signed-in page's form with every value of each field (checkboxes, multiple selects:
    :func:`signed_form` keeps one), at most ``max_fields`` fields (413 beyond), refused (403)
    without the session's CSRF token."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise HTTPException(415, "expected a form (application/x-www-form-urlencoded)")
    body = (await request.body()).decode("utf-8", errors="replace")
    try:
        fields = parse_qs(body, keep_blank_values=True, max_num_fields=max_fields)
    except ValueError as exc:
        raise HTTPException(413, "too many fields in this form") from exc
    if not tokens_match(_csrf(request), (fields.get("csrf") or [""])[0]):
        raise HTTPException(403, "This form has expired or did not come from this app. Reload "
                            "the page and try again.")  # fmt: skip
    return fields


async def public_form(request: Request) -> dict[str, str]:
    """A form used before signing in, refused (403) unless it repeats its cookie's token."""
    form = await _form(request)
    if not tokens_match(request.cookies.get(FORM_COOKIE), form.get("csrf")):
        raise HTTPException(403, "This form has expired. Reload the page and try again.")
    return form


PublicForm = Annotated[dict[str, str], Depends(public_form)]


# --- rendering --------------------------------------------------------------------------------


def _render(
    request: Request,
    template: str,
    context: dict[str, Any],
    *,
    status: int = 200,
    user: User | None = None,
) -> HTMLResponse:
    # The banner of base.html: the caller's mailboxes stopped on a problem (one short query).
    trouble = request.app.state.accounts.trouble(user) if user else []
    html = _templates.get_template(template).render(
        static=STATIC_URL,
        user=user,
        csrf=_csrf(request) if user else "",
        account_trouble=trouble,
        **context,
    )
    return HTMLResponse(html, status_code=status)


def _public_page(
    request: Request, template: str, context: dict[str, Any], status: int = 200
) -> HTMLResponse:
    """A page with a pre-session form: its token, and the cookie it must match."""
    token = request.cookies.get(FORM_COOKIE) or new_form_token()
    response = _render(request, template, {**context, "form_token": token}, status=status)
    response.set_cookie(
        FORM_COOKIE,
        token,
        max_age=3600,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


def _start_session(request: Request, response: Response, auth: AuthService, value: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=auth.settings.session_ttl_seconds,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )
    response.delete_cookie(FORM_COOKIE, path="/")


def _client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


# --- sign-in, sign-out, first run ------------------------------------------------------------


@router.get("/login")
async def login_page(request: Request) -> Response:
    auth = _auth(request)
    if await asyncio.to_thread(auth.users.count_users) == 0:
        return RedirectResponse("/welcome", status_code=303)
    back = request.query_params.get("next", "")
    context = {"email": "", "error": None, "next": back if local_path(back) else ""}
    return _public_page(request, "login.html", context)


@router.post("/login")
async def login(request: Request, form: PublicForm) -> Response:
    """Sign in with the API's service (``AuthService.authenticate_password``) and its limits."""
    auth = _auth(request)
    email = form.get("email", "").strip()
    password = form.get("password", "")
    back = form.get("next", "")
    back = back if local_path(back) else ""
    try:
        user = await asyncio.to_thread(
            auth.authenticate_password, email, password, _client_address(request)
        )
    except LoginThrottled as exc:
        context = {"email": email, "error": str(exc), "next": back}
        page = _public_page(request, "login.html", context, 429)
        page.headers["Retry-After"] = str(exc.retry_after)
        return page
    except (NotFound, ConfigError):
        error = "Wrong e-mail address or password."
        context = {"email": email, "error": error, "next": back}
        return _public_page(request, "login.html", context, 401)
    value = await asyncio.to_thread(auth.start_session, user)
    response = RedirectResponse(back or "/", status_code=303)
    _start_session(request, response, auth, value)
    return response


@router.post("/logout")
async def logout(request: Request, _form: SignedForm) -> Response:
    auth = _auth(request)
    await asyncio.to_thread(auth.end_session, request.cookies.get(SESSION_COOKIE, ""))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")
    return response


def _no_users_yet(auth: AuthService) -> None:
    if auth.users.count_users() > 0:
        raise HTTPException(404, "Not Found")


@router.get("/welcome")
async def first_run_page(request: Request) -> Response:
    """The first run: create the first admin. Gone (404) once any user exists."""
    await asyncio.to_thread(_no_users_yet, _auth(request))
    return _public_page(request, "welcome.html", {"email": "", "name": "", "error": None})


@router.post("/welcome")
async def first_run(request: Request, form: PublicForm) -> Response:
    auth = _auth(request)
    email = form.get("email", "").strip()
    name = form.get("name", "").strip()
    password = form.get("password", "")

    def create() -> User:
        # One at a time in this process, and checked again inside: only the first wins.
        with _first_run_lock:
            _no_users_yet(auth)
            if password != form.get("confirm", ""):
                raise ConfigError("The two passwords differ.")
            user, _taken = auth.create_user(email, password, admin=True, display_name=name)
            return user

    try:
        user = await asyncio.to_thread(create)
    except ConfigError as exc:
        context = {"email": email, "name": name, "error": str(exc)}
        return _public_page(request, "welcome.html", context, 422)
    value = await asyncio.to_thread(auth.start_session, user)
    response = RedirectResponse("/", status_code=303)
    _start_session(request, response, auth, value)
    return response


# --- inboxes ----------------------------------------------------------------------------------

Cursor = Annotated[str | None, Query(max_length=200)]
PathId = Annotated[int, Path(ge=1, le=MAX_ID)]


# The inboxes (``/``, ``/team/{team_id}``) with their filters and search box are
# :mod:`correspond.web.inbox_pages`' routes of this router.


# --- a thread ---------------------------------------------------------------------------------

ThreadAction = Literal["read", "unread", "star", "unstar", "archive", "delete"]
_ACTIONS: tuple[ThreadAction, ...] = ("read", "unread", "star", "unstar", "archive", "delete")


@router.get("/conversation/{thread_id}")
@needs("full")
def thread_page(
    request: Request,
    user: PageUser,
    thread_id: PathId,
    images: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    done: Annotated[str | None, Query(max_length=20)] = None,
    sent: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> HTMLResponse:
    """The thread's messages in the caller's order (``thread_order``), each HTML body in a
    sandboxed frame (remote images for message ``images`` only); ``sent``: the composer's
    confirmation of that send, with Undo during its grace (:mod:`correspond.web.composer`)."""
    from correspond.web.composer import sent_notice  # that module imports this one

    reader: MailboxReader = request.app.state.reader
    thread = reader.get_thread(thread_id, newest_first=user.thread_order == "newest_first")
    messages = []
    for message in thread.messages:
        blocked = 0
        if message.html is not None:
            rendered = reader.render_html(message, remote_images=False)
            blocked = rendered.remote_images_blocked if rendered else 0
        messages.append({"view": message, "blocked": blocked, "show_images": images == message.id})
    context = {
        "thread": thread,
        "messages": messages,
        "unread": any("\\Seen" not in m.flags for m in thread.messages),
        "starred": any("\\Flagged" in m.flags for m in thread.messages),
        "order": user.thread_order,
        "done": done if done in (*_ACTIONS, "linked", "unlinked", "moved") else None,
        "sent": sent_notice(request, user, sent) if sent else None,
    }
    from correspond.web.crm_pages import thread_deals_context  # it imports this module

    context.update(thread_deals_context(request, thread_id))
    from correspond.web.inbox_pages import thread_move_context  # it imports this module

    context.update(thread_move_context(request, thread.account_id))
    return _render(request, "thread.html", context, user=user)


@router.post("/conversation/{thread_id}/action")
@needs("full")
def thread_action(
    request: Request, user: PageUser, thread_id: PathId, form: SignedForm
) -> RedirectResponse:
    """One action on every message of the thread, through the outbox (as ``POST
    /messages/bulk``): the CRM copy changes at once, the mailbox by the account's syncer."""
    action = form.get("action", "")
    if action not in _ACTIONS:
        raise HTTPException(422, "unknown action")
    reader: MailboxReader = request.app.state.reader
    outbox: OutboxStore = request.app.state.outbox
    ids = [m.id for m in reader.get_thread(thread_id).messages]
    if ids:
        outbox.record_many(ids, action, user_id=user.id)  # type: ignore[arg-type]
    if action in ("archive", "delete"):
        return RedirectResponse("/", status_code=303)
    return RedirectResponse(f"/conversation/{thread_id}?done={action}", status_code=303)


@router.get("/message/{message_id}/frame")
@needs("full")
def message_frame(
    request: Request,
    _user: PageUser,
    message_id: PathId,
    images: Annotated[bool, Query()] = False,
) -> HTMLResponse:
    """A message's sanitised HTML (``mail.sanitize`` through ``MailboxReader.render_html``),
    for a sandboxed iframe of the thread page, under :data:`FRAME_CSP`."""
    reader: MailboxReader = request.app.state.reader
    message = reader.get_message(message_id)
    root = request.scope.get("root_path", "").rstrip("/")
    budget = [FRAME_INLINE_BYTES]

    def url(mid: int, aid: int) -> str:
        # The frame is sandboxed (an opaque origin): its image requests carry no session
        # cookie, so a cid: part is written into the page as a data: URL (raster images
        # only, within a budget per frame); anything else stays a link that will not load.
        link = f"{root}/messages/{mid}/attachments/{aid}"
        try:
            part, data = reader.attachment(mid, aid)
        except NotFound:
            return link
        kind = part.content_type.split(";", 1)[0].strip().lower()
        if kind not in INLINE_IMAGE_TYPES or len(data) > budget[0]:
            return link
        budget[0] -= len(data)
        return f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}"

    rendered = reader.render_html(message, remote_images=images, attachment_url=url)
    body = rendered.html if rendered is not None else ""
    html = _templates.get_template("frame.html").render(body=body)
    response = HTMLResponse(html)
    response.headers["Content-Security-Policy"] = FRAME_CSP.format(
        remote=" https: http:" if images else ""
    )
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


# --- Email Preferences ------------------------------------------------------------------------


@router.get("/preferences")
def preferences_page(request: Request, user: PageUser) -> HTMLResponse:
    return _render(request, "preferences.html", {"order": user.thread_order}, user=user)


@router.post("/preferences")
@needs("metadata")
def save_preferences(request: Request, user: PageUser, form: SignedForm) -> Response:
    """Save the thread order (``PUT /me/preferences``' service). The page's script sends it
    the moment it is chosen and shows the answer; without script, a plain form post."""
    order = form.get("thread_order", "")
    if order not in ("oldest_first", "newest_first"):
        raise HTTPException(422, "thread_order must be oldest_first or newest_first")
    saved = _auth(request).users.set_thread_order(user.id, order)
    if request.headers.get("accept", "").startswith("application/json"):
        return JSONResponse({"thread_order": saved.thread_order})
    return RedirectResponse("/preferences?saved=1", status_code=303)


# --- Email Settings: Full Email Sync, SMTP & BCC --------------------------------------------


def _composer(request: Request) -> ComposeService:
    service: ComposeService = request.app.state.composer
    return service


def _identities_page(
    request: Request,
    user: User,
    *,
    form: dict[str, str] | None = None,
    error: str | None = None,
    done: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    identities = _composer(request).identities.list(user)
    context = {
        "tab": "smtp",
        "identities": identities,
        "form": form or {"security": "starttls", "port": "587"},
        "error": error,
        "done": done,
    }
    return _render(request, "settings_smtp.html", context, status=status, user=user)


@router.get("/settings")
def settings_page(_user: PageUser) -> RedirectResponse:
    return RedirectResponse("/settings/smtp", status_code=303)


@router.get("/settings/smtp")
def settings_smtp_page(
    request: Request,
    user: PageUser,
    done: Annotated[str | None, Query(max_length=20)] = None,
) -> HTMLResponse:
    """The addresses the caller sends as (``GET /identities``), the default marked."""
    shown = done if done in ("default", "added", "deleted") else None
    return _identities_page(request, user, done=shown)


@router.post("/settings/smtp/{identity_id}/default")
def mark_default_identity(
    request: Request, user: PageUser, identity_id: PathId, _form: SignedForm
) -> RedirectResponse:
    """ "Mark Default" (``POST /identities/{id}/default``'s call)."""
    _composer(request).identities.set_default(user, identity_id)
    return RedirectResponse("/settings/smtp?done=default", status_code=303)


@router.post("/settings/smtp")
async def add_smtp_identity(request: Request, user: PageUser, form: SignedForm) -> Response:
    """Add an outbound-only SMTP identity: tested first (``sync.smtp_check`` through
    ``ComposeService.create_smtp_identity``, as ``POST /identities``); a failed test saves
    nothing and the page shows its sentence beside the form."""
    kept = {k: form.get(k, "").strip() for k in ("address", "name", "host", "port", "username")}
    kept["security"] = form.get("security", "starttls")
    error: str | None = None
    port: int | None = None
    if kept["port"]:
        if not kept["port"].isdigit() or not 1 <= int(kept["port"]) <= 65535:
            error = "The port is a number from 1 to 65535."
        else:
            port = int(kept["port"])
    if error is None and kept["security"] not in ("starttls", "tls"):
        error = "Security is STARTTLS or TLS."
    if error is None and not (kept["address"] and kept["host"] and form.get("password")):
        error = "An SMTP identity needs an address, a server and a password."
    if error is None:
        try:
            await _composer(request).create_smtp_identity(
                user,
                address=kept["address"],
                display_name=kept["name"],
                host=kept["host"],
                port=port,
                security=kept["security"],
                username=kept["username"] or None,
                password=form.get("password", ""),
            )
        except ConfigError as exc:  # the test's sentence (IdentityRefused), a bad address
            error = str(exc)
    if error is not None:
        return _identities_page(request, user, form=kept, error=error, status=422)
    return RedirectResponse("/settings/smtp?done=added", status_code=303)


# --- Templates --------------------------------------------------------------------------------
# Under /email-templates: /templates is the JSON API's.

_TEMPLATE_FIELDS = ("name", "subject", "text", "html", "team_id")


def _template_page(
    request: Request,
    user: User,
    *,
    template: Template | None,
    form: dict[str, str],
    error: str | None = None,
    preview: RenderedTemplate | None = None,
    preview_error: str | None = None,
    chosen: dict[str, int] | None = None,
    saved: bool = False,
    status: int = 200,
) -> HTMLResponse:
    auth = _auth(request)
    teams = auth.teams.list(member_id=None if user.is_admin else user.id)
    service = _composer(request)
    crm = service.crm
    chosen = chosen or {}
    context = {
        "template": template,
        "form": form,
        "error": error,
        "share_teams": teams,
        # The preview's choices (the first 200 of each kind) and the ones chosen; the HTML
        # body is shown in a sandboxed frame (web.settings_edit.template_preview_frame).
        "contacts": crm.list_contacts(limit=200).items,
        "companies": crm.list_companies(limit=200).items,
        "deals": crm.list_deals(limit=200).items,
        "identities": service.identities.list(user),
        "chosen": chosen,
        "preview_query": urlencode(chosen),
        "preview": preview,
        "preview_error": preview_error,
        "fields": FIELDS,
        "saved": saved,
    }
    return _render(request, "template_edit.html", context, status=status, user=user)


def _template_form(template: Template) -> dict[str, str]:
    return {
        "name": template.name,
        "subject": template.subject,
        "text": template.text or "",
        "html": template.html or "",
        "team_id": str(template.team_id or ""),
    }


def _template_fields(form: dict[str, str], *, update: bool) -> TemplateFields:
    team = form.get("team_id", "")
    if team and not team.isdigit():
        raise ConfigError("Share with a team from the list, or nobody.")
    team_id = int(team) if team else (0 if update else None)
    return TemplateFields(
        name=form.get("name", ""),
        subject=form.get("subject", ""),
        text=form.get("text", ""),
        html=form.get("html", ""),
        team_id=team_id,
    )


@router.get("/email-templates")
def templates_page(request: Request, user: PageUser) -> HTMLResponse:
    """The caller's templates and those shared with their teams (``GET /templates``)."""
    templates = _composer(request).templates.list(user)
    auth = _auth(request)
    teams = {t.id: t.name for t in auth.teams.list(member_id=None if user.is_admin else user.id)}
    deleted = request.query_params.get("done") == "deleted"
    context = {"templates": templates, "team_names": teams, "deleted": deleted}
    return _render(request, "templates.html", context, user=user)


@router.get("/email-templates/new")
def new_template_page(request: Request, user: PageUser) -> HTMLResponse:
    return _template_page(request, user, template=None, form={})


@router.post("/email-templates")
def create_template_page(request: Request, user: PageUser, form: SignedForm) -> Response:
    """Create (``POST /templates``' store call); an unknown merge field is shown, not saved."""
    kept = {k: form.get(k, "") for k in _TEMPLATE_FIELDS}
    try:
        made = _composer(request).templates.create(user, _template_fields(form, update=False))
    except ConfigError as exc:
        return _template_page(request, user, template=None, form=kept, error=str(exc), status=422)
    return RedirectResponse(f"/email-templates/{made.id}?saved=1", status_code=303)


@router.get("/email-templates/{template_id}")
def template_page(
    request: Request,
    user: PageUser,
    template_id: PathId,
    saved: Annotated[int | None, Query(ge=1, le=1)] = None,
) -> HTMLResponse:
    template = _composer(request).templates.get(user, template_id)
    return _template_page(
        request, user, template=template, form=_template_form(template), saved=bool(saved)
    )


@router.post("/email-templates/{template_id}")
def save_template_page(
    request: Request, user: PageUser, template_id: PathId, form: SignedForm
) -> Response:
    """Save (``PATCH /templates/{id}``' store call: its owner or an admin)."""
    service = _composer(request)
    kept = {k: form.get(k, "") for k in _TEMPLATE_FIELDS}
    try:
        service.templates.update(user, template_id, _template_fields(form, update=True))
    except ConfigError as exc:
        template = service.templates.get(user, template_id)
        return _template_page(
            request, user, template=template, form=kept, error=str(exc), status=422
        )
    return RedirectResponse(f"/email-templates/{template_id}?saved=1", status_code=303)


@router.post("/email-templates/{template_id}/preview")
@needs("full")
def preview_template_page(
    request: Request, user: PageUser, template_id: PathId, form: SignedForm
) -> HTMLResponse:
    """The saved template filled for the chosen contact, company, deal and identity (``POST
    /templates/{id}/render``'s service): a merge field without a value is its sentence, never
    a blank."""
    service = _composer(request)
    template = service.templates.get(user, template_id)
    chosen: dict[str, int] = {}
    for key in ("contact_id", "company_id", "deal_id", "identity_id"):
        value = form.get(key, "")
        if value.isdigit() and 0 < int(value) <= MAX_ID:
            chosen[key] = int(value)
    preview: RenderedTemplate | None = None
    problem: str | None = None
    try:
        preview = service.render(
            user,
            template_id,
            **chosen,
            user_name=user.display_name,
            user_email=user.email,
        )
    except ConfigError as exc:  # MissingMergeFields, RecordMissing, TemplateError
        problem = str(exc)
    return _template_page(
        request,
        user,
        template=template,
        form=_template_form(template),
        preview=preview,
        preview_error=problem,
        chosen=chosen,
        status=200 if problem is None else 422,
    )


def mount_web(app: FastAPI) -> None:
    """Add the pages and their static files to ``app`` (after the API's routes)."""
    from correspond.web.compose_drafts import router as drafts_router
    from correspond.web.composer import router as composer_router

    app.include_router(router)
    app.include_router(composer_router)
    app.include_router(drafts_router)
    app.mount(STATIC_URL, StaticFiles(directory=_HERE / "static"), name="web-static")
