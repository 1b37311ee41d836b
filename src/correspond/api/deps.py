"""Typed dependencies, declared once and used by every route."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from correspond.accounts import AccountService
from correspond.mailbox import MailboxReader
from correspond.settings import Settings

__all__ = [
    "ReaderDep",
    "ServiceDep",
    "SettingsDep",
    "get_reader",
    "get_service",
    "get_settings",
]


def get_service(request: Request) -> AccountService:
    service: AccountService = request.app.state.accounts
    return service


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_reader(request: Request) -> MailboxReader:
    reader: MailboxReader = request.app.state.reader
    return reader


ServiceDep = Annotated[AccountService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ReaderDep = Annotated[MailboxReader, Depends(get_reader)]
