"""Which mail a user may see: the one query-level rule that every timeline query applies.

Today's rule (docs/ARCHITECTURE.md, "Visibility, one rule"): an admin sees every account, a
member only the accounts they own. Timelines (and any later cross-account message query) call
:func:`visible_message_filter` and nothing else, so a new rule (teams, shared and team-inbox
accounts) replaces this one function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, select, true

from correspond.store.tables import AccountRow

__all__ = ["Viewer", "visible_message_filter"]


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is asking: a user id and whether they are an admin."""

    user_id: int
    is_admin: bool


def visible_message_filter(viewer: Viewer, account_id: Any) -> ColumnElement[bool]:
    """A WHERE clause: the row's account (``account_id``, a column) is one ``viewer`` may see."""
    if viewer.is_admin:
        return true()
    owned = select(AccountRow.id).where(AccountRow.owner_id == viewer.user_id)
    return account_id.in_(owned)  # type: ignore[no-any-return]
