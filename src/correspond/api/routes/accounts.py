"""``/accounts``: add, list, show, change, remove and test mail accounts."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from correspond.accounts import LifecyclePlan, lifecycle_plan, report_to_dict
from correspond.api.deps import ProgressDep, ServiceDep
from correspond.api.progress_schemas import progress_public
from correspond.api.schemas import (
    AccountCreate,
    AccountPublic,
    AccountReconnect,
    AccountUpdate,
    ConnectionReportPublic,
    ErrorPublic,
    LifecyclePlanPublic,
    TrustCertificate,
    account_public,
)
from correspond.api.security import AuthDep, CurrentUser, ViewAccess, needs
from correspond.auth import AuthService
from correspond.errors import ConfigError, Conflict, NotFound
from correspond.rules.presets import AccountChanges
from correspond.store.users import User
from correspond.store.visibility import Access

__all__ = ["router"]

router = APIRouter(prefix="/accounts", tags=["accounts"])

_NO_SUCH_ACCOUNT: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorPublic, "description": "No account with that name"}
}


@router.get("", response_model=list[AccountPublic])
def list_accounts(
    service: ServiceDep, progress: ProgressDep, user: CurrentUser
) -> list[AccountPublic]:
    """The accounts the caller may see (an admin: all; a member: their own, their teams'
    inboxes, and what people in their teams share with them), each with the caller's
    ``access``."""
    summaries = service.list_accounts(viewer=user)
    by_name = {p.name: progress_public(p) for p in progress.all()}
    return [account_public(s, progress=by_name.get(s.account.name)) for s in summaries]


@router.post(
    "",
    response_model=AccountPublic,
    status_code=status.HTTP_201_CREATED,
    responses={409: {"model": ErrorPublic, "description": "An account with that name exists"}},
)
def add_account(
    body: AccountCreate,
    service: ServiceDep,
    progress: ProgressDep,
    user: CurrentUser,
    auth: AuthDep,
) -> AccountPublic | JSONResponse:
    """Add an account owned by the caller (nothing is contacted yet: run the test next); a
    team inbox of ``team_id`` when given (the caller must be an admin or in that team)."""
    draft = body.to_draft()  # validated with the body: cannot fail here
    if body.team_id is not None:
        _check_team(auth, user, body.team_id)
    if service.account_exists(draft.name):
        return JSONResponse(
            status_code=status.HTTP_409_CONFLICT,
            content=ErrorPublic(
                detail=f"an account named {draft.name!r} already exists",
                error="Conflict",
                transient=False,
            ).model_dump(),
        )
    service.add_account(draft, body.password.get_secret_value(), owner_id=user.id)
    if body.sharing != "private" or body.team_id is not None:
        auth.teams.set_account_sharing(draft.name, sharing=body.sharing, team_id=body.team_id)
    summary = service.get_account(draft.name)
    return account_public(
        summary,
        progress=progress_public(progress.account(draft.name)),
        access=Access(level="full", manage=True),
    )


def _check_team(auth: AuthService, user: User, team_id: int) -> None:
    """A 422 naming ``team_id`` unless ``user`` may make an account a team inbox of it (the
    same answer for a team that does not exist and one they are not in)."""
    try:
        auth.check_team_choice(user, team_id)
    except NotFound as exc:
        error = {
            "type": "value_error",
            "loc": ("body", "team_id"),
            "msg": f"{exc}: a team inbox belongs to a team you are in (an admin: any team)",
        }
        raise RequestValidationError([error]) from exc


@router.get("/{name}", response_model=AccountPublic, responses=_NO_SUCH_ACCOUNT)
@needs("metadata")
def get_account(
    name: str, service: ServiceDep, progress: ProgressDep, access: ViewAccess
) -> AccountPublic:
    """The account with its state, last sync, backfill progress and the caller's access."""
    summary = service.get_account(name)
    return account_public(summary, progress=progress_public(progress.account(name)), access=access)


