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

A lease names its holder: ``host:pid:random``, and on Linux ``/boot.pidns.start`` after it
(the kernel's boot id, the pid namespace and the process's start time in clock ticks). A holder
on this host, in this pid namespace, whose process is gone (or whose pid now belongs to another
process: the start time differs) cannot renew, so :meth:`AccountLeases.claim` takes its
accounts at once instead of waiting for the lease to expire: a ``correspond sync`` restarted
after a SIGKILL does not wait a minute. A holder elsewhere (another host, another container's
pid namespace, an owner without the suffix) is only ever taken over when its lease expires.

Times are the caller's clock (UTC), written through :class:`~correspond.store.tables.UtcDateTime`
so both backends compare them alike.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Collection
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, Table, and_, case, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from correspond.errors import ConfigError, Conflict, NotFound
from correspond.store.engine import unit_of_work
from correspond.store.records import Account, account_from_row
from correspond.store.tables import ACCOUNT_STATES, AccountRow, utcnow
from correspond.store.wakeups import announce_account_change

__all__ = [
    "RESUMABLE_STATES",
    "RUNNABLE_STATES",
    "AccountLeases",
    "LeasedAccount",
    "holder_is_gone",
    "observed_state",
    "process_identity",
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


def _start_ticks(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks after boot, /proc/PID/stat field 22);
    None when there is no such process (or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or parentheses.
    fields = data[data.rfind(b")") + 2 :].split()
    return fields[19].decode() if len(fields) > 19 else None


@functools.cache
def _host_identity() -> tuple[str, str] | None:
    """This machine's boot id (first 8 characters) and this process's pid namespace."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            boot = fh.read().strip().replace("-", "")[:8]
        pidns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return None
    return boot, pidns


def process_identity(pid: int | None = None) -> str:
    """``boot.pidns.start`` for process ``pid`` (default: this one), the suffix a lease owner
    carries so that a dead holder on this host can be recognised; "" where /proc is missing."""
    host = _host_identity()
    start = _start_ticks(os.getpid() if pid is None else pid)
    if host is None or start is None:
        return ""
    return f"{host[0]}.{host[1]}.{start}"


def holder_is_gone(owner: str) -> bool:
    """Whether lease owner ``owner`` is a process of this host and pid namespace that no
    longer runs (its pid is free, or reused by a process that started at another time).
    False whenever that cannot be known for sure: the lease then expires as usual."""
    name, _, ident = owner.partition("/")
    parts = name.split(":")
    here = _host_identity()
    if not ident or len(parts) < 3 or here is None:
        return False
    try:
        boot, pidns, start = ident.split(".")
        pid = int(parts[-2])
    except ValueError:
        return False
    if ":".join(parts[:-2]) != socket.gethostname() or (boot, pidns) != here or pid <= 0:
        return False
    return _start_ticks(pid) != start


#: States that claim a sync process is connected right now.
_ACTIVE_STATES = ("live", "backfilling")


def observed_state(
    state: str,
    detail: str,
    *,
    lease_owner: str | None,
    lease_expires_at: datetime | None,
    last_sync_at: datetime | None,
    now: datetime | None = None,
) -> tuple[str, str]:
    """The state to show: a ``live`` or ``backfilling`` account whose lease nobody holds any
    more (expired, or its holder is a dead process of this host: a SIGKILLed ``sync``) is not
    being watched, whatever its last written state says; it shows as waiting for a sync
    process, with when it last synced."""
    if state not in _ACTIVE_STATES:
        return state, detail
    now = now or utcnow()
    held = (
        lease_owner is not None
        and lease_expires_at is not None
        and lease_expires_at >= now
        and not holder_is_gone(lease_owner)
    )
    if held:
        return state, detail
    when = f"{last_sync_at:%Y-%m-%d %H:%M:%S} UTC" if last_sync_at is not None else "never"
    return (
        "connecting",
        f"Not watching for new mail: the sync process that held it stopped without handing "
        f"it over (last synced: {when}); it resumes when a sync process runs.",
    )


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
        if names is not None and not names:
            return []
        with self._tx() as s:
            # One transaction a round: the dead same-host holders, the claim, what is held.
            gone = self._gone_holders(s, owner, names, now)
            return self._claim(
                s, owner, now + timedelta(seconds=ttl_seconds), gone, names, limit, now
            )

    def _claim(
        self,
        s: Session,
        owner: str,
        expires: datetime,
        gone: list[str],
        names: Collection[str] | None,
        limit: int | None,
        now: datetime,
    ) -> list[LeasedAccount]:
        t = _ACCOUNTS
        free = or_(
            t.c.lease_owner.is_(None),
            t.c.lease_owner == owner,
            t.c.lease_expires_at.is_(None),
            t.c.lease_expires_at < now,
            *([t.c.lease_owner.in_(gone)] if gone else []),
        )
        conditions = [t.c.state.in_(RUNNABLE_STATES), free]
        if names is not None:
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

    @staticmethod
    def _gone_holders(
        s: Session, owner: str, names: Collection[str] | None, now: datetime
    ) -> list[str]:
        """Holders of unexpired leases on runnable accounts (of ``names``) that are dead
        processes of this host (:func:`holder_is_gone`)."""
        t = _ACCOUNTS
        q = select(t.c.lease_owner).where(
            t.c.state.in_(RUNNABLE_STATES),
            t.c.lease_owner.is_not(None),
            t.c.lease_owner != owner,
            t.c.lease_expires_at >= now,
        )
        if names is not None:
            q = q.where(t.c.name.in_(list(names)))
        owners = {str(o) for o in s.scalars(q.distinct())}
        return sorted(o for o in owners if holder_is_gone(o))

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
        """Stop syncing ``name``: state ``paused``. The worker holding it hears of it at once
        (:func:`~correspond.store.wakeups.announce_account_change`), closes the account's IMAP
        connections and gives the lease up; its data and its waiting outbox rows stay."""
        with self._tx() as s:
            row = self._row(s, name)
            if row.disconnected_at is not None:
                raise Conflict(_disconnected_words(name))
            row.state = "paused"
            row.state_detail = detail
            s.flush()
            account = account_from_row(row)
        announce_account_change(self._engine)
        return account

    def resume(self, name: str, detail: str = "Resumed; waiting for a sync worker.") -> Account:
        """Sync ``name`` again: a paused (or failed: the user has acted) account goes back to
        ``connecting`` and the next worker round picks it up; the detail says when it last
        synced. A running account is unchanged."""
        with self._tx() as s:
            row = self._row(s, name)
            if row.disconnected_at is not None:
                raise Conflict(_disconnected_words(name))
            if row.state in RESUMABLE_STATES:
                if row.auth_kind == "password" and row.secret_encrypted is None:
                    raise ConfigError(
                        f"account {name!r} has no stored password (dropped when its connection "
                        f"settings changed): enter it with `correspond account update {name} "
                        "--password` (or PATCH with a password) and it resumes"
                    )
                row.state = "connecting"
                last = row.last_sync_at
                when = f"{last:%Y-%m-%d %H:%M:%S} UTC" if last is not None else "never"
                row.state_detail = f"{detail} Last synced: {when}."
                s.flush()
            account = account_from_row(row)
        announce_account_change(self._engine)
        return account

    @staticmethod
    def _row(s: Session, name: str) -> AccountRow:
        row = s.scalars(select(AccountRow).where(AccountRow.name == name)).one_or_none()
        if row is None:
            raise NotFound(f"no account named {name!r}")
        return row


def _disconnected_words(name: str) -> str:
    return (
        f"account {name!r} is disconnected (its credentials and folders were removed): "
        f"reconnect it with a password (`correspond account reconnect {name}` or "
        f"POST /accounts/{name}/reconnect)"
    )
