"""``/notifications``: the caller's stored notifications (pages, unread count, marking read)
and ``/notifications/stream``, the live Server-Sent Events stream.

The stream sends ``id:`` (the notification id), ``event: notification`` and the notification
as JSON in ``data:``; a comment line every ``notify_heartbeat_seconds`` keeps proxies from
closing an idle stream. A client that reconnects with ``Last-Event-ID`` first gets every
notification after that id, then the live ones: nothing is lost across a reconnect. A client
that does not read is dropped (its queue is bounded); too many streams are a 429. The
caller's sign-in is checked again every heartbeat interval: revoking the token, ending the
session or disabling the user ends the stream within one interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from correspond.api.notify_schemas import (
    NotificationPage,
    NotificationPublic,
    ReadAll,
    ReadAllResult,
    UnreadCount,
    notification_public,
)
from correspond.api.schemas import ErrorPublic
from correspond.api.security import MAX_ID, CurrentUser, caller_recheck
from correspond.notify import NotificationHub, Stream, TooManyStreams
from correspond.store.notifications import Notification, NotificationStore
from correspond.store.users import User

__all__ = ["router"]

router = APIRouter(prefix="/notifications", tags=["notifications"])


def _notes(request: Request) -> NotificationStore:
    notes: NotificationStore = request.app.state.notifications
    return notes


def _cursor(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isascii() or not value.isdigit() or int(value) > MAX_ID:
        raise _bad_cursor()
    return int(value)


def _bad_cursor() -> Exception:
    from fastapi.exceptions import RequestValidationError

    return RequestValidationError(
        [{"type": "value_error", "loc": ("query", "cursor"), "msg": "not a cursor of this list"}]
    )


@router.get("", response_model=NotificationPage)
def list_notifications(
    request: Request,
    user: CurrentUser,
    unread: Annotated[bool, Query(description="Only unread notifications")] = False,
    cursor: Annotated[str | None, Query(max_length=20)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> NotificationPage:
    """The caller's notifications, newest first, by pages (``next_cursor``)."""
    page = _notes(request).page(
        user.id,
        is_admin=user.is_admin,
        unread_only=unread,
        before=_cursor(cursor),
        limit=limit,
    )
    return NotificationPage(
        notifications=[notification_public(n) for n in page.items],
        next_cursor=None if page.next_cursor is None else str(page.next_cursor),
        unread_count=page.unread,
    )


@router.get("/unread-count", response_model=UnreadCount)
def unread_count(request: Request, user: CurrentUser) -> UnreadCount:
    return UnreadCount(unread_count=_notes(request).unread_count(user.id, is_admin=user.is_admin))


@router.post("/read-all", response_model=ReadAllResult)
def read_all(request: Request, user: CurrentUser, body: ReadAll | None = None) -> ReadAllResult:
    """Mark every unread notification of the caller read (up to ``up_to`` when given)."""
    notes = _notes(request)
    marked = notes.mark_all_read(user.id, up_to=body.up_to if body else None)
    return ReadAllResult(
        marked=marked, unread_count=notes.unread_count(user.id, is_admin=user.is_admin)
    )


@router.post(
    "/{notification_id}/read",
    response_model=NotificationPublic,
    responses={404: {"model": ErrorPublic, "description": "Not one of the caller's"}},
)
def read_one(
    request: Request,
    user: CurrentUser,
    notification_id: Annotated[int, Path(ge=1, le=MAX_ID)],
) -> NotificationPublic:
    """Mark one of the caller's notifications read (404 for anyone else's)."""
    found = _notes(request).mark_read(user.id, notification_id, is_admin=user.is_admin)
    return notification_public(found)


def _frame(item: Notification) -> bytes:
    data = notification_public(item).model_dump_json()
    return f"id: {item.id}\nevent: notification\ndata: {data}\n\n".encode()


