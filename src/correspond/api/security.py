"""Who is calling, and whether they may see what the path names.

Every route but ``/health``, ``POST /session`` and the documentation is mounted with
:func:`authorize` (``create_app`` does it per router, so a new router gets it by being
included): the caller must present a bearer token (``Authorization: Bearer ct_...``) or a
session cookie, else 401 and no data. Then each path parameter that names something owned is
checked against the one visibility rule (:mod:`correspond.store.visibility`, asked through
:class:`correspond.auth.AuthService`): an account by ``name``, a message by ``message_id``, a
thread by ``thread_id``, a team by ``team_id`` (its members and admins). An account the caller
may not see is a 404, as if it did not exist, so names do not leak; one they see but may not
do this with (metadata only, or not theirs to change) is a 403. A path parameter this module
does not know is refused (500): a new kind of id must be given its rule here first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from correspond.auth import SESSION_COOKIE, AuthService
from correspond.store.users import User
from correspond.store.visibility import Access

F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "MAX_ID",
    "AuthDep",
    "CurrentUser",
    "Need",
    "ViewAccess",
    "authorize",
    "current_user",
    "get_auth",
    "needs",
    "view_access",
]

#: The largest id a path or query accepts (a signed 64-bit column); larger ids are a 422.
MAX_ID = 2**63 - 1

# Path parameters checked by the routes themselves: a token is looked up among the caller's
# own, an attachment within its message (whose message_id is checked here), a user of a
# team's membership on admin-only routes.
_CHECKED_BY_ROUTE = frozenset({"token_id", "attachment_id", "user_id"})


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


#: What a route needs of what its path names: ``metadata`` (it shows no bodies to a
#: metadata-only viewer), ``full`` (it shows bodies, attachments or raw mail), ``manage`` (it
#: changes the account: owner or admin) or ``admin`` (admins only, e.g. managing teams).
Need = Literal["metadata", "full", "manage", "admin"]
_NEED_ATTR = "correspond_needs"


def needs(level: Need) -> Callable[[F], F]:
    """Mark a route with what it needs; unmarked, a GET needs ``full`` and anything else
    ``manage`` (fails closed: a new route that shows less must say so)."""

    def mark(endpoint: F) -> F:
        setattr(endpoint, _NEED_ATTR, level)
        return endpoint

    return mark


def _needed(request: Request) -> Need:
    route = request.scope.get("route")
    level: Need | None = getattr(getattr(route, "endpoint", None), _NEED_ATTR, None)
    if level is not None:
        return level
    return "full" if request.method in ("GET", "HEAD") else "manage"


def _forbidden(detail: str) -> HTTPException:
    return HTTPException(403, detail=detail)


def _check(access: Access, needed: Need) -> None:
    if needed == "manage" and not access.manage:
        raise _forbidden("only the account's owner or an admin may do this")
    if needed == "full" and not access.full:
        raise _forbidden("this account is shared with you as metadata only: no bodies")


def authorize(request: Request, user: CurrentUser, auth: AuthDep) -> User:
    """Check every owned thing the path names against the visibility rule (404 if hidden,
    403 if seen but the route needs more than the caller's access), and what the route needs
    of the caller (``admin``). The caller's access is left in ``request.state.access`` for
    :func:`view_access`."""
    needed = _needed(request)
    access = Access(level="full", manage=True) if user.is_admin else None
    for param, value in request.path_params.items():
        found: Access | None = None
        if param == "name":
            found = auth.account_access(user, str(value))
        elif param == "message_id":
            if (message_id := _id(str(value))) is not None:
                found = auth.message_access(user, message_id)
        elif param == "thread_id":
            if (thread_id := _id(str(value))) is not None:
                found = auth.thread_access(user, thread_id)
        elif param == "team_id":
            if (team_id := _id(str(value))) is not None:
                auth.team_visible(user, team_id)
        elif param not in _CHECKED_BY_ROUTE:
            raise RuntimeError(f"path parameter {param!r} has no visibility rule")
        if found is not None:
            _check(found, needed)
            access = found
    if needed == "admin" and not user.is_admin:
        raise _forbidden("only an admin may do this")
    request.state.access = access
    return user


def view_access(request: Request, _user: Annotated[User, Depends(authorize)]) -> Access:
    """The caller's access to what the path names (after :func:`authorize`): a route marked
    ``metadata`` leaves out bodies, snippets and attachments unless it is ``full``."""
    access: Access | None = getattr(request.state, "access", None)
    if access is None:
        raise RuntimeError("view_access on a route whose path names no account")
    return access


ViewAccess = Annotated[Access, Depends(view_access)]
