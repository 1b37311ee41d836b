"""``/identities`` (the addresses the caller sends as; "Mark Default"), ``/templates``
(personal or shared with a team, merge fields rendered for a preview) and
``/compose/defaults`` (what the composer opens with).

Visibility is the rule of :mod:`correspond.store.visibility`, applied by
:func:`correspond.api.security.authorize` for ``identity_id`` and ``template_id`` and by the
stores for the lists: another user's identity is a 404 like one that does not exist; a
template shared with the caller's team is theirs to read and use, its owner's (or an admin's)
to change (403 otherwise).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response, status
from fastapi.exceptions import RequestValidationError

from correspond.api.compose_schemas import (
    ComposeDefaults,
    IdentityCreate,
    IdentityPublic,
    IdentityUpdate,
    RenderedPublic,
    TemplateCreate,
    TemplatePublic,
    TemplateRenderRequest,
    TemplateUpdate,
    identity_public,
    template_public,
)
from correspond.api.schemas import ErrorPublic
from correspond.api.security import MAX_ID, CurrentUser, needs
from correspond.composer import ComposeService, IdentityRefused, RecordMissing
from correspond.mail.compose import ComposeError
from correspond.mail.merge import FIELDS, MissingMergeFields, TemplateError
from correspond.store.compose import TemplateFields

__all__ = ["compose_router", "identities_router", "templates_router"]

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorPublic, "description": "No such identity of the caller's"}
}
identities_router = APIRouter(prefix="/identities", tags=["identities"], responses=_NOT_FOUND)
templates_router = APIRouter(
    prefix="/templates",
    tags=["templates"],
    responses={
        403: {"model": ErrorPublic, "description": "Only its owner or an admin may change it"},
        404: {"model": ErrorPublic, "description": "No such template the caller may see"},
    },
)
compose_router = APIRouter(prefix="/compose", tags=["compose"])

IdentityId = Annotated[int, Path(ge=1, le=MAX_ID)]
TemplateId = Annotated[int, Path(ge=1, le=MAX_ID)]


def _service(request: Request) -> ComposeService:
    service: ComposeService = request.app.state.composer
    return service


def _invalid(field: str, message: str, kind: str = "value_error") -> RequestValidationError:
    return RequestValidationError([{"type": kind, "loc": ("body", field), "msg": message}])


def _refused(exc: IdentityRefused) -> RequestValidationError:
    return _invalid("smtp_host", exc.report.message, f"smtp_{exc.report.problem}")


# -- identities ----------------------------------------------------------------------------


@identities_router.get("", response_model=list[IdentityPublic])
def list_identities(request: Request, user: CurrentUser) -> list[IdentityPublic]:
    """The caller's identities, the default first: one for every account they may send
    from (their own, their teams' inboxes) and their SMTP identities."""
    return [identity_public(i) for i in _service(request).identities.list(user)]


@identities_router.post("", response_model=IdentityPublic, status_code=status.HTTP_201_CREATED)
async def create_identity(
    body: IdentityCreate, request: Request, user: CurrentUser
) -> IdentityPublic:
    """Add an identity. An SMTP identity is tested first (TLS or STARTTLS, then AUTH):
    a 422 with the test's sentence saves nothing."""
    service = _service(request)
    try:
        if body.kind == "smtp":
            if not body.smtp_host or body.password is None or not body.address:
                raise _invalid(
                    "smtp_host", "an SMTP identity needs address, smtp_host and password"
                )
            identity = await service.create_smtp_identity(
                user,
                address=body.address,
                display_name=body.display_name,
                host=body.smtp_host,
                port=body.smtp_port,
                security=body.smtp_security,
                username=body.smtp_username,
                password=body.password.get_secret_value(),
                signature=body.signature,
                make_default=body.make_default,
            )
        else:
            if not body.account:
                raise _invalid("account", "an account identity names its account")
            if any(
                v is not None
                for v in (body.smtp_host, body.smtp_port, body.smtp_username, body.password)
            ):
                raise _invalid("smtp_host", "an account identity sends with its account's server")
            identity = service.identities.create_for_account(
                user,
                account_name=body.account,
                address=body.address,
                display_name=body.display_name,
                signature=body.signature,
                make_default=body.make_default,
            )
    except IdentityRefused as exc:
        raise _refused(exc) from exc
    except ComposeError as exc:
        raise _invalid(exc.field or "address", str(exc)) from exc
    return identity_public(identity)


@identities_router.get("/{identity_id}", response_model=IdentityPublic)
def get_identity(identity_id: IdentityId, request: Request, user: CurrentUser) -> IdentityPublic:
    return identity_public(_service(request).identities.get(user, identity_id))


@identities_router.patch("/{identity_id}", response_model=IdentityPublic)
async def update_identity(
    identity_id: IdentityId, body: IdentityUpdate, request: Request, user: CurrentUser
) -> IdentityPublic:
    """Change the fields sent. New SMTP settings without ``password`` drop the stored one
    (it was entered for the old server); a password is tested before it is saved."""
    try:
        identity = await _service(request).update_identity(
            user,
            identity_id,
            display_name=body.display_name,
            signature=body.signature,
            host=body.smtp_host,
            port=body.smtp_port,
            security=body.smtp_security,
            username=body.smtp_username,
            password=body.password.get_secret_value() if body.password is not None else None,
        )
    except IdentityRefused as exc:
        raise _refused(exc) from exc
    return identity_public(identity)


@identities_router.delete("/{identity_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_identity(identity_id: IdentityId, request: Request, user: CurrentUser) -> Response:
    """Remove an SMTP identity or an alias (an account's own address always stays: remove
    the account instead). When the default goes, the oldest remaining one takes over."""
    _service(request).identities.delete(user, identity_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@identities_router.post("/{identity_id}/default", response_model=IdentityPublic)
def mark_default(identity_id: IdentityId, request: Request, user: CurrentUser) -> IdentityPublic:
    """ "Mark Default": this identity is preselected in the composer; no other is."""
    return identity_public(_service(request).identities.set_default(user, identity_id))


@compose_router.get("/defaults", response_model=ComposeDefaults)
def compose_defaults(request: Request, user: CurrentUser) -> ComposeDefaults:
    """The default identity preselected, the list to switch to, the size limit checked
    before sending and the merge fields templates may use."""
    service = _service(request)
    identities = [identity_public(i) for i in service.identities.list(user)]
    default = next((i for i in identities if i.is_default), None)
    return ComposeDefaults(
        identity=default,
        identities=identities,
        size_limit=service.size_limit(),
        merge_fields=dict(FIELDS),
    )


# -- templates -----------------------------------------------------------------------------


def _template_error(exc: TemplateError) -> RequestValidationError:
    return _invalid(exc.part or "text", str(exc))


@templates_router.get("", response_model=list[TemplatePublic])
def list_templates(request: Request, user: CurrentUser) -> list[TemplatePublic]:
    """The caller's templates and those shared with their teams (an admin: all)."""
    return [template_public(t) for t in _service(request).templates.list(user)]


@templates_router.post("", response_model=TemplatePublic, status_code=status.HTTP_201_CREATED)
def create_template(body: TemplateCreate, request: Request, user: CurrentUser) -> TemplatePublic:
    """A template; a merge field that is not documented is a 422 naming it."""
    fields = TemplateFields(
        name=body.name, subject=body.subject, text=body.text, html=body.html, team_id=body.team_id
    )
    try:
        return template_public(_service(request).templates.create(user, fields))
    except TemplateError as exc:
        raise _template_error(exc) from exc


@templates_router.get("/{template_id}", response_model=TemplatePublic)
def get_template(template_id: TemplateId, request: Request, user: CurrentUser) -> TemplatePublic:
    return template_public(_service(request).templates.get(user, template_id))


@templates_router.patch("/{template_id}", response_model=TemplatePublic)
def update_template(
    template_id: TemplateId, body: TemplateUpdate, request: Request, user: CurrentUser
) -> TemplatePublic:
    fields = TemplateFields(
        name=body.name, subject=body.subject, text=body.text, html=body.html, team_id=body.team_id
    )
    try:
        return template_public(_service(request).templates.update(user, template_id, fields))
    except TemplateError as exc:
        raise _template_error(exc) from exc


@templates_router.delete("/{template_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_template(template_id: TemplateId, request: Request, user: CurrentUser) -> Response:
    _service(request).templates.delete(user, template_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@templates_router.post("/{template_id}/render", response_model=RenderedPublic)
@needs("full")
def render_template(
    template_id: TemplateId, body: TemplateRenderRequest, request: Request, user: CurrentUser
) -> RenderedPublic:
    """A preview: the template filled with the fields of the records named. A merge field
    without a value is a 422 naming it (never a blank); a record that does not exist, a 422
    on its field."""
    try:
        rendered = _service(request).render(
            user,
            template_id,
            contact_id=body.contact_id,
            company_id=body.company_id,
            deal_id=body.deal_id,
            identity_id=body.identity_id,
            user_name=user.display_name,
            user_email=user.email,
        )
    except MissingMergeFields as exc:
        raise RequestValidationError(
            [{"type": "missing_merge_fields", "loc": ("body",), "msg": str(exc)}]
        ) from exc
    except RecordMissing as exc:
        raise _invalid(exc.field, str(exc)) from exc
    return RenderedPublic(subject=rendered.subject, text=rendered.text, html=rendered.html)
