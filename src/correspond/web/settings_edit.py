"""Editing and deleting a sending identity (Email Settings, SMTP & BCC), deleting a template,
and the sandboxed frame of a template preview's HTML.

Routes of the pages' router (``correspond.web`` imports this module), on the services of the
JSON API: ``ComposeService.update_identity`` (``PATCH /identities/{id}``: new SMTP settings
without a password drop the stored one, a new password is tested on the server before it is
saved), ``identities.delete`` (``DELETE /identities/{id}``), ``templates.delete`` (``DELETE
/templates/{id}``) and ``ComposeService.render`` (``POST /templates/{id}/render``). An
identity is its owner's alone (another user's is a 404 page, through ``authorize``); a
template shared with the caller's team may be read but is changed and deleted only by its
owner or an admin (403).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from correspond.api.security import MAX_ID, needs
from correspond.composer import IdentityRefused
from correspond.errors import ConfigError
from correspond.mail.sanitize import sanitize_html
from correspond.store.compose import Identity
from correspond.store.users import User
from correspond.web.pages import (
    FRAME_CSP,
    PageUser,
    PathId,
    SignedForm,
    _composer,
    _render,
    _templates,
    router,
)

__all__ = ["identity_changes"]

_SMTP_FIELDS = ("host", "port", "security", "username")


# --- an identity ------------------------------------------------------------------------------


def _identity_form(identity: Identity) -> dict[str, str]:
    return {
        "name": identity.display_name,
        "signature": identity.signature,
        "host": identity.smtp_host or "",
        "port": str(identity.smtp_port or ""),
        "security": identity.smtp_security or "starttls",
        "username": identity.smtp_username or "",
    }


def _identity_page(
    request: Request,
    user: User,
    identity: Identity,
    *,
    form: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    done: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    context = {
        "tab": "smtp",
        "identity": identity,
        "form": form or _identity_form(identity),
        "errors": errors or {},
        "done": done,
    }
    return _render(request, "settings_identity.html", context, status=status, user=user)


def identity_changes(
    identity: Identity, form: dict[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The keyword arguments of ``ComposeService.update_identity`` for what the form changed,
    and the errors found first (by field). When any SMTP setting differs from the stored one
    all four are given (so a kept port is not replaced by the security's default); none when
    none changed, so the stored password stays. A blank username is the address."""
    errors: dict[str, str] = {}
    changes: dict[str, Any] = {
        "display_name": form.get("name", "").strip(),
        "signature": form.get("signature", ""),
    }
    password = form.get("password", "")
    if identity.kind != "smtp":
        if password:
            errors["password"] = "A mailbox's address sends with its account's password."
        return changes, errors
    host = form.get("host", "").strip()
    port_text = form.get("port", "").strip()
    security = form.get("security", "starttls")
    username = form.get("username", "").strip() or identity.address
    port: int | None = None
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            errors["port"] = "The port is a number from 1 to 65535."
        else:
            port = int(port_text)
    if security not in ("starttls", "tls"):
        errors["security"] = "Security is STARTTLS or TLS."
    if not host:
        errors["host"] = "An SMTP identity needs a server."
    stored = (
        identity.smtp_host,
        identity.smtp_port,
        identity.smtp_security,
        identity.smtp_username,
    )
    if (host, port, security, username) != stored:
        changes.update(host=host, port=port, security=security, username=username)
    if password:
        changes["password"] = password
    return changes, errors


def _field_of(exc: ConfigError) -> str:
    text = str(exc)
    if isinstance(exc, IdentityRefused):
        return "smtp"
    for start, field in (
        ("smtp_host", "host"),
        ("smtp_port", "port"),
        ("smtp_security", "security"),
        ("username", "username"),
        ("the signature", "signature"),
    ):
        if text.startswith(start):
            return field
    return "name" if "display name" in text else "smtp"


@router.get("/settings/smtp/{identity_id}")
def identity_page(
    request: Request,
    user: PageUser,
    identity_id: PathId,
    done: Annotated[str | None, Query(max_length=20)] = None,
) -> HTMLResponse:
    """An identity's settings: display name and signature; an SMTP identity's server too."""
    identity = _composer(request).identities.get(user, identity_id)
    shown = done if done in ("saved", "dropped", "tested") else None
    return _identity_page(request, user, identity, done=shown)


