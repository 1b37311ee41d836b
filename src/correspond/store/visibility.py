"""Who sees which account, and how much of it: the one visibility rule, as SQL.

:func:`visible_accounts` is a subquery of ``(account_id, access, manage)`` rows, one per
account the user may see; every read that names an account, a message or a thread joins to it
(:class:`~correspond.store.users.UserStore`'s ``access_to_*`` and the ``viewer`` of
:meth:`~correspond.store.repository.Store.list_accounts`), so nothing outside it is ever
found. The rule:

- a disabled user sees nothing; an admin sees every account, in full, and manages it;
- a member sees in full and manages the accounts they own;
- a member sees in full every team inbox (``accounts.team_id``) of a team they are in;
- a member sees the personal accounts of the people they share a team with: in full when the
  owner shares them with ``team``, metadata only (participants, subject, date, folders and
  flags; never bodies, snippets, attachments or raw) with ``metadata``, not at all when
  ``private`` (the default). The most generous path wins.

``manage`` (change, delete, pause, resume, test, refresh or choose folders) is the owner's or an
admin's alone, team inboxes included: seeing a team's mail does not let every member stop
its sync or move its credentials.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Subquery, and_, case, false, literal, or_, select, true

from correspond.store.tables import AccountRow, TeamMemberRow

__all__ = ["ACCESS_LEVELS", "Access", "Viewer", "visible_accounts"]

#: What a viewer may read of an account: everything, or only its metadata.
ACCESS_LEVELS = ("full", "metadata")


class Viewer(Protocol):
    """Who is looking (a :class:`~correspond.store.users.User`)."""

    @property
    def id(self) -> int: ...
    @property
    def is_admin(self) -> bool: ...
    @property
    def disabled(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Access:
    """A viewer's access to one account: ``level`` full or metadata; ``manage`` whether they
    may change it (owner or admin)."""

    level: str
    manage: bool

    @property
    def full(self) -> bool:
        return self.level == "full"


def access_of(level: Any, manage: Any) -> Access:
    """An :class:`Access` from a row of :func:`visible_accounts` (SQLite gives 0/1)."""
    return Access(level=str(level), manage=bool(manage))


def visible_accounts(viewer: Viewer) -> Subquery:
    """The accounts ``viewer`` may see: ``account_id``, ``access`` (full | metadata) and
    ``manage`` (bool), one row per account."""
    if viewer.disabled:
        return (
            select(
                AccountRow.id.label("account_id"),
                literal("metadata").label("access"),
                false().label("manage"),
            )
            .where(false())
            .subquery("visible")
        )
    if viewer.is_admin:
        return select(
            AccountRow.id.label("account_id"),
            literal("full").label("access"),
            true().label("manage"),
        ).subquery("visible")
    my_teams = select(TeamMemberRow.team_id).where(TeamMemberRow.user_id == viewer.id)
    teammates = select(TeamMemberRow.user_id).where(TeamMemberRow.team_id.in_(my_teams))
    own = AccountRow.owner_id == viewer.id
    team_inbox = AccountRow.team_id.in_(my_teams)
    shared_in_full = and_(AccountRow.sharing == "team", AccountRow.owner_id.in_(teammates))
    shared_metadata = and_(AccountRow.sharing == "metadata", AccountRow.owner_id.in_(teammates))
    full = or_(own, team_inbox, shared_in_full)
    return (
        select(
            AccountRow.id.label("account_id"),
            case((full, literal("full")), else_=literal("metadata")).label("access"),
            case((own, true()), else_=false()).label("manage"),
        )
        .where(or_(full, shared_metadata))
        .subquery("visible")
    )
