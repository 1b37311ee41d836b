"""Typed dependencies, declared once and used by every route.

Each only reads ``app.state``: ``async``, so solving one costs no hop to the thread pool.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from correspond.accounts import AccountService
from correspond.mailbox import MailboxReader
from correspond.settings import Settings
from correspond.store.leases import AccountLeases
from correspond.store.progress import ProgressReader

__all__ = [
    "LeasesDep",
    "ProgressDep",
    "ReaderDep",
    "ServiceDep",
    "SettingsDep",
    "get_leases",
    "get_progress",
    "get_reader",
    "get_service",
    "get_settings",
]


async def get_service(request: Request) -> AccountService:
    service: AccountService = request.app.state.accounts
    return service


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_reader(request: Request) -> MailboxReader:
    reader: MailboxReader = request.app.state.reader
    return reader


async def get_progress(request: Request) -> ProgressReader:
    progress: ProgressReader = request.app.state.progress
    return progress


async def get_leases(request: Request) -> AccountLeases:
    leases: AccountLeases = request.app.state.leases
    return leases


ServiceDep = Annotated[AccountService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ReaderDep = Annotated[MailboxReader, Depends(get_reader)]
ProgressDep = Annotated[ProgressReader, Depends(get_progress)]
LeasesDep = Annotated[AccountLeases, Depends(get_leases)]
