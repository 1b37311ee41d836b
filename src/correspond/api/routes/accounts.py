"""``/accounts``: add, list, show, change, remove and test mail accounts."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from correspond.accounts import report_to_dict
from correspond.api.deps import ProgressDep, ServiceDep
from correspond.api.progress_schemas import progress_public
from correspond.api.schemas import (
    AccountCreate,
    AccountPublic,
    AccountUpdate,
    ConnectionReportPublic,
    ErrorPublic,
    TrustCertificate,
    account_public,
)
from correspond.api.security import AuthDep, CurrentUser
from correspond.errors import ConfigError
from correspond.rules.presets import AccountChanges

__all__ = ["router"]

router = APIRouter(prefix="/accounts", tags=["accounts"])

_NO_SUCH_ACCOUNT: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorPublic, "description": "No account with that name"}
}


@router.get("", response_model=list[AccountPublic])
def list_accounts(
    service: ServiceDep, progress: ProgressDep, user: CurrentUser, auth: AuthDep
) -> list[AccountPublic]:
    """The accounts the caller may see: their own (an admin: all)."""
    summaries = service.list_accounts(owner_id=auth.owner_filter(user))
    by_name = {p.name: progress_public(p) for p in progress.all()}
    return [account_public(s, progress=by_name.get(s.account.name)) for s in summaries]


@router.post(
    "",
    response_model=AccountPublic,
    status_code=status.HTTP_201_CREATED,
    responses={409: {"model": ErrorPublic, "description": "An account with that name exists"}},
)
def add_account(
    body: AccountCreate, service: ServiceDep, progress: ProgressDep, user: CurrentUser
) -> AccountPublic | JSONResponse:
    """Add an account owned by the caller (nothing is contacted yet: run the test next)."""
    draft = body.to_draft()  # validated with the body: cannot fail here
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
    summary = service.get_account(draft.name)
    return account_public(summary, progress=progress_public(progress.account(draft.name)))


@router.get("/{name}", response_model=AccountPublic, responses=_NO_SUCH_ACCOUNT)
def get_account(name: str, service: ServiceDep, progress: ProgressDep) -> AccountPublic:
    """The account with its state, last sync and backfill progress."""
    summary = service.get_account(name)
    return account_public(summary, progress=progress_public(progress.account(name)))


@router.patch("/{name}", response_model=AccountPublic, responses=_NO_SUCH_ACCOUNT)
def update_account(
    name: str, body: AccountUpdate, service: ServiceDep, progress: ProgressDep
) -> AccountPublic:
    """Change some of the account's settings and/or its password: only the fields sent change,
    all or nothing. A refused change (a 422) changes nothing."""
    password = body.password.get_secret_value() if body.password is not None else None
    try:
        service.update_account(name, body.to_changes(), password)
    except ConfigError as exc:
        # The account exists: what is wrong is the body, checked with the stored settings.
        error = {"type": "value_error", "loc": ("body",), "msg": str(exc)}
        raise RequestValidationError([error]) from exc
    summary = service.get_account(name)
    return account_public(summary, progress=progress_public(progress.account(name)))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=_NO_SUCH_ACCOUNT)
def remove_account(name: str, service: ServiceDep) -> Response:
    service.remove_account(name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{name}/test", response_model=ConnectionReportPublic, responses=_NO_SUCH_ACCOUNT)
async def test_account(name: str, service: ServiceDep) -> ConnectionReportPublic:
    """Run the connection test; a failed test is a normal answer with ``ok: false``."""
    report = await service.test_account(name)
    return ConnectionReportPublic(**report_to_dict(report))


@router.post("/{name}/trust-certificate", response_model=AccountPublic, responses=_NO_SUCH_ACCOUNT)
async def trust_certificate(
    name: str, body: TrustCertificate, service: ServiceDep, progress: ProgressDep
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
    return account_public(summary, progress=progress_public(progress.account(name)))
