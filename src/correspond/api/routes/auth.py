"""``/session`` (sign in with a password, who am I, sign out) and ``/tokens`` (the caller's
personal API tokens)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from correspond.api.auth_schemas import (
    Login,
    NewTokenPublic,
    TokenCreate,
    TokenPublic,
    UserPublic,
    new_token_public,
    token_public,
    user_public,
)
from correspond.api.schemas import ErrorPublic
from correspond.api.security import MAX_ID, AuthDep, CurrentUser, authorize
from correspond.auth import SESSION_COOKIE, LoginThrottled
from correspond.errors import ConfigError, NotFound
from correspond.store.users import User

__all__ = ["session_router", "tokens_router"]

session_router = APIRouter(prefix="/session", tags=["session"])
tokens_router = APIRouter(prefix="/tokens", tags=["tokens"], dependencies=[Depends(authorize)])

_UNAUTHORIZED: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorPublic, "description": "Not signed in"}
}


def _client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@session_router.post(
    "",
    response_model=UserPublic,
    responses={
        401: {"model": ErrorPublic, "description": "Unknown user or wrong password"},
        429: {"model": ErrorPublic, "description": "Too many failed sign-ins; see Retry-After"},
    },
)
async def sign_in(body: Login, request: Request, auth: AuthDep) -> Response:
    """Sign in with e-mail and password: sets the session cookie (HttpOnly, SameSite=Lax,
    Secure over HTTPS). Failed attempts are limited per user and per client address."""
    password = body.password.get_secret_value()
    try:
        user = await asyncio.to_thread(
            auth.authenticate_password, body.email, password, _client_address(request)
        )
    except LoginThrottled as exc:
        return JSONResponse(
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
            content=ErrorPublic(
                detail=str(exc), error="TooManyAttempts", transient=True
            ).model_dump(),
            headers={"Retry-After": str(exc.retry_after)},
        )
    except NotFound as exc:
        return JSONResponse(
            status_code=status.HTTP_401_UNAUTHORIZED,
            content=ErrorPublic(
                detail=str(exc), error="NotAuthenticated", transient=False
            ).model_dump(),
        )
    value = await asyncio.to_thread(auth.start_session, user)
    response = JSONResponse(content=user_public(user).model_dump())
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=auth.settings.session_ttl_seconds,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@session_router.get("", response_model=UserPublic, responses=_UNAUTHORIZED)
def who_am_i(user: Annotated[User, Depends(authorize)]) -> UserPublic:
    """The signed-in user (by session cookie or bearer token)."""
    return user_public(user)


@session_router.delete("", status_code=status.HTTP_204_NO_CONTENT, responses=_UNAUTHORIZED)
def sign_out(
    request: Request, auth: AuthDep, _user: Annotated[User, Depends(authorize)]
) -> Response:
    """End this session (its cookie is cleared and no longer accepted)."""
    value = request.cookies.get(SESSION_COOKIE)
    if value:
        auth.end_session(value)
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")
    return response


@tokens_router.get("", response_model=list[TokenPublic], responses=_UNAUTHORIZED)
def list_tokens(user: CurrentUser, auth: AuthDep) -> list[TokenPublic]:
    """The caller's API tokens (prefix, name, created, last used, revoked), never the tokens."""
    return [token_public(t) for t in auth.users.list_tokens(user.id)]


@tokens_router.post(
    "",
    response_model=NewTokenPublic,
    status_code=status.HTTP_201_CREATED,
    responses=_UNAUTHORIZED,
)
def create_token(body: TokenCreate, user: CurrentUser, auth: AuthDep) -> NewTokenPublic:
    """A new personal API token for the caller. ``token`` is in this answer only."""
    try:
        created = auth.create_token(user, body.name)
    except ConfigError as exc:
        error = {"type": "value_error", "loc": ("body", "name"), "msg": str(exc)}
        raise RequestValidationError([error]) from exc
    return new_token_public(created)


@tokens_router.delete(
    "/{token_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_UNAUTHORIZED
)
def revoke_token(
    token_id: Annotated[int, Path(ge=1, le=MAX_ID)], user: CurrentUser, auth: AuthDep
) -> Response:
    """Revoke one of the caller's tokens (404 for anyone else's)."""
    auth.users.revoke_token(token_id, user_id=user.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