@router.patch("/{name}", response_model=AccountPublic, responses=_NO_SUCH_ACCOUNT)
def update_account(
    name: str,
    body: AccountUpdate,
    service: ServiceDep,
    progress: ProgressDep,
    user: CurrentUser,
    auth: AuthDep,
    access: ViewAccess,
) -> AccountPublic:
    """Change some of the account's settings, its password, ``sharing`` or ``team_id`` (owner
    or admin): only the fields sent change, all or nothing. A refused change (a 422) changes
    nothing."""
    team_given = "team_id" in body.model_fields_set
    if team_given and body.team_id is not None:
        _check_team(auth, user, body.team_id)
    password = body.password.get_secret_value() if body.password is not None else None
    if body.changes_settings:
        try:
            service.update_account(name, body.to_changes(), password)
        except Conflict:
            raise  # a 409: the account's state, not the body (a disconnected account)
        except ConfigError as exc:
            # The account exists: what is wrong is the body, checked with the stored settings.
            error = {"type": "value_error", "loc": ("body",), "msg": str(exc)}
            raise RequestValidationError([error]) from exc
    if body.sharing is not None or team_given:
        auth.teams.set_account_sharing(
            name,
            sharing=body.sharing,
            team_id=body.team_id,
            clear_team=team_given and body.team_id is None,
        )
    summary = service.get_account(name)
    return account_public(summary, progress=progress_public(progress.account(name)), access=access)


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        **_NO_SUCH_ACCOUNT,
        200: {"model": LifecyclePlanPublic, "description": "With dry_run: what would go"},
    },
)
def remove_account(name: str, service: ServiceDep, dry_run: bool = False) -> Response:
    """Remove the account and everything synced for it, its CRM history included (the
    timeline entries of its messages), and the blobs no other account uses. To stop syncing
    and keep the history, disconnect instead (``POST /accounts/{name}/disconnect``).

    ``?dry_run=true`` answers 200 with what would be removed and changes nothing: show it
    before asking the user. Without it: 204."""
    if dry_run:
        plan = lifecycle_plan("remove", service.footprint(name), dry_run=True)
        return JSONResponse(
            LifecyclePlanPublic(**_plan_fields(plan)).model_dump(mode="json"),
            status_code=status.HTTP_200_OK,
        )
    service.remove_account(name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{name}/disconnect",
    response_model=LifecyclePlanPublic,
    responses={
        **_NO_SUCH_ACCOUNT,
        409: {"model": ErrorPublic, "description": "Already disconnected"},
    },
)
def disconnect_account(
    name: str, service: ServiceDep, progress: ProgressDep, dry_run: bool = False
) -> LifecyclePlanPublic:
    """Disconnect the mailbox and keep the CRM's history: sync stops at once (its IMAP
    connections close within a second), and the stored password, the folders, the message
    locations and the actions still waiting for the mailbox (marked failed) are deleted. The
    messages stay on their threads and CRM timelines, marked ``gone_reason: disconnected``;
    the account stays, with ``disconnected_at``, until it is reconnected
    (``POST /accounts/{name}/reconnect``) or removed (``DELETE``).

    ``?dry_run=true`` answers with what would be removed and kept and changes nothing."""
    if dry_run:
        plan = lifecycle_plan("disconnect", service.footprint(name), dry_run=True)
        return LifecyclePlanPublic(**_plan_fields(plan))
    fp = service.disconnect_account(name)
    plan = lifecycle_plan("disconnect", fp, dry_run=False)
    summary = service.get_account(name)
    return LifecyclePlanPublic(
        **_plan_fields(plan),
        result=account_public(summary, progress=progress_public(progress.account(name))),
    )


@router.post(
    "/{name}/reconnect",
    response_model=AccountPublic,
    responses={
        **_NO_SUCH_ACCOUNT,
        409: {"model": ErrorPublic, "description": "Not disconnected"},
    },
)
def reconnect_account(
    name: str, body: AccountReconnect, service: ServiceDep, progress: ProgressDep
) -> AccountPublic:
    """Reconnect a disconnected account with its password: state ``connecting``; a sync
    worker lists its folders and backfills the account's window (``window_days`` before now).
    Messages still in the CRM from before are found again by their dedupe key, not
    duplicated: same ids, so their timeline links stay valid."""
    service.reconnect_account(name, body.password.get_secret_value())
    summary = service.get_account(name)
    return account_public(summary, progress=progress_public(progress.account(name)))


def _plan_fields(plan: LifecyclePlan) -> dict[str, Any]:
    return {
        "account": plan.account,
        "action": plan.action,
        "dry_run": plan.dry_run,
        "removed": plan.removed,
        "kept": plan.kept,
        "summary": plan.summary,
    }


@router.post("/{name}/test", response_model=ConnectionReportPublic, responses=_NO_SUCH_ACCOUNT)
async def test_account(name: str, service: ServiceDep) -> ConnectionReportPublic:
    """Run the connection test; a failed test is a normal answer with ``ok: false``."""
    report = await service.test_account(name)
    return ConnectionReportPublic(**report_to_dict(report))


@router.post("/{name}/trust-certificate", response_model=AccountPublic, responses=_NO_SUCH_ACCOUNT)
async def trust_certificate(
    name: str,
    body: TrustCertificate,
    service: ServiceDep,
    progress: ProgressDep,
    access: ViewAccess,
) -> AccountPublic:
    """Fetch the certificate the IMAP server presents now (trusting nothing, sending no
    credentials) and store it as the account's trusted certificate if its SHA-256 fingerprint
    is ``fingerprint``; another fingerprint is a 422 naming the one presented, and changes
    nothing."""
    account = await asyncio.to_thread(service.store.get_account, name)
    try:
        pem = await service.presented_certificate_pem(
            account.imap_host, account.imap_port, account.imap_security, body.fingerprint
        )
    except ConfigError as exc:
        error = {"type": "value_error", "loc": ("body", "fingerprint"), "msg": str(exc)}
        raise RequestValidationError([error]) from exc
    password = body.password.get_secret_value() if body.password is not None else None
    changes = AccountChanges(trusted_cert_pem=pem)
    await asyncio.to_thread(service.update_account, name, changes, password)
    summary = await asyncio.to_thread(service.get_account, name)
    return account_public(summary, progress=progress_public(progress.account(name)), access=access)
