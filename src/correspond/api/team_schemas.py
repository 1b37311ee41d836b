"""Schemas of ``/teams`` and ``/me/preferences``."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from correspond.store.teams import MAX_TEAM_NAME, Team
from correspond.store.users import User

__all__ = [
    "PreferencesPublic",
    "PreferencesUpdate",
    "TeamCreate",
    "TeamMemberPublic",
    "TeamPublic",
    "preferences_public",
    "team_public",
]

ThreadOrder = Literal["oldest_first", "newest_first"]


class TeamCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1,
        max_length=MAX_TEAM_NAME,
        description="Unique whatever its letter case",
    )


class TeamMemberPublic(BaseModel):
    id: int
    email: str
    display_name: str


class TeamPublic(BaseModel):
    id: int
    name: str
    created_at: datetime
    members: list[TeamMemberPublic]
    accounts: list[str] = Field(description="The team inboxes: accounts every member sees")


def team_public(team: Team) -> TeamPublic:
    return TeamPublic(
        id=team.id,
        name=team.name,
        created_at=team.created_at,
        members=[
            TeamMemberPublic(id=m.user_id, email=m.email, display_name=m.display_name)
            for m in team.members
        ],
        accounts=list(team.accounts),
    )


class PreferencesPublic(BaseModel):
    thread_order: ThreadOrder = Field(
        description="How GET /threads/{id} orders messages: oldest_first (newest at the "
        "bottom) or newest_first (newest on top)"
    )


class PreferencesUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    thread_order: ThreadOrder | None = None


def preferences_public(user: User) -> PreferencesPublic:
    return PreferencesPublic(thread_order=user.thread_order)  # type: ignore[arg-type]