@router.post("/settings/smtp/{identity_id}")
async def save_identity(
    request: Request, user: PageUser, identity_id: PathId, form: SignedForm
) -> Response:
    """Save (``PATCH /identities/{id}``' call): new SMTP settings without a password drop the
    stored one; with one they are tested first, like adding an identity (a failed test saves
    nothing and its sentence is shown)."""
    service = _composer(request)
    identity = service.identities.get(user, identity_id)
    kept = {k: form.get(k, "").strip() for k in ("name", *_SMTP_FIELDS)}
    kept["signature"] = form.get("signature", "")
    kept["security"] = form.get("security", "starttls")
    changes, errors = identity_changes(identity, form)
    if not errors:
        try:
            saved = await service.update_identity(user, identity_id, **changes)
        except ConfigError as exc:
            errors = {_field_of(exc): str(exc)}
    if errors:
        return _identity_page(request, user, identity, form=kept, errors=errors, status=422)
    done = "saved"
    if "password" in changes:
        done = "tested"
    elif identity.has_secret and not saved.has_secret:
        done = "dropped"
    return RedirectResponse(f"/settings/smtp/{identity_id}?done={done}", status_code=303)


@router.get("/settings/smtp/{identity_id}/delete")
def confirm_delete_identity(request: Request, user: PageUser, identity_id: PathId) -> HTMLResponse:
    """What removing this identity does, and the form that does it."""
    identity = _composer(request).identities.get(user, identity_id)
    context = {"tab": "smtp", "identity": identity, "error": None}
    return _render(request, "settings_identity_delete.html", context, user=user)


@router.post("/settings/smtp/{identity_id}/delete")
def delete_identity(
    request: Request, user: PageUser, identity_id: PathId, _form: SignedForm
) -> Response:
    """Remove an SMTP identity or an alias (``DELETE /identities/{id}``' call); a mailbox's
    own address is refused with the store's sentence."""
    identities = _composer(request).identities
    identity = identities.get(user, identity_id)
    try:
        identities.delete(user, identity_id)
    except ConfigError as exc:
        context = {"tab": "smtp", "identity": identity, "error": str(exc)}
        return _render(request, "settings_identity_delete.html", context, user=user, status=422)
    return RedirectResponse("/settings/smtp?done=deleted", status_code=303)


# --- templates ----------------------------------------------------------------------------------


@router.get("/email-templates/{template_id}/delete")
@needs("manage")
def confirm_delete_template(request: Request, user: PageUser, template_id: PathId) -> HTMLResponse:
    """The confirmation (its owner or an admin: 403 for a teammate it is shared with)."""
    template = _composer(request).templates.get(user, template_id)
    return _render(request, "template_delete.html", {"template": template}, user=user)


@router.post("/email-templates/{template_id}/delete")
def delete_template(
    request: Request, user: PageUser, template_id: PathId, _form: SignedForm
) -> Response:
    """Delete (``DELETE /templates/{id}``' store call: its owner or an admin)."""
    _composer(request).templates.delete(user, template_id)
    return RedirectResponse("/email-templates?done=deleted", status_code=303)


Choice = Annotated[int | None, Query(ge=1, le=MAX_ID)]
#: A preview frame's HTML: the message frame's policy, never remote images.
PREVIEW_CSP = FRAME_CSP.format(remote="")


@router.get("/email-templates/{template_id}/preview/frame")
@needs("full")
def template_preview_frame(
    request: Request,
    user: PageUser,
    template_id: PathId,
    contact_id: Choice = None,
    company_id: Choice = None,
    deal_id: Choice = None,
    identity_id: Choice = None,
) -> HTMLResponse:
    """The preview's HTML body, filled as the preview page fills it (``ComposeService.render``)
    and sanitised (``mail.sanitize``, remote images held back) for a sandboxed iframe, under
    the message frame's CSP: shown as a recipient would see it, never able to run script."""
    service = _composer(request)
    body = ""
    status = 200
    try:
        rendered = service.render(
            user,
            template_id,
            contact_id=contact_id,
            company_id=company_id,
            deal_id=deal_id,
            identity_id=identity_id,
            user_name=user.display_name,
            user_email=user.email,
        )
        if rendered.html is not None:
            body = sanitize_html(rendered.html).html
    except ConfigError as exc:  # MissingMergeFields, RecordMissing: the page says why
        body = f"<p>{_escape(str(exc))}</p>"
        status = 422
    html = _templates.get_template("frame.html").render(body=body)
    response = HTMLResponse(html, status_code=status)
    response.headers["Content-Security-Policy"] = PREVIEW_CSP
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
