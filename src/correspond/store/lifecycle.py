"""Disconnect and reconnect an account (issue 9, "Lifecycle"); what a removal would delete.

*Disconnect* ends the mailbox's side of an account and keeps the CRM's: in one transaction the
stored credential, the folders and (by cascade) every message location are deleted, outbox
rows still pending are marked ``failed`` (there is no mailbox to apply them to any more), and
the account row stays with ``disconnected_at`` set and state ``paused`` (no worker claims it).
The messages, their threads, attachments, blobs and timeline links stay: they are the CRM's
logged history. Each one that was still in the mailbox is marked gone with the reason
``disconnected``, so a message shows that its account was disconnected.

*Reconnect* stores a new credential, clears ``disconnected_at`` and puts the account back to
``connecting``. Folders are listed again and backfilled from scratch over the account's window
(``window_days`` before the reconnection), and the account keeps its id: a message still in
the CRM from before has the same ``(account_id, dedupe_key)`` and is found again, not
duplicated; it gets its locations back, keeps its id and so its timeline links, and loses its
``disconnected`` mark. Older messages stay as history.

*Removal* (``account remove``, ``DELETE /accounts/{name}``) deletes everything
(:func:`~correspond.store.blob_gc.remove_account_with_blobs`); :func:`removal_preview` counts
what it would delete, without changing anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from correspond.errors import Conflict, NotFound
from correspond.store.crm_tables import TimelineLinkRow
from correspond.store.engine import unit_of_work
from correspond.store.message_tables import MessageLocationRow, MessageRow, ThreadRow
from correspond.store.outbox_tables import OutboxRow
from correspond.store.records import Account, account_from_row
from correspond.store.tables import AccountRow, FolderRow, utcnow
from correspond.store.wakeups import announce_account_change

__all__ = [
    "DISCONNECTED_REASON",
    "AccountFootprint",
    "disconnect_account",
    "footprint",
    "reconnect_account",
]

#: ``messages.gone_reason`` of a message whose account was disconnected while it was still in
#: the mailbox.
DISCONNECTED_REASON = "disconnected"


@dataclass(frozen=True, slots=True)
class AccountFootprint:
    """What an account holds, as counted for a disconnect or a removal (before it happens, for
    a preview; at the moment it happened, for a report)."""

    name: str
    has_credentials: bool
    folders: int
    locations: int
    pending_actions: int
    messages: int
    threads: int
    messages_on_timelines: int
    disconnected_at: datetime | None = None


def _sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def _account(s: Session, name: str, *, lock: bool = False) -> AccountRow:
    q = select(AccountRow).where(AccountRow.name == name)
    if lock:
        q = q.with_for_update()
    row = s.scalars(q).one_or_none()
    if row is None:
        raise NotFound(f"no account named {name!r}")
    return row


def _count(s: Session, q: object) -> int:
    return int(s.scalar(q) or 0)  # type: ignore[call-overload]


def _footprint(s: Session, row: AccountRow) -> AccountFootprint:
    aid = row.id
    folder_ids = select(FolderRow.id).where(FolderRow.account_id == aid)
    message_ids = select(MessageRow.id).where(MessageRow.account_id == aid)
    return AccountFootprint(
        name=row.name,
        has_credentials=row.secret_encrypted is not None,
        folders=_count(s, select(func.count()).where(FolderRow.account_id == aid)),
        locations=_count(
            s,
            select(func.count())
            .select_from(MessageLocationRow)
            .where(MessageLocationRow.folder_id.in_(folder_ids)),
        ),
        pending_actions=_count(
            s,
            select(func.count()).where(OutboxRow.account_id == aid, OutboxRow.state == "pending"),
        ),
        messages=_count(s, select(func.count()).where(MessageRow.account_id == aid)),
        threads=_count(s, select(func.count()).where(ThreadRow.account_id == aid)),
        messages_on_timelines=_count(
            s,
            select(func.count(func.distinct(TimelineLinkRow.message_id))).where(
                TimelineLinkRow.message_id.in_(message_ids)
            ),
        ),
        disconnected_at=row.disconnected_at,
    )


def footprint(engine: Engine, name: str) -> AccountFootprint:
    """What account ``name`` holds now (NotFound for an unknown one). Changes nothing."""
    with unit_of_work(_sessions(engine)) as s:
        return _footprint(s, _account(s, name))


def disconnect_account(
    engine: Engine, name: str, *, now: datetime | None = None
) -> AccountFootprint:
    """Disconnect ``name`` (module docstring): returns what it held at that moment (the
    credential, folders, locations and pending actions deleted; the messages kept). A sync
    worker running it hears of it at once and closes its connections (the state is
    ``paused``, which no worker runs). Conflict when it is already disconnected."""
    now = now or utcnow()
    with unit_of_work(_sessions(engine)) as s:
        row = _account(s, name, lock=True)
        if row.disconnected_at is not None:
            raise Conflict(
                f"account {name!r} was already disconnected on "
                f"{row.disconnected_at:%Y-%m-%d %H:%M} UTC"
            )
        before = _footprint(s, row)
        aid = row.id
        # Messages still in the mailbox: marked as from a disconnected account, before their
        # locations go (a message already gone keeps the reason it had).
        in_mailbox = (
            select(MessageLocationRow.message_id)
            .join(FolderRow, FolderRow.id == MessageLocationRow.folder_id)
            .where(FolderRow.account_id == aid)
        )
        s.execute(
            update(MessageRow)
            .where(
                MessageRow.account_id == aid,
                MessageRow.gone_from_mailbox_at.is_(None),
                MessageRow.id.in_(in_mailbox),
            )
            .values(gone_from_mailbox_at=now, gone_reason=DISCONNECTED_REASON),
            execution_options={"synchronize_session": False},
        )
        s.execute(
            update(OutboxRow)
            .where(OutboxRow.account_id == aid, OutboxRow.state == "pending")
            .values(
                state="failed",
                last_error="The account was disconnected before this action reached the mailbox.",
            ),
            execution_options={"synchronize_session": False},
        )
        # Locations go with their folders (ON DELETE CASCADE, both backends).
        s.query(FolderRow).filter(FolderRow.account_id == aid).delete(synchronize_session=False)
        row.secret_encrypted = None
        row.disconnected_at = now
        row.state = "paused"
        row.state_detail = (
            f"Disconnected on {now:%Y-%m-%d %H:%M} UTC: credentials, folders and locations "
            "removed; its messages stay in the CRM as history. Reconnect to sync again."
        )
        row.lease_owner = None
        row.lease_expires_at = None
        row.connected_at = None
        s.flush()
        report = AccountFootprint(
            name=before.name,
            has_credentials=before.has_credentials,
            folders=before.folders,
            locations=before.locations,
            pending_actions=before.pending_actions,
            messages=before.messages,
            threads=before.threads,
            messages_on_timelines=before.messages_on_timelines,
            disconnected_at=now,
        )
    announce_account_change(engine)
    return report


def reconnect_account(engine: Engine, name: str, seal: Callable[[Session, int], bytes]) -> Account:
    """Reconnect a disconnected ``name`` with a new credential (``seal(session, account id)``
    encrypts it, in the transaction: :meth:`Store.reconnect_account`): state
    ``connecting``, ``disconnected_at`` cleared; the next worker round lists its folders and
    backfills the window before now. Conflict when it is not disconnected."""
    with unit_of_work(_sessions(engine)) as s:
        row = _account(s, name, lock=True)
        if row.disconnected_at is None:
            raise Conflict(
                f"account {name!r} is not disconnected; to change its password use "
                f"`correspond account update {name} --password` (or PATCH /accounts/{name})"
            )
        row.secret_encrypted = seal(s, row.id)
        row.disconnected_at = None
        row.state = "connecting"
        row.state_detail = (
            f"Reconnected; waiting for a sync worker to backfill the last {row.window_days} days."
        )
        s.flush()
        account = account_from_row(row)
    announce_account_change(engine)
    return account
