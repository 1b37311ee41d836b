"""``/accounts``: add, list, show, remove and test mail accounts."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from correspond.accounts import report_to_dict
from correspond.api.deps import ServiceDep
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
def list_accounts(service: ServiceDep) -> list[AccountPublic]:
    return [account_public(s) for s in service.list_accounts()]


@router.post("", response_model=AccountPublic, status_code=status.HTTP_201_CREATED)
def add_account(body: AccountCreate, service: ServiceDep) -> AccountPublic:
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
    return account_public(service.get_account(draft.name))


@router.get("/{name}", response_model=AccountPublic)
def get_account(name: str, service: ServiceDep) -> AccountPublic:
    return account_public(service.get_account(name))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def remove_account(name: str, service: ServiceDep) -> Response:
    service.remove_account(name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{name}/test", response_model=ConnectionReportPublic)
async def test_account(name: str, service: ServiceDep) -> ConnectionReportPublic:
    """Run the connection test; a failed test is a normal answer with ``ok: false``."""
    report = await service.test_account(name)
    return ConnectionReportPublic(**report_to_dict(report))
