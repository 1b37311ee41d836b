"""``/accounts/{name}/folders``: list (with counts), refresh from the server, choose what syncs."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from correspond.api.deps import ReaderDep, ServiceDep
from correspond.api.message_schemas import FolderWithCountsPublic, folder_with_counts_public
from correspond.api.schemas import (
    FolderPublic,
    FolderRefreshPublic,
    FolderSelection,
    folder_public,
    refresh_public,
)

__all__ = ["router"]

router = APIRouter(prefix="/accounts/{name}/folders", tags=["folders"])


@router.get("", response_model=list[FolderWithCountsPublic])
def list_folders(
    name: str, reader: ReaderDep, include_removed: bool = False
) -> list[FolderWithCountsPublic]:
    """The folders, INBOX and role folders first, each with ``counts``: messages and locations
    stored, unread, and the server's own count at the last sync."""
    return [
        folder_with_counts_public(f)
        for f in reader.folders_with_counts(name, include_removed=include_removed)
    ]


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
