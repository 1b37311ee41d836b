"""The FastAPI application factory and the one place errors become HTTP statuses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from correspond import __version__
from correspond.accounts import AccountService
from correspond.api.routes import accounts, folders, health, messages, sync
from correspond.api.schemas import ErrorPublic
from correspond.errors import (
    AuthenticationFailed,
    ConfigError,
    CorrespondError,
    ImapError,
    ImapTimeout,
    NotFound,
    StoreError,
)
from correspond.mailbox import MailboxReader
from correspond.settings import Settings
from correspond.store import Store, open_store
from correspond.store.leases import AccountLeases
from correspond.store.progress import ProgressReader
from correspond.sync.runner import SyncRunner

__all__ = ["create_app", "status_for"]


def status_for(exc: CorrespondError) -> int:
    """The HTTP status for one of our errors."""
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, ConfigError):
        return 400
    if isinstance(exc, ImapTimeout):
        return 504
    if isinstance(exc, AuthenticationFailed | ImapError):
        return 502  # the mail server, not this API, said no
    if isinstance(exc, StoreError):
        return 503
    return 500


async def _correspond_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CorrespondError)
    body = ErrorPublic(detail=str(exc), error=type(exc).__name__, transient=exc.transient)
    return JSONResponse(status_code=status_for(exc), content=body.model_dump())


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """422 with FastAPI's usual list of field errors, minus what could leak: pydantic echoes the
    offending ``input``, and for a missing field or a cross-field rule that is the whole body,
    password included. Each error keeps ``type``, ``loc`` and a plain ``msg``."""
    assert isinstance(exc, RequestValidationError)
    errors = []
    for error in exc.errors():
        msg = str(error.get("msg", ""))
        errors.append(
            {
                "type": error.get("type", "value_error"),
                "loc": list(error.get("loc", ())),
                "msg": msg.removeprefix("Value error, "),
            }
        )
    return JSONResponse(status_code=422, content={"detail": errors})


def create_app(
    settings: Settings, *, store: Store | None = None, runner: SyncRunner | None = None
) -> FastAPI:
    """The API over ``store`` (default: open ``settings``' store, running migrations now).

    With a ``runner`` (``correspond serve``), the sync engine runs beside the API in the same
    event loop: started when the app starts, shut down (tasks stopped, leases released) before
    the store closes.
    """
    owns_store = store is None
    the_store = store if store is not None else open_store(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if runner is not None:
            runner.start()
        try:
            yield
        finally:
            try:
                if runner is not None:
                    await runner.shutdown()
            finally:
                if owns_store:
                    the_store.close()

    app = FastAPI(
        title="Correspond",
        version=__version__,
        description="Two-way email sync for CRMs. Secrets are write-only.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.accounts = AccountService(the_store, settings)
    app.state.reader = MailboxReader(the_store, settings)
    app.state.progress = ProgressReader(the_store.engine)
    app.state.leases = AccountLeases(the_store.engine)
    app.state.runner = runner
    app.add_exception_handler(CorrespondError, _correspond_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.include_router(health.router)
    app.include_router(accounts.router)
    app.include_router(sync.router)
    app.include_router(folders.router)
    app.include_router(messages.account_router)
    app.include_router(messages.router)
    app.include_router(messages.thread_router)
    return app
