"""The FastAPI application factory and the one place errors become HTTP statuses."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from correspond import __version__
from correspond.accounts import AccountService
from correspond.api.guard import RequestGuard
from correspond.api.routes import (
    accounts,
    actions,
    auth,
    compose,
    crm,
    drafts,
    folders,
    health,
    inbox,
    messages,
    notifications,
    search,
    sending,
    sync,
    teams,
    webhooks,
)
from correspond.api.schemas import ErrorPublic
from correspond.api.security import authorize
from correspond.auth import AuthService
from correspond.composer import ComposeService
from correspond.drafts import DraftService
from correspond.errors import (
    AuthenticationFailed,
    ConfigError,
    Conflict,
    CorrespondError,
    ImapError,
    ImapTimeout,
    NotFound,
    StoreError,
)
from correspond.mailbox import MailboxReader
from correspond.notify import NotificationHub, WebhookSender
from correspond.outgoing import SendService
from correspond.search import BackgroundIndexer, SearchService
from correspond.settings import Settings
from correspond.store import Store, open_store
from correspond.store.crm import CrmStore
from correspond.store.inbox import InboxQueries
from correspond.store.leases import AccountLeases
from correspond.store.notifications import NotificationStore
from correspond.store.outbox import OutboxStore
from correspond.store.progress import ProgressReader
from correspond.store.webhooks import WebhookStore
from correspond.sync.runner import SyncRunner

__all__ = ["DOCS_ASSETS_URL", "create_app", "docs_assets_dir", "status_for"]

#: Where the documentation pages' own copies of Swagger UI and ReDoc are served.
DOCS_ASSETS_URL = "/docs-assets"
log = logging.getLogger(__name__)
_SHUTDOWN_SECONDS = 10.0
_DOCS_ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")


def status_for(exc: CorrespondError) -> int:
    """The HTTP status for one of our errors."""
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
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


def docs_assets_dir() -> Path | None:
    """The folder of Swagger UI and ReDoc files shipped by the ``fastapi-offline`` package, or
    ``None`` when it is not installed (then ``/docs`` loads them from FastAPI's default CDN).

    Served from here, ``/docs`` works on a machine without internet access. Found without
    importing the package: only its files are used.
    """
    try:
        spec = importlib.util.find_spec("fastapi_offline")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "static"
    if not all((folder / name).is_file() for name in _DOCS_ASSETS):
        return None  # a release with another layout: the CDN pages still work
    return folder


def _serve_docs_locally(app: FastAPI, assets: Path) -> None:
    """``/docs`` and ``/redoc`` with their scripts, styles and icon served from ``assets``
    (FastAPI's "Self-hosting JavaScript and CSS for docs")."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=assets), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=oauth2_redirect_url,
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
        )

    if oauth2_redirect_url:

        @app.get(oauth2_redirect_url, include_in_schema=False)
        async def swagger_ui_redirect() -> HTMLResponse:
            return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )


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

    notes = NotificationStore(the_store.engine)
    webhook_store = WebhookStore(the_store.engine, the_store.secrets)
    sender = WebhookSender(webhook_store, settings)
    hub = NotificationHub(
        notes,
        webhook_store,
        settings,
        postgres=the_store.dialect == "postgresql",
        engine=the_store.engine,
        on_events=sender.wake,
    )
    search_service = SearchService(the_store.engine, settings)
    indexer = BackgroundIndexer(
        search_service.index, poll_seconds=settings.search_index_poll_seconds
    )
    if runner is not None:
        # Mail this process stores wakes the indexer at once (after the ingest commits).
        runner.messages.after_ingest.append(indexer.wake)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        indexer.start()
        if runner is not None:
            runner.start()
        # Notifications and webhooks run in every API process (correspond.notify).
        background = [asyncio.create_task(hub.run()), asyncio.create_task(sender.run())]
        try:
            yield
        finally:
            try:
                for task in background:
                    task.cancel()
                # Bounded: a task that ignored its cancel must not hold the shutdown forever.
                ended, stuck = await asyncio.wait(background, timeout=_SHUTDOWN_SECONDS)
                for task in ended:
                    if not task.cancelled() and task.exception() is not None:
                        log.warning("background task failed: %r", task.exception())
                if stuck:
                    log.warning("%d background task(s) did not stop in time", len(stuck))
                if runner is not None:
                    await runner.shutdown()
            finally:
                indexer.stop()
                if owns_store:
                    the_store.close()

    assets = docs_assets_dir()
    app = FastAPI(
        title="Correspond",
        version=__version__,
        description="Two-way email sync for CRMs. Secrets are write-only.",
        lifespan=lifespan,
        # With local copies of the docs' assets, our own pages replace FastAPI's CDN ones.
        docs_url=None if assets else "/docs",
        redoc_url=None if assets else "/redoc",
    )
    if assets is not None:
        _serve_docs_locally(app, assets)
    app.state.settings = settings
    app.state.accounts = AccountService(the_store, settings)
    app.state.reader = MailboxReader(the_store, settings)
    app.state.progress = ProgressReader(the_store.engine)
    app.state.leases = AccountLeases(the_store.engine)
    app.state.runner = runner
    app.state.auth = AuthService(the_store, settings)
    app.state.composer = ComposeService(the_store, settings)
    app.state.crm = CrmStore(the_store.engine)
    # With the engine in this process, a CRM action wakes its account's session at once.
    app.state.outbox = OutboxStore(
        the_store.engine, on_recorded=runner.wake if runner is not None else None
    )
    app.state.sending = SendService(the_store, settings)
    app.state.drafts = DraftService(the_store, app.state.sending)
    app.state.notifications = notes
    app.state.webhooks = webhook_store
    app.state.hub = hub
    app.state.webhook_sender = sender
    app.state.search = search_service
    app.state.inbox = InboxQueries(the_store.engine, scan_rows=settings.message_search_scan_rows)
    app.state.indexer = indexer
    app.add_exception_handler(CorrespondError, _correspond_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(
        RequestGuard,
        allowed_hosts=settings.allowed_hosts,
        allowed_origins=settings.allowed_origins,
        max_body_bytes=settings.max_request_bytes,
    )
    # Public: /health, POST /session (signing in) and the documentation (no data in them).
    # The token routes check the caller themselves (CurrentUser).
    own_checks = (health.router, auth.session_router, auth.tokens_router)
    signed_in_routers = (
        accounts.router,
        sync.router,
        folders.router,
        messages.account_router,
        messages.router,
        actions.router,
        sending.router,
        sending.outbox_router,
        drafts.router,
        messages.thread_router,
        teams.router,
        teams.me_router,
        *crm.record_routers,
        crm.import_router,
        crm.dismissal_router,
        crm.thread_deal_router,
        notifications.router,
        webhooks.router,
        search.router,
        inbox.router,
        compose.identities_router,
        compose.templates_router,
        compose.compose_router,
    )
    # Everything else needs a signed-in user who may see what the path names.
    signed_in = [Depends(authorize)]
    # The message list first: the router tries each route in turn until one matches the
    # path, and the list is the request a client repeats most (~0.15 ms of CPU less than
    # after the ~20 routes before it). No other route's path can match its path.
    app.include_router(messages.account_router, dependencies=signed_in)
    for router in own_checks:
        app.include_router(router)
    for router in signed_in_routers:
        if router is not messages.account_router:
            app.include_router(router, dependencies=signed_in)
    # The web app's pages last: the API's paths are tried first and keep their meaning. (Imported
    # here: the pages import the API's security module, whose package imports this one.)
    from correspond.web import mount_web

    mount_web(app)
    # /docs keeps its sections in the order above, not in the order routes are tried.
    app.openapi_tags = [
        {"name": tag}
        for tag in dict.fromkeys(
            str(tag)
            for router in (*own_checks, *signed_in_routers)
            for route in router.routes
            for tag in getattr(route, "tags", ())
        )
    ]
    return app
