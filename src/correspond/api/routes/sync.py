"""``/accounts/{name}/progress``, ``/pause``, ``/resume``: watching and steering the sync."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from correspond.api.deps import LeasesDep, ProgressDep, ServiceDep
from correspond.api.progress_schemas import ProgressPublic, progress_public
from correspond.api.schemas import AccountPublic, account_public
from correspond.api.security import needs

__all__ = ["router"]

router = APIRouter(prefix="/accounts", tags=["sync"])


@router.get("/{name}/progress", response_model=ProgressPublic)
@needs("metadata")
async def get_progress(name: str, progress: ProgressDep) -> ProgressPublic:
    """State, state detail, last successful sync, and the backfill's done/total, rate and ETA,
    per selected folder and in total."""
    return progress_public(await asyncio.to_thread(progress.account, name))


@router.post("/{name}/pause", response_model=AccountPublic)
async def pause_account(
    name: str, leases: LeasesDep, service: ServiceDep, progress: ProgressDep
) -> AccountPublic:
    """Stop syncing the account (state ``paused``): its worker hears of it at once and closes
    the account's IMAP connections within a second. Its data stays; CRM actions meanwhile
    wait in the outbox and are applied after the resume's catch-up. 409 for a disconnected
    account (reconnect it instead)."""
    await asyncio.to_thread(leases.pause, name)
    return await _public(name, service, progress)


@router.post("/{name}/resume", response_model=AccountPublic)
async def resume_account(
    name: str, leases: LeasesDep, service: ServiceDep, progress: ProgressDep
) -> AccountPublic:
    """Sync a paused (or failed) account again: state ``connecting``, and a worker takes it at
    once, resumes from its checkpoints, catches up what changed meanwhile, then applies the
    waiting CRM actions. 409 for a disconnected account (reconnect it instead)."""
    await asyncio.to_thread(leases.resume, name)
    return await _public(name, service, progress)


async def _public(name: str, service: ServiceDep, progress: ProgressDep) -> AccountPublic:
    summary = await asyncio.to_thread(service.get_account, name)
    p = await asyncio.to_thread(progress.account, name)
    return account_public(summary, progress=progress_public(p))
