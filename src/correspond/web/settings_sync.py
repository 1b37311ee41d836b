"""Email Settings → Full Email Sync: the accounts the caller may manage, and connecting one.

Each account shows its state in words (the API's ``state_message``, with the reason of an
``auth_failed`` or ``error``), its backfill progress per folder and overall, its last sync, the
four Delete & Archive toggles, sharing, Disable/Enable (pause/resume) and Disconnect behind a
confirmation page showing the dry-run plan. "Connect a mailbox" fills the server settings from
a provider preset, runs the connection test before anything is stored (a failed test shows its
sentence and creates nothing), then creates the account paused, lists its folders with their
roles and lets the user choose all folders or some (checked as the product selects them by
default); the choice resumes it, and a sync worker (``serve``'s own) picks it up at once. An
account's page shows its backfill progress folder by folder, refreshed in place by app.js from
``GET /accounts/{name}/progress``, and takes a new password (tested first) for a refused
sign-in: the page the account-trouble banner of every page links to.

Every action calls the services the JSON API's routes call (``AccountService``,
``AccountLeases``, ``ProgressReader``, ``AuthService.teams``; no SQL here) with the same
visibility checks: the ``name`` in a path is checked by
:func:`correspond.api.security.authorize` (404 hidden, 403 without ``manage``). Every form
carries the session's CSRF token.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from correspond.accounts import AccountService, lifecycle_plan
from correspond.api.progress_schemas import progress_public
from correspond.api.schemas import AccountPublic, account_public
from correspond.api.security import needs
from correspond.auth import AuthService
from correspond.errors import ConfigError, Conflict, CorrespondError, NotFound
from correspond.rules.presets import (
    PRESETS,
    AccountChanges,
    check_account_name,
    draft_from_preset,
)
from correspond.rules.two_way import TOGGLE_HELP
from correspond.store.leases import AccountLeases
from correspond.store.progress import ProgressReader
from correspond.store.records import TOGGLES
from correspond.store.users import User
from correspond.web.pages import PageUser, SignedForm, _render, router, signed_multi_form

__all__: list[str] = []

# Routes of the pages' router (``web.pages.router``, imported by ``correspond.web``): one
# mount, and the route walk in tests/test_auth_api.py sees them.

SHARING_CHOICES = {
    "private": "Private: only you (and admins)",
    "team": "Team: your teams see the mail",
    "metadata": "Metadata: your teams see who wrote to whom and when, not the bodies",
}
# Pages where a preset needs a sign-in this app does not offer yet.
OAUTH_NOTE = {
    "google": "Google sign-in (OAuth2) is not available yet: use an app password "
    "(Google Account → Security → App passwords).",
    "office365": "Microsoft sign-in (OAuth2) is not available yet: this works only where "
    "the tenant still allows IMAP sign-in with a password (or an app password).",
    "exchange-online": "Microsoft sign-in (OAuth2) is not available yet: this works only "
    "where the tenant still allows IMAP sign-in with a password (or an app password).",
}
_DONE = {
    "saved": "Toggles saved.",
    "sharing": "Sharing saved.",
    "paused": "Sync disabled: nothing is read from or written to this mailbox until enabled.",
    "resumed": "Sync enabled: a sync process connects it now.",
    "disconnected": "Disconnected: the messages stay as history.",
    "started": "Folders chosen: the sync starts now; the progress shows below.",
    "folders": "Folder choice saved.",
    "password": "Password saved: the connection test passed and the sync connects again.",
}
#: The state detail of an account connected from this page until its folders are chosen.
AWAITING_FOLDERS = "Waiting for the folder choice: choose the folders to sync and it starts."
_LOG = logging.getLogger(__name__)
_CONNECT_FIELDS = (
    "preset",
    "name",
    "email",
    "username",
    "imap_host",
    "imap_port",
    "imap_security",
    "smtp_host",
    "smtp_port",
    "smtp_security",
    "trusted_cert_pem",
)


def _service(request: Request) -> AccountService:
    service: AccountService = request.app.state.accounts
    return service


def _progress(request: Request) -> ProgressReader:
    progress: ProgressReader = request.app.state.progress
    return progress


def _leases(request: Request) -> AccountLeases:
    leases: AccountLeases = request.app.state.leases
    return leases


def _auth(request: Request) -> AuthService:
    auth: AuthService = request.app.state.auth
    return auth


def _managed(request: Request, user: User) -> list[AccountPublic]:
    """The caller's manageable accounts as ``GET /accounts`` shows them (state, progress)."""
    summaries = _service(request).list_accounts(viewer=user)
    by_name = {p.name: progress_public(p) for p in _progress(request).all()}
    return [
        account_public(s, progress=by_name.get(s.account.name))
        for s in summaries
        if s.access is None or s.access.manage
    ]


