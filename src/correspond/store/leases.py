"""Which worker syncs which account: leases, guarded state writes, pause and resume.

DESIGN.md "Scale-out": workers claim accounts with a lease (``accounts.lease_owner``,
``accounts.lease_expires_at``), renew it while they run, and give it up on shutdown; a dead
worker's accounts are taken over once its lease expires. Exactly one worker syncs an account at
a time because every claim is a single ``UPDATE ... WHERE lease expired or mine``:

- on PostgreSQL the candidate rows are picked with ``FOR UPDATE SKIP LOCKED``, so two workers
  claiming at the same moment never wait on each other and never take the same row (a row
  another transaction has just claimed is either skipped while locked, or re-checked against
  the ``WHERE`` after its commit and no longer matches);
- on SQLite writes are serialised by the database lock, which gives the same guarantee.

Times are the caller's clock (UTC), written through :class:`~correspond.store.tables.UtcDateTime`
so both backends compare them alike.
"""

from __future__ import annotations

from collections.abc import Collection
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, Table, and_, case, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from correspond.errors import ConfigError, NotFound
from correspond.store.engine import unit_of_work
from correspond.store.records import Account, account_from_row
from correspond.store.tables import ACCOUNT_STATES, AccountRow, utcnow

__all__ = [
    "RESUMABLE_STATES",
    "RUNNABLE_STATES",
    "AccountLeases",
    "LeasedAccount",
]

#: States a worker keeps an account running in. ``disconnected`` and ``auth_failed`` are
#: included: the engine retries both with backoff (a refused login no faster than its backoff
#: allows), so a worker that dies during a backoff must leave the account for another one to
#: pick up. ``paused`` (the user's choice) and ``error`` (a permanent problem: the user must act,
#: then resume) are not run.
RUNNABLE_STATES: tuple[str, ...] = (
    "connecting",
    "backfilling",
    "live",
    "disconnected",
    "auth_failed",
)

_ACCOUNTS: Table = AccountRow.__table__  # type: ignore[assignment]

#: States ``resume`` moves back to ``connecting`` (a failed sign-in too: the user has acted).
RESUMABLE_STATES: tuple[str, ...] = ("paused", "auth_failed", "error")


@dataclass(frozen=True, slots=True)
class LeasedAccount:
    """An account a worker holds, until when, and when its row was last edited.

    ``updated_at`` moves with every change a person makes (settings, secret, folder selection,
    resume, a connection test's verdict), not with the engine's own state writes or lease
    renewals: the runner compares it between rounds to tell a running session that its
    account changed, one query for all accounts instead of a timer per account.
    """

    id: int
    name: str
    expires_at: datetime
    updated_at: datetime | None = None


