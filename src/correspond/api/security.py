"""Who is calling, and whether they may see what the path names.

Every route but ``/health``, ``POST /session`` and the documentation is mounted with
:func:`authorize` (``create_app`` does it per router, so a new router gets it by being
included): the caller must present a bearer token (``Authorization: Bearer ct_...``) or a
session cookie, else 401 and no data. Then each path parameter that names something owned is
checked against the one visibility rule (:meth:`correspond.auth.AuthService.may_see`): an
account by ``name``, a message by ``message_id``, a thread by ``thread_id``. Another user's
account is a 404, as if it did not exist, so names do not leak. A path parameter this module
does not know is refused (500): a new kind of id must be given its rule here first.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from correspond.auth import SESSION_COOKIE, AuthService
from correspond.store.users import User

__all__ = [
    "MAX_ID",
    "AuthDep",
    "CurrentUser",
    "authorize",
    "current_user",
    "get_auth",
]

#: The largest id a path or query accepts (a signed 64-bit column); larger ids are a 422.
MAX_ID = 2**63 - 1

# Path parameters checked by the routes themselves: a token, a notification and a webhook are
# looked up among the caller's own, an attachment within its message (whose message_id is
# checked here).
_CHECKED_BY_ROUTE = frozenset({"token_id", "attachment_id", "notification_id", "webhook_id"})


def get_auth(request: Request) -> AuthService:
    auth: AuthService = request.app.state.auth
    return auth


AuthDep = Annotated[AuthService, Depends(get_auth)]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


# Declared so the OpenAPI document (and /docs' "Authorize") shows both ways to sign in; the
# header and cookie are read by current_user itself.
_BEARER = HTTPBearer(auto_error=False, description="A personal API token (ct_...)")
_COOKIE = APIKeyCookie(
    name=SESSION_COOKIE, auto_error=False, description="The cookie POST /session sets"
)


def current_user(
    request: Request,
    auth: AuthDep,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)] = None,
    _cookie: Annotated[str | None, Depends(_COOKIE)] = None,
) -> User:
    """The signed-in user (bearer token first, else the session cookie); 401 otherwise."""
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("use Authorization: Bearer <token>")
        user = auth.user_for_token(token.strip())
        if user is None:
            raise _unauthorized("invalid, revoked or disabled token")
        return user
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        user = auth.user_for_session(cookie)
        if user is not None:
            return user
        raise _unauthorized("the session has ended: sign in again")
    raise _unauthorized(
        "authentication required: a bearer token (correspond tokens create) or a session "
        "(POST /session)"
    )


CurrentUser = Annotated[User, Depends(current_user)]


def _id(value: str) -> int | None:
    """A path id as an int, or None when it is not one the route would accept (the route's own
    validation answers 422 then)."""
    if not value.isascii() or not value.isdigit():
        return None
    number = int(value)
    return number if number <= MAX_ID else None


def authorize(request: Request, user: CurrentUser, auth: AuthDep) -> User:
    """Check every owned thing the path names against the visibility rule (404 if hidden)."""
    for param, value in request.path_params.items():
        if param == "name":
            auth.require_account(user, str(value))
        elif param == "message_id":
            if (message_id := _id(str(value))) is not None:
                auth.require_message(user, message_id)
        elif param == "thread_id":
            if (thread_id := _id(str(value))) is not None:
                auth.require_thread(user, thread_id)
        elif param not in _CHECKED_BY_ROUTE:
            raise RuntimeError(f"path parameter {param!r} has no visibility rule")
    return user
