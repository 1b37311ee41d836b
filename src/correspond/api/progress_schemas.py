"""API schemas for sync progress and run control (pause, resume)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from correspond.accounts import describe_state
from correspond.store.progress import AccountProgress, FolderProgress

__all__ = [
    "FolderProgressPublic",
    "ProgressPublic",
    "folder_progress_public",
    "progress_public",
]


class FolderProgressPublic(BaseModel):
    """One selected folder's backfill: ``done`` of ``total`` messages in the window
    (``total`` is null until its backfill starts). ``rate`` is messages per second, measured
    over the last half minute; ``eta_seconds`` the remaining work at that rate."""

    folder_id: int
    name: str
    role: str | None
    done: int
    total: int | None
    percent: float | None
    complete: bool
    rate: float | None
    eta_seconds: float | None


class ProgressPublic(BaseModel):
    """An account's sync state and backfill progress, per folder and in total.

    ``total_known`` is false while some selected folder has not started its backfill (its
    messages are not counted yet, so ``eta_seconds`` is then a lower bound).
    """

    account: str
    state: str
    state_detail: str
    state_message: str
    connected_at: datetime | None
    last_sync_at: datetime | None
    done: int
    total: int
    total_known: bool
    percent: float | None
    complete: bool
    rate: float | None
    eta_seconds: float | None
    folders: list[FolderProgressPublic]


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None else round(100.0 * fraction, 1)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def folder_progress_public(f: FolderProgress) -> FolderProgressPublic:
    return FolderProgressPublic(
        folder_id=f.folder_id,
        name=f.name,
        role=f.role,
        done=f.done,
        total=f.total,
        percent=_percent(f.fraction),
        complete=f.complete,
        rate=_round(f.rate),
        eta_seconds=_round(f.eta_seconds),
    )


def progress_public(p: AccountProgress) -> ProgressPublic:
    return ProgressPublic(
        account=p.name,
        state=p.state,
        state_detail=p.state_detail,
        state_message=describe_state(p.state, p.state_detail),
        connected_at=p.connected_at,
        last_sync_at=p.last_sync_at,
        done=p.done,
        total=p.total,
        total_known=p.total_known,
        percent=_percent(p.fraction),
        complete=p.complete,
        rate=_round(p.rate),
        eta_seconds=_round(p.eta_seconds),
        folders=[folder_progress_public(f) for f in p.folders],
    )