class _EventStream(Response):
    """The SSE body, written by hand so every write has a deadline (a client that stops
    reading is dropped instead of holding the stream's memory)."""

    media_type = "text/event-stream"

    def __init__(
        self,
        hub: NotificationHub,
        notes: NotificationStore,
        stream: Stream,
        *,
        resume: bool,
        heartbeat: float,
        send_timeout: float,
        recheck: Callable[[], User | None],
    ) -> None:
        super().__init__(
            status_code=200,
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
            media_type=self.media_type,
        )
        # A stream has no length: Response put a "content-length: 0" there for its empty body.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.hub, self.notes, self.stream = hub, notes, stream
        self.resume, self.heartbeat, self.send_timeout = resume, heartbeat, send_timeout
        self.recheck = recheck

    async def _still_signed_in(self) -> bool:
        """Whether the stream's credential still signs its user in (a revoked token, an ended
        session or a disabled user end the stream); the user's role is taken afresh."""
        user = await asyncio.to_thread(self.recheck)
        if user is None or user.id != self.stream.user_id:
            return False
        self.stream.is_admin = user.is_admin
        return True

    async def _write(self, send: Send, data: bytes) -> None:
        async with asyncio.timeout(self.send_timeout):
            await send({"type": "http.response.body", "body": data, "more_body": True})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = self.stream
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await self._write(send, b"retry: 2000\n: connected\n\n")
            if self.resume:
                await self._backlog(send)
            checked = time.monotonic()
            signed_out = False
            while not gone.is_set() and not stream.dropped:
                # The sign-in is checked again once per heartbeat interval (a read by primary
                # key per stream): a revoked token, an ended session or a disabled user ends
                # the stream within one interval, however busy or idle it is.
                if time.monotonic() - checked >= self.heartbeat:
                    checked = time.monotonic()
                    if not await self._still_signed_in():
                        signed_out = True
                        break
                getter = asyncio.create_task(stream.queue.get())
                done, _ = await asyncio.wait(
                    {getter, watcher}, timeout=self.heartbeat, return_when=asyncio.FIRST_COMPLETED
                )
                if getter in done:
                    item = getter.result()
                    if item.id > stream.after:
                        await self._write(send, _frame(item))
                        stream.after = item.id
                    continue
                getter.cancel()
                if not gone.is_set():
                    await self._write(send, b": keep-alive\n\n")
            if signed_out and not gone.is_set():
                with contextlib.suppress(Exception):
                    # No retry hint: reconnecting with this credential is a 401.
                    await self._write(send, b": signed out\n\n")
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            elif stream.dropped and not gone.is_set():
                with contextlib.suppress(Exception):
                    await self._write(send, b": dropped, reconnect with Last-Event-ID\n\n")
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (TimeoutError, OSError):
            pass  # a client that stopped reading, or went away: dropped
        finally:
            watcher.cancel()
            self.hub.close(stream)

    async def _backlog(self, send: Send) -> None:
        """Everything after ``Last-Event-ID``, page by page, before the live ones."""
        stream = self.stream
        while True:
            items = await asyncio.to_thread(
                self.notes.for_user_after,
                stream.user_id,
                stream.after,
                is_admin=stream.is_admin,
                limit=200,
            )
            for item in items:
                await self._write(send, _frame(item))
                stream.after = item.id
            if len(items) < 200:
                return


@router.get(
    "/stream",
    response_class=Response,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"},
        429: {"model": ErrorPublic, "description": "Too many streams open"},
    },
)
async def stream_notifications(
    request: Request,
    user: CurrentUser,
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
    after: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
) -> Any:
    """The caller's new notifications as they arrive (``text/event-stream``). Send
    ``Last-Event-ID`` to resume after the last one received; ``after`` does the same for a
    first connection (a page passes the newest id it was rendered with), and
    ``Last-Event-ID`` wins when both are given (a browser's reconnect)."""
    hub: NotificationHub = request.app.state.hub
    notes = _notes(request)
    settings = request.app.state.settings
    resume_from: int | None = None
    if last_event_id is not None and last_event_id.strip():
        text = last_event_id.strip()
        if not text.isascii() or not text.isdigit() or int(text) > MAX_ID:
            raise _bad_cursor()
        resume_from = int(text)
    elif after is not None:
        resume_from = after
    start = resume_from if resume_from is not None else await asyncio.to_thread(notes.latest_id)
    try:
        stream = hub.open(user.id, user.is_admin, start)
    except TooManyStreams as exc:
        return JSONResponse(
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
            content=ErrorPublic(
                detail=str(exc), error="TooManyStreams", transient=True
            ).model_dump(),
            headers={"Retry-After": "5"},
        )
    return _EventStream(
        hub,
        notes,
        stream,
        resume=resume_from is not None,
        heartbeat=settings.notify_heartbeat_seconds,
        send_timeout=settings.notify_send_timeout_seconds,
        recheck=caller_recheck(request, request.app.state.auth),
    )