@router.get("/settings/sync")
def settings_sync_page(
    request: Request,
    user: PageUser,
    done: Annotated[str | None, Query(max_length=20)] = None,
) -> HTMLResponse:
    """Every account the caller may manage, with its state, progress and controls."""
    context: dict[str, Any] = {
        "tab": "sync",
        "accounts": _managed(request, user),
        "toggles": [(name, TOGGLE_HELP[name]) for name in TOGGLES],
        "sharing_choices": SHARING_CHOICES,
        "done": _DONE.get(done or ""),
        "awaiting_folders": AWAITING_FOLDERS,
    }
    return _render(request, "settings_sync.html", context, user=user)


@router.post("/settings/sync/{name}/toggles")
def save_toggles(request: Request, user: PageUser, name: str, form: SignedForm) -> Response:
    """The four toggles, each on when its checkbox is sent (``PATCH /accounts/{name}`` with
    ``toggles``: the same update)."""
    toggles = {t: form.get(t) == "on" for t in TOGGLES}
    _service(request).update_account(name, AccountChanges(toggles=toggles))
    return RedirectResponse("/settings/sync?done=saved", status_code=303)


@router.post("/settings/sync/{name}/sharing")
def save_sharing(request: Request, user: PageUser, name: str, form: SignedForm) -> Response:
    """Who sees the account (``PATCH /accounts/{name}`` with ``sharing``)."""
    # An unknown choice is the store's ConfigError: an error page, nothing changed.
    _auth(request).teams.set_account_sharing(name, sharing=form.get("sharing", ""))
    return RedirectResponse("/settings/sync?done=sharing", status_code=303)


@router.post("/settings/sync/{name}/pause")
async def pause(request: Request, user: PageUser, name: str, _form: SignedForm) -> Response:
    """Disable: ``POST /accounts/{name}/pause``'s call."""
    await asyncio.to_thread(_leases(request).pause, name)
    return RedirectResponse("/settings/sync?done=paused", status_code=303)


@router.post("/settings/sync/{name}/resume")
async def resume(request: Request, user: PageUser, name: str, _form: SignedForm) -> Response:
    """Enable: ``POST /accounts/{name}/resume``'s call."""
    await asyncio.to_thread(_leases(request).resume, name)
    return RedirectResponse("/settings/sync?done=resumed", status_code=303)


@router.get("/settings/sync/{name}/disconnect")
@needs("manage")
def disconnect_page(request: Request, user: PageUser, name: str) -> HTMLResponse:
    """What a disconnect removes and keeps (``POST /accounts/{name}/disconnect?dry_run=true``);
    nothing changes until the form on this page is sent."""
    service = _service(request)
    if service.get_account(name).account.disconnected_at is not None:
        raise Conflict(f"account {name!r} is already disconnected")
    plan = lifecycle_plan("disconnect", service.footprint(name), dry_run=True)
    context = {"tab": "sync", "name": name, "plan": plan}
    return _render(request, "settings_sync_disconnect.html", context, user=user)


@router.post("/settings/sync/{name}/disconnect")
def disconnect(request: Request, user: PageUser, name: str, _form: SignedForm) -> Response:
    """Disconnect (``POST /accounts/{name}/disconnect``): sync stops, the history stays."""
    _service(request).disconnect_account(name)
    return RedirectResponse("/settings/sync?done=disconnected", status_code=303)


# --- Connect a mailbox ------------------------------------------------------------------------


def _preset_form(preset: str) -> dict[str, str]:
    p = PRESETS[preset]
    return {
        "preset": preset,
        "imap_host": p.imap_host or "",
        "imap_port": str(p.imap_port),
        "imap_security": p.imap_security,
        "smtp_host": p.smtp_host or "",
        "smtp_port": str(p.smtp_port),
        "smtp_security": p.smtp_security,
    }


