"""Which accounts a user may see, as SQL: the one query-level visibility rule for lists.

:func:`visible_account_ids` is what every query over many accounts (search today) filters by,
so a change of the rule (teams, shared accounts) is made here once. It says the same as
:meth:`correspond.auth.AuthService.may_see` and the ``owner_id`` filter of
:meth:`~correspond.store.repository.Store.list_accounts`: an admin sees every account, a member
the accounts they own.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, Select, select, true
from sqlalchemy.orm import InstrumentedAttribute

from correspond.store.tables import AccountRow

__all__ = ["Viewer", "visible_account_ids", "visible_accounts_clause"]


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is asking: a user's id and whether they are an admin (the CLI, run by the machine's
    operator, asks as an admin)."""

    user_id: int | None
    is_admin: bool


def visible_account_ids(viewer: Viewer) -> Select[tuple[int]]:
    """The ids of the accounts ``viewer`` may see (a subquery to filter by)."""
    query = select(AccountRow.id)
    if not viewer.is_admin:
        query = query.where(AccountRow.owner_id == viewer.user_id)
    return query


def visible_accounts_clause(
    viewer: Viewer, account_id: ColumnElement[int] | InstrumentedAttribute[int]
) -> ColumnElement[bool]:
    """A condition on ``account_id`` (a column of the query) that holds for the accounts
    ``viewer`` may see; no condition at all for an admin (so no subquery to plan)."""
    if viewer.is_admin:
        return true()
    return account_id.in_(visible_account_ids(viewer))
