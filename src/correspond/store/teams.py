"""Teams and their members: all their SQL.

A team has a name, unique whatever its letter case (``name_key``); a user may be in several
teams. What a team means for visibility (a team inbox, accounts shared with the owner's teams)
is the rule of :mod:`correspond.store.visibility`; this module only keeps the memberships.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from correspond.errors import ConfigError, NotFound, StoreError
from correspond.store.engine import register_table_modules, unit_of_work
from correspond.store.tables import ACCOUNT_SHARING, AccountRow, TeamMemberRow, TeamRow, UserRow

__all__ = [
    "MAX_TEAM_NAME",
    "Team",
    "TeamExists",
    "TeamMember",
    "TeamStore",
    "check_team_name",
]

MAX_TEAM_NAME = 100


class TeamExists(ConfigError):
    """A team with that name (whatever its letter case) exists."""


def check_team_name(name: str) -> str:
    """``name`` stripped, if it can be a team's name; else :class:`ConfigError` saying why."""
    name = name.strip()
    if not name or len(name) > MAX_TEAM_NAME or any(not c.isprintable() for c in name):
        raise ConfigError(f"a team name is 1 to {MAX_TEAM_NAME} printable characters")
    return name


@dataclass(frozen=True, slots=True)
class TeamMember:
    user_id: int
    email: str
    display_name: str


@dataclass(frozen=True, slots=True)
class Team:
    """A team with its members (by e-mail) and its team inbox accounts (by name)."""

    id: int
    name: str
    created_at: datetime
    members: tuple[TeamMember, ...]
    accounts: tuple[str, ...]


class TeamStore:
    """Teams in the store's database. Thread-safe: one session per call."""

    def __init__(self, engine: Engine) -> None:
        register_table_modules()
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @staticmethod
    def _team(s: Session, row: TeamRow) -> Team:
        members = s.execute(
            select(UserRow.id, UserRow.email, UserRow.display_name)
            .join(TeamMemberRow, TeamMemberRow.user_id == UserRow.id)
            .where(TeamMemberRow.team_id == row.id)
            .order_by(UserRow.email_key)
        ).all()
        accounts = s.scalars(
            select(AccountRow.name).where(AccountRow.team_id == row.id).order_by(AccountRow.name)
        ).all()
        return Team(
            id=row.id,
            name=row.name,
            created_at=row.created_at,
            members=tuple(TeamMember(int(i), e, d) for i, e, d in members),
            accounts=tuple(accounts),
        )

    @staticmethod
    def _row(s: Session, ref: int | str) -> TeamRow:
        """A team by id or by name (any letter case)."""
        if isinstance(ref, int):
            row = s.get(TeamRow, ref)
        else:
            row = s.scalars(
                select(TeamRow).where(TeamRow.name_key == ref.strip().lower())
            ).one_or_none()
            if row is None and ref.isascii() and ref.isdigit():
                row = s.get(TeamRow, int(ref))
        if row is None:
            raise NotFound(f"no team {ref!r}")
        return row

    def create(self, name: str) -> Team:
        name = check_team_name(name)
        try:
            with unit_of_work(self._sessions) as s:
                row = TeamRow(name=name, name_key=name.lower())
                s.add(row)
                s.flush()
                return self._team(s, row)
        except StoreError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                raise TeamExists(f"a team named {name!r} already exists") from exc
            raise

    def get(self, ref: int | str) -> Team:
        with unit_of_work(self._sessions) as s:
            return self._team(s, self._row(s, ref))

    def list(self, *, member_id: int | None = None) -> list[Team]:
        """Every team (only those user ``member_id`` is in, when given), by name."""
        with unit_of_work(self._sessions) as s:
            q = select(TeamRow).order_by(TeamRow.name_key)
            if member_id is not None:
                q = q.join(TeamMemberRow, TeamMemberRow.team_id == TeamRow.id).where(
                    TeamMemberRow.user_id == member_id
                )
            return [self._team(s, r) for r in s.scalars(q).all()]

    def is_member(self, team_id: int, user_id: int) -> bool:
        with unit_of_work(self._sessions) as s:
            return s.get(TeamMemberRow, {"team_id": team_id, "user_id": user_id}) is not None

    def delete(self, ref: int | str) -> Team:
        """Delete a team: its memberships go; its team inboxes become their owners' personal
        accounts again (private unless the owner shared them)."""
        with unit_of_work(self._sessions) as s:
            row = self._row(s, ref)
            team = self._team(s, row)
            s.execute(update(AccountRow).where(AccountRow.team_id == row.id).values(team_id=None))
            s.execute(delete(TeamMemberRow).where(TeamMemberRow.team_id == row.id))
            s.delete(row)
            return team

    def add_member(self, ref: int | str, user_id: int) -> Team:
        """Put user ``user_id`` in the team (already there: nothing changes)."""
        with unit_of_work(self._sessions) as s:
            row = self._row(s, ref)
            if s.get(UserRow, user_id) is None:
                raise NotFound(f"no user with id {user_id}")
            if s.get(TeamMemberRow, {"team_id": row.id, "user_id": user_id}) is None:
                s.add(TeamMemberRow(team_id=row.id, user_id=user_id))
                s.flush()
            return self._team(s, row)

    def remove_member(self, ref: int | str, user_id: int) -> Team:
        """Take user ``user_id`` out of the team; NotFound when they were not in it."""
        with unit_of_work(self._sessions) as s:
            row = self._row(s, ref)
            gone = s.execute(
                delete(TeamMemberRow).where(
                    TeamMemberRow.team_id == row.id, TeamMemberRow.user_id == user_id
                )
            )
            if not gone.rowcount:  # type: ignore[attr-defined]
                raise NotFound(f"user {user_id} is not in team {row.name!r}")
            return self._team(s, row)

    def set_account_sharing(
        self,
        account_name: str,
        *,
        sharing: str | None = None,
        team_id: int | None = None,
        clear_team: bool = False,
    ) -> None:
        """Change who else sees an account: ``sharing`` (private, team, metadata), the team
        inbox ``team_id`` (NotFound for no such team), or none with ``clear_team``. Whether
        the caller may is decided before (:class:`correspond.auth.AuthService`)."""
        if sharing is not None and sharing not in ACCOUNT_SHARING:
            raise ConfigError(f"sharing must be one of {', '.join(ACCOUNT_SHARING)}")
        with unit_of_work(self._sessions) as s:
            row = s.scalars(select(AccountRow).where(AccountRow.name == account_name)).first()
            if row is None:
                raise NotFound(f"no account named {account_name!r}")
            if sharing is not None:
                row.sharing = sharing
            if clear_team:
                row.team_id = None
            elif team_id is not None:
                row.team_id = self._row(s, team_id).id

    def count(self) -> int:
        with unit_of_work(self._sessions) as s:
            return int(s.scalar(select(func.count()).select_from(TeamRow)) or 0)
