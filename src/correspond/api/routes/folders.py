"""``/accounts/{name}/folders``: list (with counts), refresh from the server, choose what syncs."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError

from correspond.api.deps import ReaderDep, ServiceDep
from correspond.api.message_schemas import FolderWithCountsPublic, folder_with_counts_public
from correspond.api.schemas import (
    ErrorPublic,
    FolderRefreshPublic,
    FolderSelection,
    refresh_public,
)
from correspond.api.security import needs
from correspond.errors import ConfigError, NotFound

__all__ = ["router"]

router = APIRouter(
    prefix="/accounts/{name}/folders",
    tags=["folders"],
    responses={404: {"model": ErrorPublic, "description": "No account with that name"}},
)


@router.get("", response_model=list[FolderWithCountsPublic])
@needs("metadata")
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


@router.put("/selection", response_model=list[FolderWithCountsPublic])
async def select_folders(
    name: str, selection: FolderSelection, service: ServiceDep, reader: ReaderDep
) -> list[FolderWithCountsPublic]:
    """Sync ``all`` folders (and ones created later), or exactly ``folders`` (ids or names).
    Answers the folders as ``GET`` does (with ``counts``).

    An unknown, ambiguous or unselectable folder is a 422 naming it; nothing changes then.
    """
    await asyncio.to_thread(service.get_account, name)  # an unknown account stays a 404
    try:
        await asyncio.to_thread(
            service.select_folders, name, all_folders=selection.all, refs=selection.folders
        )
    except (ConfigError, NotFound) as exc:
        # The account exists: what is wrong is a folder named in the body.
        error = {"type": "value_error", "loc": ("body", "folders"), "msg": str(exc)}
        raise RequestValidationError([error]) from exc
    # The same shape as GET, so a client can render either answer with one code path.
    folders = await asyncio.to_thread(reader.folders_with_counts, name)
    return [folder_with_counts_public(f) for f in folders]
