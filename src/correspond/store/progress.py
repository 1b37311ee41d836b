"""Backfill progress, per folder and per account, read from the store.

The figures are the engine's own checkpoints: ``folders.backfill_total`` (the UIDs the folder's
backfill found in the window) and ``folders.backfill_done_count`` (the UIDs committed so far),
both written in the same transaction as each batch, so ``done`` never runs ahead of what is
stored and ``done == total`` once a folder's backfill is complete. A folder whose backfill has
not started yet has no total (``None``).

The rate is measured from what was committed recently, so any process (a ``correspond web``
beside a ``correspond worker``) sees the same figure: message locations created in the last
``rate_window_seconds``, counted from the later of the window's start and the account's
``connected_at`` (the start of the current pass). A folder whose backfill is complete has no
rate; the account's rate counts every selected folder (a folder finished a moment ago was part
of the work) until the whole backfill is complete. The ETA is the known remaining work over
that rate; with nothing committed in the window the rate is 0 and there is no ETA.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, case, func, literal, select
from sqlalchemy.orm import Session

from correspond.errors import NotFound
from correspond.store.engine import register_table_modules
from correspond.store.leases import observed_state
from correspond.store.message_tables import MessageLocationRow
from correspond.store.tables import AccountRow, FolderRow, UtcDateTime, utcnow

__all__ = [
    "DEFAULT_RATE_WINDOW_SECONDS",
    "AccountProgress",
    "FolderProgress",
    "ProgressReader",
]

DEFAULT_RATE_WINDOW_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class FolderProgress:
    """One selected folder's backfill: ``done`` of ``total`` UIDs in the window."""

    folder_id: int
    name: str
    role: str | None
    done: int
    total: int | None
    complete: bool
    rate: float | None
    eta_seconds: float | None

    @property
    def fraction(self) -> float | None:
        """``done / total`` (1.0 for an empty folder), None before the total is known."""
        if self.total is None:
            return None
        return 1.0 if self.total == 0 else min(1.0, self.done / self.total)


@dataclass(frozen=True, slots=True)
class AccountProgress:
    """An account's state and the backfill progress of its selected folders.

    ``total`` sums the totals known so far; ``total_known`` says whether every selected folder
    has one (otherwise more work is still to be counted and the ETA is a lower bound).
    """

    account_id: int
    name: str
    state: str
    state_detail: str
    connected_at: datetime | None
    last_sync_at: datetime | None
    folders: tuple[FolderProgress, ...]
    done: int
    total: int
    total_known: bool
    complete: bool
    rate: float | None
    eta_seconds: float | None
    measured_at: datetime

    @property
    def fraction(self) -> float | None:
        if not self.total_known:
            return None
        return 1.0 if self.total == 0 else min(1.0, self.done / self.total)


_ROLE_ORDER = {"inbox": 0, "sent": 1, "drafts": 2, "archive": 3, "all": 4, "junk": 5, "trash": 6}


