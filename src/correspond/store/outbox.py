"""The outbox: CRM actions that must reach the mailbox (see ``store.outbox_tables``).

:meth:`OutboxStore.record` changes the CRM's copy (state, flags) and writes the outbox row in
one transaction, and touches the account's ``updated_at`` so that the account's syncer (the
lease holder) hears of it within a lease round. The syncer (``sync.outbox``) reads the due rows
(:meth:`due`), re-reads the message's locations (:meth:`targets`) and reports each row's end:
applied (with the location changes it made, so the echo of its own STORE is no change at the
next sync), retried later (transient), failed (permanent) or superseded (the conflict rule).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import Engine, bindparam, delete, func, select, update
from sqlalchemy.orm import Session

from correspond.errors import ConfigError, NotFound
from correspond.rules.two_way import (
    CrmAction,
    FlagChange,
    MessageState,
    Place,
    Toggles,
    mailbox_ops_for_crm_action,
)
from correspond.store.engine import register_table_modules, shared_sessions, unit_of_work
from correspond.store.message_tables import MessageLocationRow, MessageRow
from correspond.store.outbox_tables import OUTBOX_KINDS, OutboxRow
from correspond.store.records import TOGGLES
from correspond.store.remote_state import settle_after_removal, state_values
from correspond.store.tables import AccountRow, FolderRow, utcnow
from correspond.store.wakeups import announce_account_change, send_outbox_wakeup

__all__ = [
    "MAX_BULK",
    "ActionOutcome",
    "AppliedMark",
    "LocationTarget",
    "OutboxAction",
    "OutboxStore",
    "RestorePlaces",
    "answer_message",
    "pending_flag_changes",
    "supersede_flag_rows",
]

#: The flag each flag action changes, and to what.
FLAG_OF_KIND: Mapping[str, tuple[str, bool]] = {
    "read": ("\\Seen", True),
    "unread": ("\\Seen", False),
    "star": ("\\Flagged", True),
    "unstar": ("\\Flagged", False),
    "answered": ("\\Answered", True),
}
DELETED = "\\Deleted"
#: Rows a message shows (the newest, pending and failed first).
MESSAGE_ACTIONS_SHOWN = 20
#: Rows one :meth:`OutboxStore.due` call hands out.
DUE_BATCH = 500
#: Messages one :meth:`OutboxStore.record_many` call (one bulk request) acts on.
MAX_BULK = 1000


@dataclass(frozen=True, slots=True)
class OutboxAction:
    """An outbox row."""

    id: int
    account_id: int
    message_id: int | None
    user_id: int | None
    kind: str
    payload: dict[str, Any]
    state: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    applied_at: datetime | None


@dataclass(frozen=True, slots=True)
class AppliedMark:
    """A row that took effect, with the location changes it made (``mark_applied_many``)."""

    row_id: int
    location_flags: dict[int, frozenset[str]]
    removed_locations: tuple[int, ...] = ()
    note: str | None = None


@dataclass(frozen=True, slots=True)
class ActionOutcome:
    """A message after a CRM action: its state and flags, and its outbox rows not applied
    (pending and failed, newest first)."""

    message_id: int
    state: str
    flags: tuple[str, ...]
    actions: tuple[OutboxAction, ...]


@dataclass(frozen=True, slots=True)
class LocationTarget:
    """A location of a message, with what a command needs to reach it."""

    location_id: int
    folder_id: int
    folder_name_raw: bytes
    role: str | None
    uid: int
    flags: frozenset[str]


def _action(row: OutboxRow) -> OutboxAction:
    return OutboxAction(
        id=row.id,
        account_id=row.account_id,
        message_id=row.message_id,
        user_id=row.user_id,
        kind=row.kind,
        payload=dict(row.payload or {}),
        state=row.state,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        last_error=row.last_error,
        created_at=row.created_at,
        applied_at=row.applied_at,
    )


def _toggles(account: AccountRow) -> Toggles:
    return Toggles.of({name: bool(getattr(account, name)) for name in TOGGLES})


def _places(s: Session, message_id: int) -> list[Place]:
    return _places_of(s, [message_id]).get(message_id, [])


def _places_of(s: Session, message_ids: Sequence[int]) -> dict[int, list[Place]]:
    """:func:`_places` of many messages in one query."""
    out: dict[int, list[Place]] = {}
    if not message_ids:
        return out
    rows = s.execute(
        select(
            MessageLocationRow.message_id,
            MessageLocationRow.flags,
            FolderRow.id,
            FolderRow.role,
        )
        .select_from(FolderRow)
        .join(MessageLocationRow, MessageLocationRow.folder_id == FolderRow.id)
        .where(MessageLocationRow.message_id.in_(list(message_ids)))
        .order_by(MessageLocationRow.message_id, FolderRow.id)
    ).all()
    for r in rows:
        if DELETED in (r.flags or ()):
            continue  # on its way out (left \Deleted without UIDPLUS): not where it lives
        out.setdefault(int(r.message_id), []).append(Place(int(r.id), r.role, True))
    return out


_SEARCHABLE_ID = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{3,250}")


class RestorePlaces(NamedTuple):
    """Where a restore puts a message back (the synced folder it left, when it still exists)
    and the account's Trash when the account does not sync it (looked in by Message-ID; None
    when the message has no Message-ID to look for)."""

    home_folder_id: int | None
    unsynced_trash_id: int | None


def _restore_places(s: Session, message: MessageRow) -> RestorePlaces:
    home: int | None = None
    for folder_id in message.home_folder_ids or ():
        row = s.get(FolderRow, int(folder_id))
        if row is not None and not row.removed and row.selectable:
            home = row.id
            break
    trash: int | None = None
    header = message.message_id_header
    if header and _SEARCHABLE_ID.fullmatch(header):
        trash = s.scalar(
            select(FolderRow.id)
            .where(
                FolderRow.account_id == message.account_id,
                FolderRow.role == "trash",
                FolderRow.selected.is_(False),
                FolderRow.removed.is_(False),
                FolderRow.selectable.is_(True),
            )
            .order_by(FolderRow.id)
            .limit(1)
        )
    return RestorePlaces(home, trash)


def pending_flag_changes(s: Session, message_ids: Collection[int]) -> dict[int, list[FlagChange]]:
    """The flag changes still waiting in the outbox, by message (one query; usually none)."""
    if not message_ids:
        return {}
    rows = s.execute(
        select(OutboxRow.message_id, OutboxRow.kind, OutboxRow.created_at)
        .where(
            OutboxRow.message_id.in_(sorted(message_ids)),
            OutboxRow.state == "pending",
            OutboxRow.kind.in_(tuple(FLAG_OF_KIND)),
        )
        .order_by(OutboxRow.id)
    ).all()
    found: dict[int, list[FlagChange]] = {}
    for message_id, kind, created_at in rows:
        flag, value = FLAG_OF_KIND[kind]
        found.setdefault(int(message_id), []).append(FlagChange(flag, value, created_at))
    return found


def supersede_flag_rows(s: Session, message_id: int, flags: Collection[str]) -> None:
    """Mark the pending rows of ``message_id`` that change ``flags`` superseded (the mailbox's
    later change stands; rules.two_way.merge_remote_flags)."""
    kinds = [kind for kind, (flag, _value) in FLAG_OF_KIND.items() if flag in flags]
    if not kinds:
        return
    s.execute(
        update(OutboxRow)
        .where(
            OutboxRow.message_id == message_id,
            OutboxRow.state == "pending",
            OutboxRow.kind.in_(kinds),
        )
        .values(
            state="superseded",
            last_error="the mailbox changed this flag later (conflict rule: later change wins)",
            applied_at=utcnow(),
        )
    )


def answer_message(s: Session, message_id: int, *, user_id: int | None) -> None:
    """Give ``message_id`` \\Answered in the CRM and queue an ``answered`` row setting it on
    every location in the mailbox, in the caller's transaction (``store.sends``: a reply from
    the CRM went). Applied like read or star: the flag read first, STOREd only where missing,
    the location's new flags recorded with the row (idempotent, and its echo is no change).
    Nothing when the message is gone."""
    message = s.get(MessageRow, message_id, with_for_update=True)
    if message is None:
        return
    account = s.get(AccountRow, message.account_id)
    assert account is not None  # a message's account cascades with it
    OutboxStore._apply_action(
        s, message, account, _places(s, message_id), None, "answered", user_id, None, set()
    )


class OutboxStore:
    """The outbox in the store's database. Thread-safe."""

    def __init__(self, engine: Engine, *, on_recorded: Callable[[str], None] | None = None) -> None:
        register_table_modules()
        self._engine = engine
        self._sessions = shared_sessions(engine)  # one per account: shared
        # Told the account's name after a commit that queued rows for it: in ``correspond
        # serve`` the runner in the same process wakes that session at once (SyncRunner.wake)
        # instead of at its next lease round.
        self.on_recorded = on_recorded

    def _recorded(self, names: Collection[str]) -> None:
        if self.on_recorded is not None:
            for name in names:
                self.on_recorded(name)
        if names and self._engine.dialect.name == "sqlite":
            # A worker in another process: SQLite has no NOTIFY, so the account stamp file
            # makes it run a lease round now, which sees the touched account and wakes its
            # session (PostgreSQL's NOTIFY went with the commit).
            announce_account_change(self._engine)

    # -- the CRM side ----------------------------------------------------------------------------

    def record(
        self,
        message_id: int,
        kind: CrmAction,
        *,
        user_id: int | None,
        to_folder_id: int | None = None,
    ) -> ActionOutcome:
        """Apply a user's action to the CRM copy of the message and queue what it means for
        the mailbox, in one transaction. An action with nothing to do in the mailbox (a toggle
        off, no location) writes no row. NotFound for an unknown message; ConfigError for a
        move to a folder of another account or one that is not synced."""
        if kind not in OUTBOX_KINDS:
            raise ConfigError(f"unknown action: {kind}")
        queued: set[str] = set()
        with unit_of_work(self._sessions) as s:
            outcome = self._record(s, message_id, kind, user_id, to_folder_id, queued)
        self._recorded(queued)
        return outcome

    def record_many(
        self,
        message_ids: Sequence[int],
        kind: CrmAction,
        *,
        user_id: int | None,
        to_folder_id: int | None = None,
    ) -> list[ActionOutcome | NotFound | ConfigError]:
        """:meth:`record` for each of ``message_ids`` (at most :data:`MAX_BULK`), in one
        transaction: per id, its outcome, or the NotFound / ConfigError that id met (checked
        before anything of that message changes, so the others still apply)."""
        if kind not in OUTBOX_KINDS:
            raise ConfigError(f"unknown action: {kind}")
        if len(message_ids) > MAX_BULK:
            raise ConfigError(f"at most {MAX_BULK} messages per request")
        results: dict[int, ActionOutcome | NotFound | ConfigError] = {}
        queued: set[str] = set()
        wanted = sorted(set(message_ids))
        with unit_of_work(self._sessions) as s:
            # Read in a few statements, not a few per message: the messages (locked, in id
            # order, so two bulk requests never deadlock on PostgreSQL), their accounts and
            # their locations. An id given twice is acted on once.
            messages = {
                m.id: m
                for m in s.scalars(
                    select(MessageRow)
                    .where(MessageRow.id.in_(wanted))
                    .order_by(MessageRow.id)
                    .with_for_update()
                )
            }
            accounts = {
                a.id: a
                for a in s.scalars(
                    select(AccountRow).where(
                        AccountRow.id.in_({m.account_id for m in messages.values()})
                    )
                )
            }
            places = _places_of(s, list(messages))
            target = s.get(FolderRow, to_folder_id) if to_folder_id is not None else None
            acted: list[MessageRow] = []
            for message_id in wanted:
                message = messages.get(message_id)
                if message is None:
                    results[message_id] = NotFound(f"no message with id {message_id}")
                    continue
                try:
                    self._apply_action(
                        s,
                        message,
                        accounts[message.account_id],
                        places.get(message_id, []),
                        target,
                        kind,
                        user_id,
                        to_folder_id,
                        queued,
                    )
                except ConfigError as exc:
                    results[message_id] = exc
                    continue
                acted.append(message)
            s.flush()
            results.update(self._outcomes(s, acted))
        self._recorded(queued)
        return [results[message_id] for message_id in message_ids]

    def _record(
        self,
        s: Session,
        message_id: int,
        kind: CrmAction,
        user_id: int | None,
        to_folder_id: int | None,
        queued: set[str],
    ) -> ActionOutcome:
        message = s.get(MessageRow, message_id, with_for_update=True)
        if message is None:
            raise NotFound(f"no message with id {message_id}")
        account = s.get(AccountRow, message.account_id)
        assert account is not None  # a message's account cascades with it
        target = s.get(FolderRow, to_folder_id) if to_folder_id is not None else None
        self._apply_action(
            s,
            message,
            account,
            _places(s, message_id),
            target,
            kind,
            user_id,
            to_folder_id,
            queued,
        )
        s.flush()
        return self._outcome(s, message)

    @staticmethod
    def _apply_action(
        s: Session,
        message: MessageRow,
        account: AccountRow,
        places: list[Place],
        target: FolderRow | None,
        kind: CrmAction,
        user_id: int | None,
        to_folder_id: int | None,
        queued: set[str],
    ) -> None:
        """Change the CRM copy and add the outbox row (ConfigError before any change)."""
        if kind == "move":
            if target is None or target.account_id != message.account_id or target.removed:
                raise ConfigError("move: no such folder in the message's account")
            if not target.selectable:
                raise ConfigError(f"move: the folder {target.name!r} cannot hold messages")
        home, trash = (
            _restore_places(s, message) if kind == "restore" else RestorePlaces(None, None)
        )
        plan = mailbox_ops_for_crm_action(
            kind,
            state=cast(MessageState, message.state),
            locations=places,
            toggles=_toggles(account),
            to_folder_id=to_folder_id,
            home_folder_id=home,
            unsynced_trash_id=trash,
        )
        # deleted_at stamped or cleared with the state (the purge counts from it).
        for column, value in state_values(plan.state, message.state).items():
            setattr(message, column, value)
        if kind in FLAG_OF_KIND:
            flag, value = FLAG_OF_KIND[kind]
            flags = set(message.flags or ())
            flags.add(flag) if value else flags.discard(flag)
            message.flags = sorted(flags)
        now = utcnow()
        if plan.ops:
            payload: dict[str, Any] = {}
            if to_folder_id is not None:
                payload["to_folder_id"] = to_folder_id
            s.add(
                OutboxRow(
                    account_id=message.account_id,
                    message_id=message.id,
                    user_id=user_id,
                    kind=kind,
                    payload=payload,
                    state="pending",
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                )
            )
            # Wakes the account's syncer within a lease round (store.leases reads
            # updated_at of every account it holds).
            account.updated_at = now
            if account.name not in queued:
                send_outbox_wakeup(s, account.name)  # runners in other processes (PostgreSQL)
            queued.add(account.name)

    def _outcomes(self, s: Session, messages: Sequence[MessageRow]) -> dict[int, ActionOutcome]:
        """:meth:`_outcome` of many messages in one query."""
        if not messages:
            return {}
        rows: dict[int, list[OutboxAction]] = {}
        for row in s.scalars(
            select(OutboxRow)
            .where(
                OutboxRow.message_id.in_([m.id for m in messages]),
                OutboxRow.state.in_(("pending", "failed")),
            )
            .order_by(OutboxRow.id.desc())
        ):
            shown = rows.setdefault(int(row.message_id or 0), [])
            if len(shown) < MESSAGE_ACTIONS_SHOWN:
                shown.append(_action(row))
        return {
            m.id: ActionOutcome(
                message_id=m.id,
                state=m.state,
                flags=tuple(sorted(m.flags or ())),
                actions=tuple(rows.get(m.id, ())),
            )
            for m in messages
        }

    def _outcome(self, s: Session, message: MessageRow) -> ActionOutcome:
        rows = s.scalars(
            select(OutboxRow)
            .where(OutboxRow.message_id == message.id, OutboxRow.state.in_(("pending", "failed")))
            .order_by(OutboxRow.id.desc())
            .limit(MESSAGE_ACTIONS_SHOWN)
        ).all()
        return ActionOutcome(
            message_id=message.id,
            state=message.state,
            flags=tuple(sorted(message.flags or ())),
            actions=tuple(_action(r) for r in rows),
        )

    def outcome(self, message_id: int) -> ActionOutcome:
        """The message's state, flags and outbox rows not applied."""
        with unit_of_work(self._sessions) as s:
            message = s.get(MessageRow, message_id)
            if message is None:
                raise NotFound(f"no message with id {message_id}")
            return self._outcome(s, message)

    def counts_by_account(self) -> dict[int, dict[str, int]]:
        """Pending and failed rows per account id (for ``account list``)."""
        with unit_of_work(self._sessions) as s:
            rows = s.execute(
                select(OutboxRow.account_id, OutboxRow.state, func.count())
                .where(OutboxRow.state.in_(("pending", "failed")))
                .group_by(OutboxRow.account_id, OutboxRow.state)
            ).all()
        counts: dict[int, dict[str, int]] = {}
        for account_id, state, count in rows:
            counts.setdefault(int(account_id), {"pending": 0, "failed": 0})[state] = int(count)
        return counts

    # -- the syncer's side -----------------------------------------------------------------------

    def due(self, account_id: int, now: datetime | None = None) -> list[OutboxAction]:
        """The account's rows to apply now, in order. A row waits while an earlier pending row
        of the same message is not due yet (rows of one message apply in order)."""
        now = utcnow() if now is None else now
        with unit_of_work(self._sessions) as s:
            rows = s.scalars(
                select(OutboxRow)
                .where(OutboxRow.account_id == account_id, OutboxRow.state == "pending")
                .order_by(OutboxRow.id)
                .limit(DUE_BATCH)
            ).all()
        blocked: set[int | None] = set()
        ready: list[OutboxAction] = []
        for row in rows:
            if row.message_id in blocked:
                continue
            if row.next_attempt_at > now:
                blocked.add(row.message_id)
                continue
            ready.append(_action(row))
        return ready

    def next_due_at(self, account_id: int) -> datetime | None:
        """When the account's next pending row is due (None: none pending)."""
        with unit_of_work(self._sessions) as s:
            value = s.scalar(
                select(func.min(OutboxRow.next_attempt_at)).where(
                    OutboxRow.account_id == account_id, OutboxRow.state == "pending"
                )
            )
        return cast(datetime | None, value)

    def state_of(self, row_id: int) -> str | None:
        """A row's state (None: the row is gone with its message)."""
        with unit_of_work(self._sessions) as s:
            return cast(str | None, s.scalar(select(OutboxRow.state).where(OutboxRow.id == row_id)))

    def targets(self, message_id: int) -> tuple[MessageState, list[LocationTarget]]:
        """The message's state and its locations in synced folders, as the store knows them."""
        found = self.targets_many([message_id])
        if message_id not in found:
            raise NotFound(f"no message with id {message_id}")
        return found[message_id]

    def targets_many(
        self, message_ids: Collection[int]
    ) -> dict[int, tuple[MessageState, list[LocationTarget]]]:
        """:meth:`targets` of many messages in two queries; a message that is gone is absent."""
        ids = sorted(set(message_ids))
        if not ids:
            return {}
        with unit_of_work(self._sessions) as s:
            states = dict(
                s.execute(select(MessageRow.id, MessageRow.state).where(MessageRow.id.in_(ids)))
                .tuples()
                .all()
            )
            rows = s.execute(
                select(
                    MessageLocationRow.message_id,
                    MessageLocationRow.id,
                    MessageLocationRow.folder_id,
                    MessageLocationRow.uid,
                    MessageLocationRow.flags,
                    FolderRow.remote_name_raw,
                    FolderRow.role,
                )
                .join(FolderRow, FolderRow.id == MessageLocationRow.folder_id)
                .where(MessageLocationRow.message_id.in_(ids), FolderRow.selected)
                .order_by(MessageLocationRow.message_id, FolderRow.id)
            ).all()
        out: dict[int, tuple[MessageState, list[LocationTarget]]] = {
            int(mid): (cast(MessageState, state), []) for mid, state in states.items()
        }
        for r in rows:
            entry = out.get(int(r.message_id))
            if entry is not None:
                entry[1].append(
                    LocationTarget(
                        location_id=int(r.id),
                        folder_id=int(r.folder_id),
                        folder_name_raw=bytes(r.remote_name_raw),
                        role=r.role,
                        uid=int(r.uid),
                        flags=frozenset(r.flags or ()),
                    )
                )
        return out

    def restore_places(self, message_id: int) -> tuple[RestorePlaces, str | None]:
        """Where a restore of the message puts it back (:class:`RestorePlaces`), and its
        Message-ID (to find it in a folder the account does not sync)."""
        with unit_of_work(self._sessions) as s:
            message = s.get(MessageRow, message_id)
            if message is None:
                raise NotFound(f"no message with id {message_id}")
            return _restore_places(s, message), message.message_id_header

    def folder_by_role(self, account_id: int, role: str) -> tuple[int, bytes] | None:
        """The account's folder with ``role`` (id, raw name), or None."""
        with unit_of_work(self._sessions) as s:
            row = s.execute(
                select(FolderRow.id, FolderRow.remote_name_raw)
                .where(
                    FolderRow.account_id == account_id,
                    FolderRow.role == role,
                    FolderRow.removed.is_(False),
                    FolderRow.selectable.is_(True),
                )
                .order_by(FolderRow.selected.desc(), FolderRow.id)
                .limit(1)
            ).first()
        return None if row is None else (int(row.id), bytes(row.remote_name_raw))

    def folder_name(self, folder_id: int) -> bytes | None:
        with unit_of_work(self._sessions) as s:
            raw = s.scalar(
                select(FolderRow.remote_name_raw).where(
                    FolderRow.id == folder_id, FolderRow.removed.is_(False)
                )
            )
        return None if raw is None else bytes(raw)

    def mark_applied(
        self,
        row_id: int,
        *,
        location_flags: Mapping[int, frozenset[str]] = {},
        removed_locations: Sequence[int] = (),
        note: str | None = None,
    ) -> None:
        """The row took effect: record it with the location changes it made, atomically, so
        the next sync sees no change (the echo of our own command is not a remote change).
        ``note``: how it took effect where that differs from the usual (kept in the payload:
        a copy left flagged \\Deleted on a server without UIDPLUS, ``rules.outbox_steps``)."""
        self.mark_applied_many(
            [AppliedMark(row_id, dict(location_flags), tuple(removed_locations), note)]
        )

    def mark_applied_many(self, marks: Sequence[AppliedMark]) -> None:
        """:meth:`mark_applied` of many rows in one transaction (the applier marks a pass's
        rows in batches: a crash before a batch is marked re-applies its rows, which re-read
        the mailbox and find them done)."""
        if not marks:
            return
        now = utcnow()
        with unit_of_work(self._sessions) as s:
            for mark in marks:
                if mark.note is not None:
                    row = s.get(OutboxRow, mark.row_id)
                    if row is not None:
                        row.payload = {**(row.payload or {}), "note": mark.note[:1000]}
            flags = [
                {"b_id": location_id, "b_flags": sorted(value)}
                for mark in marks
                for location_id, value in mark.location_flags.items()
            ]
            if flags:
                s.connection().execute(
                    update(MessageLocationRow)
                    .where(MessageLocationRow.id == bindparam("b_id"))
                    .values(flags=bindparam("b_flags")),
                    flags,
                )
            removed = [i for mark in marks for i in mark.removed_locations]
            if removed:
                left: dict[int, list[int]] = {}
                for mid, fid in s.execute(
                    select(MessageLocationRow.message_id, MessageLocationRow.folder_id).where(
                        MessageLocationRow.id.in_(removed)
                    )
                ):
                    left.setdefault(int(mid), []).append(int(fid))
                s.execute(delete(MessageLocationRow).where(MessageLocationRow.id.in_(removed)))
                # Where it was (a restore puts it back there); the state is the CRM's own.
                settle_after_removal(s, left, decide=False)
            s.execute(
                update(OutboxRow)
                .where(
                    OutboxRow.id.in_([mark.row_id for mark in marks]),
                    OutboxRow.state == "pending",
                )
                .values(
                    state="applied",
                    applied_at=now,
                    attempts=OutboxRow.attempts + 1,
                    last_error=None,
                )
            )

    def note_copy(self, row_id: int, location_id: int, uidnext: int) -> None:
        """Record, before a COPY is sent, the destination's UIDNEXT for that location: an
        attempt after a crash or a cut connection looks for the copy there instead of copying
        again (``rules.outbox_steps``). Committed before the command goes out."""
        with unit_of_work(self._sessions) as s:
            row = s.get(OutboxRow, row_id, with_for_update=True)
            if row is None:
                return
            payload = dict(row.payload or {})
            copies = dict(payload.get("copies") or {})
            copies[str(location_id)] = uidnext
            payload["copies"] = copies
            row.payload = payload

    def touch_account(self, account_id: int) -> None:
        """Mark the account changed (``updated_at``): its session re-reads its folder
        selection at the runner's next round (a folder the outbox created gets synced)."""
        with unit_of_work(self._sessions) as s:
            s.execute(
                update(AccountRow).where(AccountRow.id == account_id).values(updated_at=utcnow())
            )

    def record_role(self, account_id: int, name_raw: bytes, role: str) -> None:
        """Give the folder ``name_raw`` of the account ``role`` when no folder has it (a
        folder the outbox created, before the next LIST records it); a missing row is added,
        selected. The next folder refresh assigns roles again from the server's list."""
        with unit_of_work(self._sessions) as s:
            taken = s.scalar(
                select(FolderRow.id).where(
                    FolderRow.account_id == account_id,
                    FolderRow.role == role,
                    FolderRow.removed.is_(False),
                )
            )
            if taken is not None:
                return
            row = s.scalar(
                select(FolderRow).where(
                    FolderRow.account_id == account_id, FolderRow.remote_name_raw == name_raw
                )
            )
            if row is None:
                s.add(
                    FolderRow(
                        account_id=account_id,
                        remote_name_raw=name_raw,
                        name=name_raw.decode("utf-8", "replace"),
                        role=role,
                        selectable=True,
                        selected=True,
                    )
                )
            else:
                row.role = role
                row.removed = False

    def mark_retry(self, row_id: int, error: str, next_attempt_at: datetime) -> None:
        """A transient failure: try again at ``next_attempt_at``."""
        with unit_of_work(self._sessions) as s:
            s.execute(
                update(OutboxRow)
                .where(OutboxRow.id == row_id, OutboxRow.state == "pending")
                .values(
                    attempts=OutboxRow.attempts + 1,
                    last_error=error[:1000],
                    next_attempt_at=next_attempt_at,
                )
            )

    def mark_failed(self, row_id: int, error: str) -> None:
        """A permanent failure, recorded on the row (shown on the message and the account)."""
        with unit_of_work(self._sessions) as s:
            s.execute(
                update(OutboxRow)
                .where(OutboxRow.id == row_id, OutboxRow.state == "pending")
                .values(
                    state="failed",
                    attempts=OutboxRow.attempts + 1,
                    last_error=error[:1000],
                    applied_at=utcnow(),
                )
            )
