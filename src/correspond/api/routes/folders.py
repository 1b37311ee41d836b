"""``/accounts/{name}/folders``: list, refresh from the server, choose what syncs."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from correspond.api.deps import ServiceDep
from correspond.api.schemas import (
    FolderPublic,
    FolderRefreshPublic,
    FolderSelection,
    folder_public,
    refresh_public,
)

__all__ = ["router"]

router = APIRouter(prefix="/accounts/{name}/folders", tags=["folders"])


@router.get("", response_model=list[FolderPublic])
def list_folders(
    name: str, service: ServiceDep, include_removed: bool = False
) -> list[FolderPublic]:
    return [folder_public(f) for f in service.list_folders(name, include_removed=include_removed)]


@router.post("/refresh", response_model=FolderRefreshPublic)
async def refresh_folders(name: str, service: ServiceDep) -> FolderRefreshPublic:
    """LIST the server's folders, assign roles, and record them."""
    return refresh_public(await service.refresh_folders(name))


@router.put("/selection", response_model=list[FolderPublic])
async def select_folders(
    name: str, selection: FolderSelection, service: ServiceDep
) -> list[FolderPublic]:
    folders = await asyncio.to_thread(
        service.select_folders, name, all_folders=selection.all, refs=selection.folders
    )
    return [folder_public(f) for f in folders]