class ProgressReader:
    """Reads :class:`AccountProgress` for one account or all of them, in one short transaction."""

    def __init__(
        self, engine: Engine, *, rate_window_seconds: float = DEFAULT_RATE_WINDOW_SECONDS
    ) -> None:
        register_table_modules()
        self._engine = engine
        self._window = rate_window_seconds

    def account(self, name: str, *, now: datetime | None = None) -> AccountProgress:
        """Progress of the account called ``name``; :class:`NotFound` otherwise."""
        with Session(self._engine) as s:
            row = s.scalars(select(AccountRow).where(AccountRow.name == name)).one_or_none()
            if row is None:
                raise NotFound(f"no account named {name!r}")
            return self._read(s, [row], now or utcnow())[0]

    def all(self, *, now: datetime | None = None) -> list[AccountProgress]:
        """Progress of every account, by name."""
        with Session(self._engine) as s:
            rows = list(s.scalars(select(AccountRow).order_by(AccountRow.name)))
            return self._read(s, rows, now or utcnow())

    def _read(self, s: Session, accounts: list[AccountRow], now: datetime) -> list[AccountProgress]:
        if not accounts:
            return []
        ids = [a.id for a in accounts]
        folders = list(
            s.scalars(
                select(FolderRow).where(
                    FolderRow.account_id.in_(ids),
                    FolderRow.selected.is_(True),
                    FolderRow.selectable.is_(True),
                    FolderRow.removed.is_(False),
                )
            )
        )
        window_start = now - timedelta(seconds=self._window)
        since = {
            a.id: max(window_start, a.connected_at) if a.connected_at else window_start
            for a in accounts
        }
        recent = self._recent_locations(s, folders, window_start, now)
        by_account: dict[int, list[FolderRow]] = {}
        for f in folders:
            by_account.setdefault(f.account_id, []).append(f)
        result = []
        for a in accounts:
            elapsed = max((now - since[a.id]).total_seconds(), 1e-3)
            rows = sorted(
                by_account.get(a.id, []),
                key=lambda f: (_ROLE_ORDER.get(f.role or "", 9), f.name.casefold(), f.id),
            )
            items = tuple(self._folder(f, recent.get(f.id, 0), elapsed) for f in rows)
            result.append(self._account(a, items, recent, rows, elapsed, now))
        return result

    @staticmethod
    def _recent_locations(
        s: Session, folders: list[FolderRow], window_start: datetime, now: datetime
    ) -> dict[int, int]:
        """Locations created per folder since the later of ``window_start`` and its account's
        ``connected_at``, counted in SQL (one grouped query for every account)."""
        if not folders:
            return {}
        start = literal(window_start, UtcDateTime())
        since = case(
            (AccountRow.connected_at > start, AccountRow.connected_at),
            else_=start,
        )
        rows = s.execute(
            select(MessageLocationRow.folder_id, func.count())
            .join(FolderRow, FolderRow.id == MessageLocationRow.folder_id)
            .join(AccountRow, AccountRow.id == FolderRow.account_id)
            .where(
                MessageLocationRow.folder_id.in_([f.id for f in folders]),
                MessageLocationRow.created_at >= start,
                MessageLocationRow.created_at >= since,
                MessageLocationRow.created_at <= literal(now, UtcDateTime()),
            )
            .group_by(MessageLocationRow.folder_id)
        ).all()
        return {int(folder_id): int(n) for folder_id, n in rows}

    @staticmethod
    def _folder(f: FolderRow, recent: int, elapsed: float) -> FolderProgress:
        done = int(f.backfill_done_count or 0)
        total = None if f.backfill_total is None else int(f.backfill_total)
        rate = None if f.backfill_done else recent / elapsed
        eta = None
        if rate and total is not None:
            eta = max(0, total - done) / rate
        return FolderProgress(
            folder_id=f.id,
            name=f.name,
            role=f.role,
            done=done,
            total=total,
            complete=bool(f.backfill_done),
            rate=rate,
            eta_seconds=eta,
        )

    @staticmethod
    def _account(
        a: AccountRow,
        items: tuple[FolderProgress, ...],
        recent: dict[int, int],
        rows: list[FolderRow],
        elapsed: float,
        now: datetime,
    ) -> AccountProgress:
        done = sum(f.done for f in items)
        total = sum(f.total or 0 for f in items)
        # An account with no folder listed yet has nothing known and nothing complete.
        total_known = bool(items) and all(f.total is not None for f in items)
        complete = bool(items) and all(f.complete for f in items)
        rate = None if complete else sum(recent.get(f.id, 0) for f in rows) / elapsed
        remaining = sum(max(0, (f.total or 0) - f.done) for f in items if not f.complete)
        eta = remaining / rate if rate else None
        state, detail = observed_state(
            a.state,
            a.state_detail,
            lease_owner=a.lease_owner,
            lease_expires_at=a.lease_expires_at,
            last_sync_at=a.last_sync_at,
            now=now,
        )
        return AccountProgress(
            account_id=a.id,
            name=a.name,
            state=state,
            state_detail=detail,
            connected_at=a.connected_at,
            last_sync_at=a.last_sync_at,
            folders=items,
            done=done,
            total=total,
            total_known=total_known,
            complete=complete,
            rate=rate,
            eta_seconds=eta,
            measured_at=now,
        )
