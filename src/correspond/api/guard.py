"""The API's perimeter, before any route runs (a pure ASGI middleware).

- **Host**: only the configured host names (``Settings.allowed_hosts``: loopback names by
  default, plus ``serve --host``) are answered; any other ``Host`` header gets 400. A web page
  on another site cannot reach the API through DNS rebinding: the browser sends that site's
  name.
- **Origin**: a state-changing request (any method but GET, HEAD, OPTIONS) that carries an
  ``Origin`` other than the API's own or one of ``Settings.allowed_origins`` gets 403, so
  another site cannot make a signed-in browser change anything. There is no CORS: no
  ``Access-Control-Allow-*`` header is ever sent.
- **Size**: a request body over ``Settings.max_request_bytes`` gets 413, whether its
  ``Content-Length`` says so or the streamed bytes add up to more.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RequestGuard", "host_name"]

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def host_name(host: str) -> str:
    """The name part of a ``Host`` header (no port, no IPv6 brackets), lower-cased."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


class RequestGuard:
    """Host, Origin and body-size checks in front of ``app``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_hosts: Iterable[str],
        allowed_origins: Iterable[str] = (),
        max_body_bytes: int,
    ) -> None:
        self.app = app
        self.allowed_hosts = frozenset(host_name(h) for h in allowed_hosts)
        self.allowed_origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if not host or host_name(host) not in self.allowed_hosts:
            await _reply(send, 400, "invalid host header: this name is not configured")
            return
        method = scope.get("method", "GET")
        origin = headers.get("origin")
        if method not in _SAFE_METHODS and origin is not None:
            own = f"{scope.get('scheme', 'http')}://{host}".lower()
            if origin.rstrip("/").lower() not in self.allowed_origins | {own}:
                await _reply(send, 403, "cross-site request refused (Origin not allowed)")
                return
        length = headers.get("content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_body_bytes
            except ValueError:
                await _reply(send, 400, "invalid Content-Length")
                return
            if too_big:
                await _reply(send, 413, f"request body over {self.max_body_bytes} bytes")
                return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise HTTPException(413, f"request body over {self.max_body_bytes} bytes")
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except HTTPException as exc:
            # Raised by counting_receive where no route turned it into a response.
            if exc.status_code != 413 or started:
                raise
            await _reply(send, 413, str(exc.detail))


async def _reply(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail, "error": "RequestRefused", "transient": False}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
