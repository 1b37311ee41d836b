"""Accounts in trouble: the mailboxes a user sees that stopped on a problem they must fix.

The web app shows them in a banner on every signed-in page, so this is one short query over
``accounts`` joined to the visibility rule (:func:`~correspond.store.visibility.
visible_accounts`): no counts, no folders. An account in ``auth_failed`` (the server refused
the credentials) or ``error`` (a permanent problem) is in trouble until the user acts; a
disconnected account (``disconnected_at``) is not: its sync was stopped on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from correspond.store.tables import AccountRow
from correspond.store.visibility import Viewer, viewer_params, visible_accounts

__all__ = ["TROUBLE_STATES", "AccountTrouble", "accounts_in_trouble"]

#: The states that need the user: a worker does not fix them by itself.
TROUBLE_STATES: tuple[str, ...] = ("auth_failed", "error")


@dataclass(frozen=True, slots=True)
class AccountTrouble:
    """One account in trouble: its ``state``, the reason (``detail``, the account's
    ``state_detail``: possibly a server's words, so escape it) and whether the viewer may fix
    it (``manage``)."""

    name: str
    email: str
    state: str
    detail: str
    manage: bool


def accounts_in_trouble(engine: Engine, viewer: Viewer) -> list[AccountTrouble]:
    """The accounts ``viewer`` sees in a :data:`TROUBLE_STATES` state, by name (one query)."""
    visible = visible_accounts(viewer)
    statement = (
        select(
            AccountRow.name,
            AccountRow.email,
            AccountRow.state,
            AccountRow.state_detail,
            visible.c.manage,
        )
        .join(visible, visible.c.account_id == AccountRow.id)
        .where(AccountRow.state.in_(TROUBLE_STATES), AccountRow.disconnected_at.is_(None))
        .order_by(AccountRow.name)
    )
    with Session(engine) as s:
        rows = s.execute(statement, viewer_params(viewer)).all()
    return [
        AccountTrouble(
            name=name,
            email=email,
            state=state,
            detail=detail or "",
            manage=bool(manage),
        )
        for name, email, state, detail, manage in rows
    ]
