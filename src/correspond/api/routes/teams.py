"""``/teams`` (admins manage teams and their members; a member reads the teams they are in)
and ``/me/preferences`` (the caller's own settings, saved at once)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from correspond.api.schemas import ErrorPublic
from correspond.api.security import MAX_ID, AuthDep, CurrentUser, needs
from correspond.api.team_schemas import (
    PreferencesPublic,
    PreferencesUpdate,
    TeamCreate,
    TeamPublic,
    preferences_public,
    team_public,
)
from correspond.errors import ConfigError
from correspond.store.teams import TeamExists

__all__ = ["me_router", "router"]

router = APIRouter(
    prefix="/teams",
    tags=["teams"],
    responses={
        403: {"model": ErrorPublic, "description": "Only an admin may do this"},
        404: {"model": ErrorPublic, "description": "No such team (or not one of the caller's)"},
    },
)
me_router = APIRouter(prefix="/me", tags=["me"])

TeamId = Annotated[int, Path(ge=1, le=MAX_ID)]
UserId = Annotated[int, Path(ge=1, le=MAX_ID)]


@router.get("", response_model=list[TeamPublic])
def list_teams(user: CurrentUser, auth: AuthDep) -> list[TeamPublic]:
    """Every team (an admin), or the teams the caller is in."""
    teams = auth.teams.list(member_id=None if user.is_admin else user.id)
    return [team_public(t) for t in teams]


@router.post(
    "",
    response_model=TeamPublic,
    status_code=status.HTTP_201_CREATED,
    responses={409: {"model": ErrorPublic, "description": "A team with that name exists"}},
)
@needs("admin")
def create_team(body: TeamCreate, auth: AuthDep) -> TeamPublic | JSONResponse:
    """A new team, without members yet (admins only)."""
    try:
        return team_public(auth.teams.create(body.name))
    except TeamExists as exc:
        return JSONResponse(
            status_code=status.HTTP_409_CONFLICT,
            content=ErrorPublic(detail=str(exc), error="Conflict", transient=False).model_dump(),
        )
    except ConfigError as exc:
        error = {"type": "value_error", "loc": ("body", "name"), "msg": str(exc)}
        raise RequestValidationError([error]) from exc


@router.get("/{team_id}", response_model=TeamPublic)
def get_team(team_id: TeamId, auth: AuthDep) -> TeamPublic:
    """A team with its members and team inboxes (an admin, or a member of it)."""
    return team_public(auth.teams.get(team_id))


@router.delete("/{team_id}", status_code=status.HTTP_204_NO_CONTENT)
@needs("admin")
def delete_team(team_id: TeamId, auth: AuthDep) -> Response:
    """Delete a team; its team inboxes become their owners' personal accounts again."""
    auth.teams.delete(team_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put("/{team_id}/members/{user_id}", response_model=TeamPublic)
@needs("admin")
def add_member(team_id: TeamId, user_id: UserId, auth: AuthDep) -> TeamPublic:
    """Put a user in the team (already in it: no change)."""
    return team_public(auth.teams.add_member(team_id, user_id))


@router.delete("/{team_id}/members/{user_id}", response_model=TeamPublic)
@needs("admin")
def remove_member(team_id: TeamId, user_id: UserId, auth: AuthDep) -> TeamPublic:
    """Take a user out of the team: they stop seeing its inboxes and what its people share."""
    return team_public(auth.teams.remove_member(team_id, user_id))


@me_router.get("/preferences", response_model=PreferencesPublic)
def get_preferences(user: CurrentUser) -> PreferencesPublic:
    return preferences_public(user)


@me_router.put("/preferences", response_model=PreferencesPublic)
def put_preferences(body: PreferencesUpdate, user: CurrentUser, auth: AuthDep) -> PreferencesPublic:
    """Change the caller's preferences (only the fields sent), saved at once."""
    if body.thread_order is not None:
        user = auth.users.set_thread_order(user.id, body.thread_order)
    return preferences_public(user)