def _connect_page(
    request: Request,
    user: User,
    form: dict[str, str],
    *,
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    preset = form["preset"]
    context = {
        "tab": "sync",
        "presets": PRESETS,
        "form": form,
        "preset_note": PRESETS[preset].note,
        "oauth_note": OAUTH_NOTE.get(preset),
        "error": error,
    }
    return _render(request, "settings_sync_new.html", context, status=status, user=user)


@router.get("/settings/sync/new")
def connect_page(
    request: Request,
    user: PageUser,
    preset: Annotated[str | None, Query(max_length=30)] = None,
) -> HTMLResponse:
    """Choose a provider; its server settings are filled in, and can be changed."""
    return _connect_page(request, user, _preset_form(preset if preset in PRESETS else "other"))


def _port(value: str, field: str) -> int | None:
    if not value:
        return None
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise ConfigError(f"The {field} is a number from 1 to 65535.")
    return int(value)


@router.post("/settings/sync/new")
async def connect(request: Request, user: PageUser, form: SignedForm) -> Response:
    """Test the settings with the password first (the connection test of
    ``POST /accounts/{name}/test``); only a passing test creates the account
    (``POST /accounts``'s call), owned by the caller, paused until its folders are chosen on
    the page this leads to, after listing them."""
    kept = {k: form.get(k, "").strip() for k in _CONNECT_FIELDS}
    if kept["preset"] not in PRESETS:
        kept["preset"] = "other"
    password = form.get("password", "")
    service = _service(request)
    try:
        if not password:
            raise ConfigError("Enter the mailbox's password.")
        name = kept["name"] or kept["email"]
        draft = draft_from_preset(
            kept["preset"],
            name=check_account_name(name),
            email=kept["email"] or None,
            username=kept["username"] or None,
            imap_host=kept["imap_host"] or None,
            imap_port=_port(kept["imap_port"], "IMAP port"),
            imap_security=kept["imap_security"] or None,
            smtp_host=kept["smtp_host"] or None,
            smtp_port=_port(kept["smtp_port"], "SMTP port"),
            smtp_security=kept["smtp_security"] or None,
            trusted_cert_pem=kept["trusted_cert_pem"] or None,
        )
        if await asyncio.to_thread(service.account_exists, draft.name):
            raise ConfigError(f"An account named {draft.name!r} exists already: pick a name.")
        report = await service.test_draft(draft, password)
        if not report.ok:
            raise ConfigError(report.message)
        # Paused until the folders are chosen: no worker syncs anything before the choice.
        await asyncio.to_thread(
            service.add_account, draft, password, owner_id=user.id, paused=AWAITING_FOLDERS
        )
    except ConfigError as exc:
        return _connect_page(request, user, kept, error=str(exc), status=422)
    # The folder listing starts now (``POST /accounts/{name}/folders/refresh``'s call); a
    # failure is said on the folders page, which offers to list them again.
    listed = await _list_folders(service, draft.name)
    where = f"/settings/sync/{quote(draft.name, safe='')}/folders?new=1"
    return RedirectResponse(where + ("" if listed is None else "&listing=failed"), 303)


# --- Folders: the listing after a connect, and the choice -------------------------------------


async def _list_folders(service: AccountService, name: str) -> str | None:
    """LIST the account's folders now and record them with their roles (``POST
    /accounts/{name}/folders/refresh``'s call): None when done, else what went wrong."""
    try:
        await service.refresh_folders(name)
    except (CorrespondError, OSError) as exc:
        _LOG.warning("listing the folders of %s failed: %s", name, exc)
        return str(exc) or type(exc).__name__
    return None


def _folders_page(
    request: Request,
    user: User,
    name: str,
    *,
    new: bool,
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    service = _service(request)
    account = service.get_account(name).account
    folders = service.list_folders(name)
    context = {
        "tab": "sync",
        "name": name,
        "account": account,
        "folders": folders,
        # Starting: the account waits for this choice (it was connected from this tab).
        "starting": account.state == "paused" and account.state_detail == AWAITING_FOLDERS,
        "new": new,
        "error": error,
    }
    return _render(request, "settings_sync_folders.html", context, status=status, user=user)


@router.get("/settings/sync/{name}/folders")
@needs("manage")
def folders_page(
    request: Request,
    user: PageUser,
    name: str,
    new: Annotated[int | None, Query(ge=1, le=1)] = None,
    listing: Annotated[str | None, Query(max_length=10)] = None,
) -> HTMLResponse:
    """The folders as last listed, with their roles, and the choice: all folders, or the
    ones checked (checked as the product selects them by default: Inbox, Sent, Archive and
    the user's own folders; not Junk, Trash or Drafts)."""
    error = (
        "Listing the folders failed: check the server, then list them again."
        if listing == "failed"
        else None
    )
    return _folders_page(request, user, name, new=bool(new), error=error)


async def _folder_form(request: Request) -> dict[str, list[str]]:
    """This page's form, every value of each field (one ``folder`` per checked box: more
    than the pages' usual 50 fields), refused (403) without the session's CSRF token."""
    return await signed_multi_form(request, max_fields=_MAX_FOLDER_FIELDS)


_MAX_FOLDER_FIELDS = 5000


@router.post("/settings/sync/{name}/folders")
async def choose_folders(request: Request, user: PageUser, name: str) -> Response:
    """``PUT /accounts/{name}/folders/selection``'s call: ``all`` folders (and new ones), or
    exactly the ones checked. An account waiting for this choice is resumed: its sync starts
    (``POST /accounts/{name}/resume``'s call; the workers hear of it at once)."""
    fields = await _folder_form(request)
    mode = (fields.get("mode") or ["selected"])[0]
    refs: list[str | int] = [int(v) for v in fields.get("folder", []) if v.isdigit()]
    new = (fields.get("new") or [""])[0] == "1"
    service = _service(request)
    account = (await asyncio.to_thread(service.get_account, name)).account
    try:
        if mode != "all" and not refs:
            raise ConfigError("Check at least one folder, or choose all folders.")
        await asyncio.to_thread(
            service.select_folders,
            name,
            all_folders=mode == "all",
            refs=[] if mode == "all" else refs,
        )
    except (ConfigError, NotFound) as exc:
        page = await asyncio.to_thread(
            _folders_page, request, user, name, new=new, error=str(exc), status=422
        )
        return page
    done = "folders"
    if account.state == "paused" and account.state_detail == AWAITING_FOLDERS:
        await asyncio.to_thread(
            _leases(request).resume, name, "Folders chosen; waiting for a sync worker."
        )
        done = "started"
    return RedirectResponse(f"/settings/sync/accounts/{quote(name, safe='')}?done={done}", 303)


@router.post("/settings/sync/{name}/folders/refresh")
async def refresh_folder_list(
    request: Request, user: PageUser, name: str, form: SignedForm
) -> Response:
    """List the folders again (``POST /accounts/{name}/folders/refresh``'s call)."""
    new = form.get("new") == "1"
    error = await _list_folders(_service(request), name)
    if error is not None:
        return await asyncio.to_thread(
            _folders_page, request, user, name, new=new, error=f"Listing failed: {error}"
        )
    suffix = "?new=1" if new else ""
    return RedirectResponse(f"/settings/sync/{quote(name, safe='')}/folders{suffix}", 303)


# --- One account: its state, live progress, and fixing its password ---------------------------


def _account_page(
    request: Request,
    user: User,
    name: str,
    *,
    done: str | None = None,
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    summary = _service(request).get_account(name)
    progress = progress_public(_progress(request).account(name))
    context = {
        "tab": "sync",
        "a": account_public(summary, progress=progress),
        "awaiting_folders": summary.account.state == "paused"
        and summary.account.state_detail == AWAITING_FOLDERS,
        "done": _DONE.get(done or ""),
        "error": error,
    }
    return _render(request, "settings_sync_account.html", context, status=status, user=user)


@router.get("/settings/sync/accounts/{name}")
@needs("manage")
def account_page(
    request: Request,
    user: PageUser,
    name: str,
    done: Annotated[str | None, Query(max_length=20)] = None,
) -> HTMLResponse:
    """One account: its state in words (with the reason of a failure), its backfill progress
    folder by folder (live, from ``GET /accounts/{name}/progress``), its folders, and a new
    password for a refused sign-in."""
    return _account_page(request, user, name, done=done)


@router.post("/settings/sync/accounts/{name}/password")
async def fix_password(request: Request, user: PageUser, name: str, form: SignedForm) -> Response:
    """A new password, tested first against the stored settings (the connection test); only
    a passing one is stored (``PATCH /accounts/{name}`` with ``password``), which moves a
    failed account back to ``connecting``."""
    service = _service(request)
    password = form.get("password", "")
    try:
        if not password:
            raise ConfigError("Enter the mailbox's password.")
        draft = await asyncio.to_thread(service.check_update, name, AccountChanges())
        report = await service.test_draft(draft, password)
        if not report.ok:
            raise ConfigError(report.message)
        await asyncio.to_thread(service.update_account, name, AccountChanges(), password)
    except ConfigError as exc:
        return await asyncio.to_thread(
            _account_page, request, user, name, error=str(exc), status=422
        )
    return RedirectResponse(f"/settings/sync/accounts/{quote(name, safe='')}?done=password", 303)
