"""Who is calling, and whether they may see what the path names.

Every route but ``/health``, ``POST /session`` and the documentation is mounted with
:func:`authorize` (``create_app`` does it per router, so a new router gets it by being
included): the caller must present a bearer token (``Authorization: Bearer ct_...``) or a
session cookie, else 401 and no data. Then each path parameter that names something owned is
checked against the one visibility rule (:mod:`correspond.store.visibility`, asked through
:class:`correspond.auth.AuthService`): an account by ``name``, a message by ``message_id``, a
thread by ``thread_id``, an outbox row (a send) by ``outbox_id`` (its account), a team by
``team_id`` (its members and admins), an identity by ``identity_id`` (its owner alone), a
template by ``template_id`` (its owner, its team's members and admins see it; its owner and
admins change it), a draft by ``draft_id`` (its owner alone); CRM records
(``contact_id``, ``company_id``, ``deal_id``, ``activity_id``) are every signed-in user's.
An account the caller may not see is a 404, as if it did not exist, so names do not leak; one
they see but may not do this with (metadata only, or not theirs to change) is a 403. A path
parameter this module does not know is refused (500): a new kind of id must be given its rule
here first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from correspond.auth import SESSION_COOKIE, AuthService
from correspond.errors import NotFound
from correspond.store.users import Owner, PathRef, User
from correspond.store.visibility import Access

F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "MAX_ID",
    "AuthDep",
    "CurrentUser",
    "Need",
    "ViewAccess",
    "authorize",
    "caller_recheck",
    "current_user",
    "get_auth",
    "needs",
    "view_access",
]

#: The largest id a path or query accepts (a signed 64-bit column); larger ids are a 422.
MAX_ID = 2**63 - 1

# Path parameters checked by the routes themselves: a token, a notification and a webhook are
# looked up among the caller's own, an attachment within its message (whose message_id is
# checked here), a draft's file within its draft (whose draft_id is checked here), a user of a
# team's membership on admin-only routes.
_CHECKED_BY_ROUTE = frozenset(
    {"token_id", "attachment_id", "file_id", "user_id", "notification_id", "webhook_id"}
)
# CRM records are the organisation's: every signed-in user may see them (the route answers 404
# for one that does not exist). ``kind`` names a kind of record to import, nothing owned; a
# ``dismissed_address`` is an address kept off contact auto-creation, the organisation's too.
_SHARED = frozenset(
    {"contact_id", "company_id", "deal_id", "activity_id", "kind", "dismissed_address"}
)


async def get_auth(request: Request) -> AuthService:
    # async: a plain attribute read, not worth a hop to the thread pool
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
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)] = None,
    _cookie: Annotated[str | None, Depends(_COOKIE)] = None,
) -> User:
    """The signed-in user (bearer token first, else the session cookie); 401 otherwise.

    The same statement reads the owner of each thing the path names (``request.state.
    path_owners``, by path parameter) for :func:`authorize` to apply the visibility rule to:
    a request's sign-in and visibility checks are one round trip to the database."""
    # Read here rather than declared (AuthDep): every dependency FastAPI solves costs CPU on
    # every request, and this one is on all of them.
    auth: AuthService = request.app.state.auth
    params = _owned_params(request)
    refs = tuple(ref for _, ref in params)
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("use Authorization: Bearer <token>")
        caller = auth.caller_for_token(token.strip(), refs)
        if caller is None:
            raise _unauthorized("invalid, revoked or disabled token")
    else:
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            raise _unauthorized(
                "authentication required: a bearer token (correspond tokens create) or a "
                "session (POST /session)"
            )
        caller = auth.caller_for_session(cookie, refs)
        if caller is None:
            raise _unauthorized("the session has ended: sign in again")
    request.state.path_owners = {
        param: owner for (param, _), owner in zip(params, caller.owners, strict=True)
    }
    return caller.user


CurrentUser = Annotated[User, Depends(current_user)]


def caller_recheck(request: Request, auth: AuthService) -> Callable[[], User | None]:
    """Ask again who holds the request's credential (for a response that outlives the
    request's own check: an event stream): the user, or None once the token is revoked, the
    session ended or expired, or the user disabled. The same lookup as :func:`current_user`;
    blocking (a database read), so call it from a worker thread."""
    header = request.headers.get("authorization")
    if header is not None:
        token = header.partition(" ")[2].strip()

        def by_token() -> User | None:
            return auth.user_for_token(token)

        return by_token
    cookie = request.cookies.get(SESSION_COOKIE) or ""

    def by_session() -> User | None:
        return auth.user_for_session(cookie)

    return by_session


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