class AccountLeases:
    """Lease and run-state SQL on ``accounts``. Thread-safe: one session per call."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def _tx(self) -> AbstractContextManager[Session]:
        return unit_of_work(self._sessions)

    @property
    def _postgres(self) -> bool:
        return self._engine.dialect.name == "postgresql"

    # -- leases ----------------------------------------------------------------------------

    def claim(
        self,
        owner: str,
        ttl_seconds: float,
        *,
        names: Collection[str] | None = None,
        limit: int | None = None,
        now: datetime | None = None,
    ) -> list[LeasedAccount]:
        """Claim (or renew) every runnable account whose lease is free, expired or ``owner``'s.

        Returns every account ``owner`` holds after the claim, by name. ``names`` restricts the
        claim to those accounts (a single-account ``correspond sync``); ``limit`` caps how many
        accounts one worker takes in one call (accounts it already holds count too), so that
        several workers share the load.
        """
        now = now or utcnow()
        expires = now + timedelta(seconds=ttl_seconds)
        t = _ACCOUNTS
        free = or_(
            t.c.lease_owner.is_(None),
            t.c.lease_owner == owner,
            t.c.lease_expires_at.is_(None),
            t.c.lease_expires_at < now,
        )
        conditions = [t.c.state.in_(RUNNABLE_STATES), free]
        if names is not None:
            if not names:
                return []
            conditions.append(t.c.name.in_(list(names)))
        # Mine first, so that a limit never drops an account this worker is running.
        candidates = (
            select(t.c.id)
            .where(and_(*conditions))
            # (a CASE, not ``lease_owner = owner DESC``: that is NULL for free accounts, and
            # PostgreSQL sorts NULLs first in descending order)
            .order_by(case((t.c.lease_owner == owner, 0), else_=1), t.c.id)
        )
        if limit is not None:
            candidates = candidates.limit(limit)
        if self._postgres:
            candidates = candidates.with_for_update(skip_locked=True)
        with self._tx() as s:
            ids = list(s.scalars(candidates))
            if ids:
                # The WHERE is repeated on the UPDATE itself: on SQLite this is the check that
                # counts (under the write lock), on PostgreSQL a no-op on rows already locked.
                s.execute(
                    update(t)
                    .where(t.c.id.in_(ids), and_(*conditions))
                    .values(
                        lease_owner=owner,
                        lease_expires_at=expires,
                        # A renewal is not an edit of the account.
                        updated_at=t.c.updated_at,
                    )
                )
            held = select(t.c.id, t.c.name, t.c.lease_expires_at, t.c.updated_at).where(
                t.c.lease_owner == owner, t.c.state.in_(RUNNABLE_STATES)
            )
            if names is not None:
                held = held.where(t.c.name.in_(list(names)))
            rows = s.execute(held.order_by(t.c.name)).all()
        return [
            LeasedAccount(
                id=int(r.id),
                name=str(r.name),
                expires_at=r.lease_expires_at,
                updated_at=r.updated_at,
            )
            for r in rows
            if r.lease_expires_at is not None and r.lease_expires_at >= now
        ]

    def release(self, owner: str, names: Collection[str] | None = None) -> int:
        """Give up ``owner``'s leases (all of them, or those of ``names``); returns how many."""
        t = _ACCOUNTS
        q = update(t).where(t.c.lease_owner == owner)
        if names is not None:
            if not names:
                return 0
            q = q.where(t.c.name.in_(list(names)))
        with self._tx() as s:
            result = s.execute(
                q.values(lease_owner=None, lease_expires_at=None, updated_at=t.c.updated_at)
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def holder(self, name: str, *, now: datetime | None = None) -> tuple[str, datetime] | None:
        """Who holds ``name``'s lease and until when; None when it is free or expired."""
        now = now or utcnow()
        with self._tx() as s:
            row = s.execute(
                select(AccountRow.lease_owner, AccountRow.lease_expires_at).where(
                    AccountRow.name == name
                )
            ).one_or_none()
        if row is None:
            raise NotFound(f"no account named {name!r}")
        owner, expires = row
        if owner is None or expires is None or expires < now:
            return None
        return str(owner), expires

    # -- state -----------------------------------------------------------------------------

    def set_state_if_held(
        self,
        name: str,
        owner: str,
        state: str,
        detail: str = "",
        *,
        connected_at: datetime | None = None,
        last_sync_at: datetime | None = None,
    ) -> bool:
        """Record a sync state, but only while ``owner`` holds the lease and the account is in a
        runnable state.

        This is what keeps a user's ``pause`` from being overwritten by an engine that finishes a
        pass a moment later, and a worker that lost its lease from writing over the new
        holder's state. False when nothing was written.
        """
        if state not in ACCOUNT_STATES:
            raise ConfigError(f"unknown account state {state!r}")
        # The engine's own state writes are not edits of the account: ``updated_at`` stays, so
        # the runner's change check (:attr:`LeasedAccount.updated_at`) does not wake the
        # session for what it wrote itself.
        values: dict[str, object] = {
            "state": state,
            "state_detail": detail,
            "updated_at": _ACCOUNTS.c.updated_at,
        }
        if connected_at is not None:
            values["connected_at"] = connected_at
        if last_sync_at is not None:
            values["last_sync_at"] = last_sync_at
        t = _ACCOUNTS
        with self._tx() as s:
            result = s.execute(
                update(t)
                .where(
                    t.c.name == name,
                    t.c.lease_owner == owner,
                    t.c.state.in_(RUNNABLE_STATES),
                )
                .values(**values)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def pause(self, name: str, detail: str = "Paused by the user.") -> Account:
        """Stop syncing ``name``: state ``paused``. The worker holding it stops at its next
        lease round and gives the lease up."""
        with self._tx() as s:
            row = self._row(s, name)
            row.state = "paused"
            row.state_detail = detail
            s.flush()
            return account_from_row(row)

    def resume(self, name: str, detail: str = "Resumed; waiting for a sync worker.") -> Account:
        """Sync ``name`` again: a paused (or failed: the user has acted) account goes back to
        ``connecting`` and the next worker round picks it up. A running account is unchanged."""
        with self._tx() as s:
            row = self._row(s, name)
            if row.state in RESUMABLE_STATES:
                row.state = "connecting"
                row.state_detail = detail
                s.flush()
            return account_from_row(row)

    @staticmethod
    def _row(s: Session, name: str) -> AccountRow:
        row = s.scalars(select(AccountRow).where(AccountRow.name == name)).one_or_none()
        if row is None:
            raise NotFound(f"no account named {name!r}")
        return row
