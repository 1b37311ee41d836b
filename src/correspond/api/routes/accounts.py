"""``/accounts``: add, list, show, remove and test mail accounts."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from correspond.accounts import report_to_dict
from correspond.api.deps import ProgressDep, ServiceDep
from correspond.api.progress_schemas import progress_public
from correspond.api.schemas import (
    AccountCreate,
    AccountPublic,
    ConnectionReportPublic,
    account_public,
)
from correspond.rules.presets import draft_from_preset

__all__ = ["router"]

router = APIRouter(prefix="/accounts", tags=["accounts"])


@router.get("", response_model=list[AccountPublic])
def list_accounts(service: ServiceDep, progress: ProgressDep) -> list[AccountPublic]:
    summaries = service.list_accounts()
    by_name = {p.name: progress_public(p) for p in progress.all()}
    return [account_public(s, progress=by_name.get(s.account.name)) for s in summaries]


@router.post("", response_model=AccountPublic, status_code=status.HTTP_201_CREATED)
def add_account(body: AccountCreate, service: ServiceDep, progress: ProgressDep) -> AccountPublic:
    draft = draft_from_preset(
        body.preset,
        name=body.name,
        email=body.email,
        username=body.username,
        imap_host=body.imap_host,
        imap_port=body.imap_port,
        imap_security=body.imap_security,
        smtp_host=body.smtp_host,
        smtp_port=body.smtp_port,
        smtp_security=body.smtp_security,
        allow_plaintext=body.allow_plaintext,
        trusted_cert_pem=body.trusted_cert_pem,
        window_days=body.window_days,
        toggles=body.toggles,
    )
    service.add_account(draft, body.password.get_secret_value())
    summary = service.get_account(draft.name)
    return account_public(summary, progress=progress_public(progress.account(draft.name)))


@router.get("/{name}", response_model=AccountPublic)
def get_account(name: str, service: ServiceDep, progress: ProgressDep) -> AccountPublic:
    """The account with its state, last sync and backfill progress."""
    summary = service.get_account(name)
    return account_public(summary, progress=progress_public(progress.account(name)))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def remove_account(name: str, service: ServiceDep) -> Response:
    service.remove_account(name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{name}/test", response_model=ConnectionReportPublic)
async def test_account(name: str, service: ServiceDep) -> ConnectionReportPublic:
    """Run the connection test; a failed test is a normal answer with ``ok: false``."""
    report = await service.test_account(name)
    return ConnectionReportPublic(**report_to_dict(report))