# What each checked path parameter names, and the sentence for one the caller may not see.
_OWNED: dict[str, tuple[Literal["account", "message", "thread", "outbox"], str]] = {
    "name": ("account", "no account named {!r}"),
    "message_id": ("message", "no message with id {}"),
    "thread_id": ("thread", "no thread with id {}"),
    "outbox_id": ("outbox", "no outbox row with id {}"),
}
_FULL = Access(level="full", manage=True)


def _owned_params(request: Request) -> list[tuple[str, PathRef]]:
    """The path parameters that name something owned, as (parameter, what it names); ids the
    route would refuse anyway (422) are left out."""
    found: list[tuple[str, PathRef]] = []
    for param, value in request.path_params.items():
        kind = _OWNED.get(param)
        if kind is None:
            continue
        if kind[0] == "account":
            found.append((param, (kind[0], str(value))))
        elif (number := _id(str(value))) is not None:
            found.append((param, (kind[0], number)))
    return found


def _shared_access(auth: AuthService, user: User, ref: PathRef) -> Access:
    """The rule's answer for something the caller neither owns nor administers (a teammate's
    shared account, a team inbox): NotFound unless they may see it."""
    what, value = ref
    if what == "account":
        return auth.account_access(user, str(value))
    if what == "message":
        return auth.message_access(user, int(value))
    if what == "outbox":
        return auth.outbox_access(user, int(value))
    return auth.thread_access(user, int(value))


async def authorize(request: Request, user: CurrentUser) -> User:
    """Check every owned thing the path names against the visibility rule (404 if hidden,
    403 if seen but the route needs more than the caller's access), and what the route needs
    of the caller (``admin``). The caller's access is left in ``request.state.access`` for
    :func:`view_access`.

    :func:`current_user` read each owned thing's owner in its sign-in statement: an admin, or
    the owner, has full access with no further query (the common case: one round trip for
    sign-in and visibility); anyone else is asked of the rule (:mod:`correspond.store.
    visibility`) in one more statement."""
    auth: AuthService = request.app.state.auth  # not AuthDep: see current_user
    needed = _needed(request)
    owners: dict[str, Owner] = request.state.path_owners
    access = _FULL if user.is_admin else None
    for param, value in request.path_params.items():
        found: Access | None = None
        rule = _OWNED.get(param)
        if rule is not None:
            if param not in owners:
                continue  # an id the route refuses (422)
            exists, owner_id = owners[param]
            if not exists:
                raise NotFound(rule[1].format(value if param == "name" else int(value)))
            if user.is_admin or (owner_id is not None and owner_id == user.id):
                found = _FULL
            else:
                ref: PathRef = (rule[0], str(value) if param == "name" else int(value))
                found = await asyncio.to_thread(_shared_access, auth, user, ref)
        elif param == "team_id":
            if (team_id := _id(str(value))) is not None:
                await asyncio.to_thread(auth.team_visible, user, team_id)
        elif param == "identity_id":
            # An identity is its owner's alone, admins included (store.visibility).
            if (identity_id := _id(str(value))) is not None:
                await asyncio.to_thread(auth.identity_visible, user, identity_id)
        elif param == "draft_id":
            # A draft is its owner's alone, admins included (store.visibility).
            if (draft_id := _id(str(value))) is not None:
                await asyncio.to_thread(auth.draft_visible, user, draft_id)
        elif param == "template_id":
            if (template_id := _id(str(value))) is not None:
                template = await asyncio.to_thread(auth.template_access, user, template_id)
                if needed == "manage" and not template.manage:
                    raise _forbidden("only the template's owner or an admin may change it")
        elif param not in _CHECKED_BY_ROUTE and param not in _SHARED:
            raise RuntimeError(f"path parameter {param!r} has no visibility rule")
        if found is not None:
            _check(found, needed)
            access = found
    if needed == "admin" and not user.is_admin:
        raise _forbidden("only an admin may do this")
    request.state.access = access
    return user


async def view_access(request: Request) -> Access:
    """The caller's access to what the path names, as :func:`authorize` (which ``create_app``
    mounts on every router, and FastAPI solves before the route's own dependencies) left it:
    a route marked ``metadata`` leaves out bodies, snippets and attachments unless it is
    ``full``.

    Not ``Depends(authorize)``: FastAPI walks a cached dependency's whole tree again before it
    looks in its cache (six more dependencies solved per request). Fails closed: where
    authorize did not run, or the path names no account, this is an error (500), never
    access."""
    access: Access | None = getattr(request.state, "access", None)
    if access is None:
        raise RuntimeError("view_access without authorize, or on a route naming no account")
    return access


ViewAccess = Annotated[Access, Depends(view_access)]
