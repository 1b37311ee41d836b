"""All SQL about synced messages: ingest, locations, flags, UIDVALIDITY resets, counts, reads.

The engine hands in plain data (:class:`MessageData`, :class:`IncomingMessage`,
:class:`FolderCheckpointUpdate`); every write here is one short transaction, and every sync write
commits the folder's checkpoint *in the same transaction* as the rows it covers, so a crash
between batches resumes exactly at the cursor (DESIGN.md invariant 3).

Deduplication (invariant 2): a message whose ``dedupe_key`` the account already has only gains a
location; ``UNIQUE(account_id, dedupe_key)`` backs this up against any bug or race.

Threading decisions are not made here: :meth:`MessageStore.ingest_batch` looks up the candidates
(messages this one refers to, messages that refer to it, same normalised subject) and asks a
pure ``chooser`` (the sync layer adapts :func:`correspond.mail.threading.choose_thread`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Engine,
    Select,
    Table,
    any_,
    bindparam,
    delete,
    func,
    insert,
    select,
    text,
    union,
    update,
)
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import QueryableAttribute, Session

from correspond.errors import NotFound, StoreError
from correspond.mail.dedupe import KeyFacts, distinct_key, reusable_key, same_message
from correspond.mail.threading import subject_keys
from correspond.rules.sync_plan import FolderCheckpoint
from correspond.rules.two_way import merge_remote_flags
from correspond.store.engine import database_failure, per_engine
from correspond.store.message_data import AddressData, AttachmentData, MessageData, storable
from correspond.store.message_tables import (
    AttachmentRow,
    MessageLocationRow,
    MessageRefRow,
    MessageRow,
    MessageSubjectKeyRow,
    ThreadRow,
    list_sort_at,
    shown,
)
from correspond.store.outbox import pending_flag_changes, supersede_flag_rows
from correspond.store.remote_state import (
    home_folders_of,
    settle_after_link,
    settle_after_removal,
    settle_explained,
)
from correspond.store.tables import FolderRow, utcnow
from correspond.store.wakeups import send_wakeup
from correspond.store.webhooks import queue_changed_messages

__all__ = [
    "AddressData",
    "AttachmentData",
    "FolderCheckpointUpdate",
    "IncomingMessage",
    "IngestResult",
    "MessageData",
    "MessageDetail",
    "MessageStore",
    "MessageSummary",
    "ThreadCandidate",
    "ThreadChoice",
    "ThreadChooser",
    "bare_message",
    "minimal_message",
    "storable",
    "where_in_folder_or_thread",
]

log = logging.getLogger(__name__)

# How many same-subject messages threading looks at (nearest in time first): enough to find the
# conversation, bounded so a common subject ("Invoice") cannot make ingest quadratic.
_SAME_SUBJECT_LIMIT = 50
# Same-subject candidates are looked for this far around the message's date.
_SAME_SUBJECT_WINDOW = timedelta(days=31)
# Stay well below SQLite's host-parameter limit in IN (...) lists.
_IN_CHUNK = 500


class _Refused(Exception):
    """The database refused a write (a constraint, a type, a size or an index limit): the
    data is at fault, not the database. ``error`` is the :class:`StoreError` to raise when
    no fallback is left."""

    def __init__(self, error: StoreError, cause: Exception) -> None:
        super().__init__(str(error))
        self.error = error
        self.__cause__ = cause


# PostgreSQL SQLSTATE classes that say the server or the connection failed, not the data
# (Appendix A of its manual): connection, resources, operator intervention, system and
# internal errors, transaction rollback (serialisation, deadlock), lock not available.
_PG_UNAVAILABLE = ("08", "53", "57", "58", "XX", "40", "55")
# SQLite primary result codes of the same kind.
_SQLITE_UNAVAILABLE = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_IOERR",
    "SQLITE_FULL",
    "SQLITE_NOMEM",
    "SQLITE_CANTOPEN",
    "SQLITE_READONLY",
    "SQLITE_CORRUPT",
    "SQLITE_NOTADB",
    "SQLITE_PROTOCOL",
    "SQLITE_INTERRUPT",
)


def _refused_by_database(exc: SQLAlchemyError) -> bool:
    """Whether ``exc`` says the database refused the data written (so storing less of it
    may pass), rather than that the database is unavailable (so retrying later may)."""
    if getattr(exc, "connection_invalidated", False):
        return False
    orig = getattr(exc, "orig", None)
    if orig is None:
        return False
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        return not sqlstate.startswith(_PG_UNAVAILABLE)
    name = getattr(orig, "sqlite_errorname", None)
    if isinstance(name, str):
        return not name.startswith(_SQLITE_UNAVAILABLE)
    if isinstance(exc, OperationalError | InterfaceError):
        return False  # the driver lost the server (no SQLSTATE: nothing the server said)
    # Not from the server at all: a value the driver could not send (an integer beyond 64
    # bits, NUL in text for psycopg).
    return not isinstance(orig, OSError) and type(orig).__module__.split(".")[0] in (
        "builtins",
        "psycopg",
        "sqlite3",
    )


#: Longest subject kept in a minimal row (a btree index entry must stay small).
_MINIMAL_SUBJECT_CHARS = 255
#: Longest address (RFC 5321 §4.5.3.1: 64 + 1 + 255) and Message-ID kept in a minimal row.
_MINIMAL_ADDRESS_CHARS = 320
_MINIMAL_ID_CHARS = 400
_MINIMAL_DEFECTS = 20


def minimal_message(data: MessageData, reason: str) -> MessageData:
    """What is kept of a message whose row the database refused: the key, bounded header
    facts (subject, sender, date, Message-ID), size and the raw message's blob, and the
    reason as a defect; no text, addresses lists, references or attachments."""
    sender = data.from_
    if sender is not None and len(sender.email) > _MINIMAL_ADDRESS_CHARS:
        sender = None
    if sender is not None and sender.name and len(sender.name) > _MINIMAL_SUBJECT_CHARS:
        sender = AddressData(sender.name[:_MINIMAL_SUBJECT_CHARS], sender.email)
    mid = data.message_id
    return MessageData(
        dedupe_key=data.dedupe_key,
        message_id=mid if mid is not None and len(mid) <= _MINIMAL_ID_CHARS else None,
        subject=data.subject[:_MINIMAL_SUBJECT_CHARS],
        normalized_subject=data.normalized_subject[:_MINIMAL_SUBJECT_CHARS],
        from_=sender,
        date=data.date,
        internaldate=data.internaldate,
        size=data.size,
        raw_blob_key=data.raw_blob_key,
        truncated=True,
        gm_msgid=_int64(data.gm_msgid),
        gm_thrid=_int64(data.gm_thrid),
        defects=(*(d[:200] for d in data.defects[:_MINIMAL_DEFECTS]), reason),
        direction=data.direction,
        own_addresses=data.own_addresses,
    )


def bare_message(data: MessageData, reason: str) -> MessageData:
    """Less still: the key, size and arrival time, and the reason."""
    return MessageData(
        dedupe_key=data.dedupe_key,
        internaldate=data.internaldate,
        size=data.size,
        truncated=True,
        defects=(reason,),
        direction=data.direction,
    )


_REFUSED_REASON = "stored without its content: the database refused it ({})"


def _facts(data: MessageData) -> KeyFacts:
    """The sender and Date of a message to store, as :func:`same_message` compares them. A
    location linked without its body carries neither (the metadata pass already decided)."""
    sender = data.from_.email.lower() if data.from_ and data.from_.email else None
    return KeyFacts(sender, data.date)


def _int64(value: int | None) -> int | None:
    return value if value is not None and -(2**63) <= value < 2**63 else None


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """One fetched UID: where it is and, for a message not stored yet, its data."""

    uid: int
    flags: frozenset[str]
    data: MessageData
    modseq: int | None = None


@dataclass(frozen=True, slots=True)
class FolderCheckpointUpdate:
    """Folder columns to set in the same transaction (None: leave as is)."""

    uidvalidity: int | None = None
    uidnext: int | None = None
    highestmodseq: int | None = None
    exists_count: int | None = None
    backfill_done: bool | None = None
    backfill_low_uid: int | None = None
    backfill_total: int | None = None
    backfill_done_increment: int = 0


@dataclass(frozen=True, slots=True)
class ThreadCandidate:
    """A stored message as threading sees it."""

    id: int
    thread_id: int | None
    message_id: str | None
    parent_ids: tuple[str, ...]
    normalized_subject: str
    participants: tuple[str, ...]
    date: datetime | None


@dataclass(frozen=True, slots=True)
class ThreadChoice:
    """The chooser's answer: join ``thread_id`` (None: start one) and fold ``merge_thread_ids``
    into it."""

    thread_id: int | None
    merge_thread_ids: tuple[int, ...] = ()


ThreadChooser = Callable[
    [MessageData, Sequence[ThreadCandidate], Sequence[ThreadCandidate]], ThreadChoice
]


@dataclass(slots=True)
class IngestResult:
    """What one batch did: new message ids, UIDs linked to existing messages, UIDs already there."""

    created: list[int] = field(default_factory=list)
    linked: list[int] = field(default_factory=list)
    already_present: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class MessageSummary:
    id: int
    thread_id: int | None
    subject: str
    from_email: str | None
    from_name: str | None
    date: datetime | None
    snippet: str
    flags: tuple[str, ...]
    state: str


@dataclass(frozen=True, slots=True)
class MessageDetail:
    summary: MessageSummary
    message_id: str | None
    dedupe_key: str
    to: tuple[AddressData, ...]
    cc: tuple[AddressData, ...]
    text: str | None
    html: str | None
    raw_blob_key: str | None
    truncated: bool
    defects: tuple[str, ...]
    locations: tuple[tuple[int, int], ...]
    attachments: tuple[AttachmentData, ...]


def _addr_json(addrs: Iterable[AddressData]) -> list[dict[str, Any]]:
    return [{"name": a.name, "email": a.email} for a in addrs]


def _addr_tuple(items: Iterable[Mapping[str, Any]]) -> tuple[AddressData, ...]:
    return tuple(AddressData(i.get("name"), i.get("email") or "") for i in items)


def _chunks(values: Sequence[Any], size: int = _IN_CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _in(
    s: Session, column: ColumnElement[Any] | QueryableAttribute[Any], values: Sequence[Any]
) -> ColumnElement[bool]:
    """``column IN (values)``; on PostgreSQL ``column = ANY(:array)`` instead: one parameter
    whatever the count, so the statement's text is the same every batch and psycopg prepares it
    once, where ``IN`` renders a placeholder per value into a new text that psycopg re-parses in
    Python on every call (too long for its cache)."""
    if s.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
    return column.in_(values)


def _storable_item(item: IncomingMessage) -> IncomingMessage:
    if item.data.storable_form:
        return item  # made storable where it was built (the parse workers)
    data = storable(item.data)
    return item if data is item.data else replace(item, data=data)


_SelectT = TypeVar("_SelectT", bound=Select[Any])


def where_in_folder_or_thread(
    query: _SelectT, *, folder_id: int | None = None, thread_id: int | None = None
) -> _SelectT:
    """``query`` over :class:`MessageRow` narrowed to the messages with a location in
    ``folder_id`` (one message may live in several folders) and/or in thread ``thread_id``."""
    if folder_id is not None:
        query = query.where(
            MessageRow.id.in_(
                select(MessageLocationRow.message_id).where(
                    MessageLocationRow.folder_id == folder_id
                )
            )
        )
    if thread_id is not None:
        query = query.where(MessageRow.thread_id == thread_id)
    return query


def _summary(row: MessageRow) -> MessageSummary:
    return MessageSummary(
        id=row.id,
        thread_id=row.thread_id,
        subject=row.subject,
        from_email=row.from_email,
        from_name=row.from_name,
        date=row.date,
        snippet=row.snippet,
        flags=tuple(sorted(row.flags or ())),
        state=row.state,
    )


class _GrowthStatistics:
    """Keeps PostgreSQL's statistics of the tables a backfill fills in step with them.

    The ingest's lookups (a batch's Message-IDs, references and subject keys, its UIDs
    already stored) are planned from the statistics. Autovacuum refreshes them a minute or
    more after a table has changed by a tenth, so during an account's first backfill they
    say the account has a few dozen rows when it has thousands, and the planner picks a scan
    of the account's rows per lookup: every batch slower than the last (measured: a lookup of
    200 Message-IDs reading all 23,000 of the account's rows, 45 ms a batch). So: ANALYZE
    those tables when the messages this process created for an account since it started
    reach 1,000, then each time they grow by a quarter (or 1,000): about forty times for a
    million messages, each reading a bounded sample (ANALYZE reads at most 30,000 rows of a
    table at the default statistics target)."""

    TABLES = "messages, message_refs, message_subject_keys, message_locations, threads"

    def __init__(self, engine: Engine, first: int = 1000) -> None:
        self.engine = engine
        self.first = first
        self._lock = threading.Lock()
        self._created: dict[int, int] = {}
        self._next: dict[int, int] = {}

    def grew(self, account_id: int, created: int) -> bool:
        """Count ``created`` new messages of the account; ANALYZE when a mark is reached
        (True). A failure is logged and costs nothing but the plan."""
        with self._lock:
            total = self._created.get(account_id, 0) + created
            self._created[account_id] = total
            due = total >= self._next.get(account_id, self.first)
            if due:
                self._next[account_id] = total + max(self.first, total // 4)
        if not due:
            return False
        try:
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text(f"ANALYZE {self.TABLES}"))
        except SQLAlchemyError as exc:
            log.warning("could not refresh the statistics: %s", database_failure(exc))
            return False
        return True


def growth_statistics(engine: Engine) -> _GrowthStatistics | None:
    """The engine's :class:`_GrowthStatistics` (one per engine); None on SQLite (its planner
    does not take row counts from sampled statistics the same way, and ANALYZE there would
    hold the write lock)."""
    if engine.dialect.name != "postgresql":
        return None
    return per_engine(engine, "growth_statistics", lambda: _GrowthStatistics(engine))


class MessageStore:
    """Message SQL over one SQLAlchemy engine (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        #: Called (no arguments) after a batch that created messages has committed: wakes
        #: background work over new mail (the search indexer). Never inside the transaction.
        self.after_ingest: list[Callable[[], None]] = []
        self._growth = growth_statistics(engine)

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # -- folder checkpoint ---------------------------------------------------------------------

    def folder_checkpoint(self, folder_id: int) -> FolderCheckpoint:
        """The folder's sync state as the pure planner wants it."""
        try:
            with self._session() as s:
                row = s.get(FolderRow, folder_id)
                if row is None:
                    raise NotFound(f"folder {folder_id} does not exist")
                return FolderCheckpoint(
                    uidvalidity=row.uidvalidity,
                    uidnext=row.uidnext,
                    highestmodseq=row.highestmodseq,
                    backfill_done=row.backfill_done,
                    backfill_low_uid=row.backfill_low_uid,
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"could not read folder {folder_id}: {database_failure(exc)}") from exc

    def reset_folder(
        self,
        folder_id: int,
        *,
        uidvalidity: int,
        uidnext: int | None,
        highestmodseq: int | None,
        exists_count: int | None,
    ) -> int:
        """Start (or restart) a folder under a new UIDVALIDITY (RFC 3501 §2.3.1.1).

        Every stored location of the folder is void: they are deleted and the backfill cursor is
        cleared, in one transaction. The messages stay; the next backfill re-links them by dedupe
        key, so a UIDVALIDITY change never duplicates a message. ``uidnext`` becomes the covered
        bound: backfill takes the UIDs below it, live sync those from it on. Returns the number of
        locations dropped.
        """
        try:
            with self._session() as s, s.begin():
                row = s.get(FolderRow, folder_id, with_for_update=True)
                if row is None:
                    raise NotFound(f"folder {folder_id} does not exist")
                dropped = _rowcount(
                    s.execute(
                        delete(MessageLocationRow).where(MessageLocationRow.folder_id == folder_id)
                    )
                )
                row.uidvalidity = uidvalidity
                row.uidnext = uidnext
                row.highestmodseq = highestmodseq
                row.exists_count = exists_count
                row.backfill_done = False
                row.backfill_low_uid = None
                row.backfill_total = None
                row.backfill_done_count = 0
                return int(dropped or 0)
        except SQLAlchemyError as exc:
            raise StoreError(
                f"could not reset folder {folder_id}: {database_failure(exc)}"
            ) from exc

    def forget_folder(self, folder_id: int) -> int:
        """The folder is gone from the server: drop its locations and its sync state.

        Messages stay (other folders may hold them; what a vanished copy means for the CRM's
        copy is the toggle rules' call). Returns the number of locations dropped.
        """
        try:
            with self._session() as s, s.begin():
                losing = list(
                    s.scalars(
                        select(MessageLocationRow.message_id).where(
                            MessageLocationRow.folder_id == folder_id
                        )
                    )
                )
                dropped = _rowcount(
                    s.execute(
                        delete(MessageLocationRow).where(MessageLocationRow.folder_id == folder_id)
                    )
                )
                _mark_gone(s, losing, "unsynced")
                s.execute(
                    update(FolderRow)
                    .where(FolderRow.id == folder_id)
                    .values(
                        uidvalidity=None,
                        uidnext=None,
                        highestmodseq=None,
                        backfill_done=False,
                        backfill_low_uid=None,
                        backfill_total=None,
                        backfill_done_count=0,
                    )
                )
                return dropped
        except SQLAlchemyError as exc:
            raise StoreError(
                f"could not forget folder {folder_id}: {database_failure(exc)}"
            ) from exc

    def update_checkpoint(self, folder_id: int, update_: FolderCheckpointUpdate) -> None:
        """Set checkpoint columns on their own (no data goes with them)."""
        try:
            with self._session() as s, s.begin():
                self._apply_checkpoint(s, folder_id, update_)
        except SQLAlchemyError as exc:
            raise StoreError(
                f"could not update folder {folder_id}: {database_failure(exc)}"
            ) from exc

    @staticmethod
    def _apply_checkpoint(s: Session, folder_id: int, upd: FolderCheckpointUpdate) -> None:
        _require_folder(MessageStore._checkpoint_update(s, folder_id, upd), folder_id)

    @staticmethod
    def _checkpoint_update(s: Session, folder_id: int, upd: FolderCheckpointUpdate) -> Any:
        """The checkpoint's UPDATE; its result, for :func:`_require_folder` (which, in a
        pipeline, can only tell once the pipeline has been sent)."""
        # One UPDATE (it locks the row as SELECT ... FOR UPDATE did), not a read then a write:
        # a round trip less in every batch's transaction.
        values: dict[str, Any] = {"last_seen_at": utcnow()}
        for name in (
            "uidvalidity",
            "uidnext",
            "highestmodseq",
            "exists_count",
            "backfill_done",
            "backfill_low_uid",
            "backfill_total",
        ):
            value = getattr(upd, name)
            if value is not None:
                values[name] = value
        if upd.backfill_done_increment:
            values["backfill_done_count"] = (
                func.coalesce(FolderRow.backfill_done_count, 0) + upd.backfill_done_increment
            )
        return s.execute(
            update(FolderRow)
            .where(FolderRow.id == folder_id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )

    # -- reads the engine needs ----------------------------------------------------------------

    def location_flags(self, folder_id: int) -> dict[int, frozenset[str]]:
        """UID -> flags of every stored location in the folder (the base of every diff)."""
        try:
            with self._session() as s:
                rows = s.execute(
                    select(MessageLocationRow.uid, MessageLocationRow.flags).where(
                        MessageLocationRow.folder_id == folder_id
                    )
                ).all()
        except SQLAlchemyError as exc:
            raise StoreError(
                f"could not read locations of folder {folder_id}: {database_failure(exc)}"
            ) from exc
        return {int(uid): frozenset(flags or ()) for uid, flags in rows}

    def stored_key_facts(self, account_id: int, keys: Collection[str]) -> dict[str, KeyFacts]:
        """Which of ``keys`` the account already has, each with the stored message's sender
        and Date (so the sync can tell a reused Message-ID from a copy before it fetches).
        Keys are stored in :func:`storable` form; the answer is in the caller's form."""
        asked: dict[str, list[str]] = {}
        for k in set(keys):
            asked.setdefault(storable(k), []).append(k)
        wanted = sorted(asked)
        found: dict[str, KeyFacts] = {}
        try:
            with self._session() as s:
                for part in _chunks(wanted):
                    for key, sender, when in s.execute(
                        select(MessageRow.dedupe_key, MessageRow.from_email, MessageRow.date).where(
                            MessageRow.account_id == account_id,
                            _in(s, MessageRow.dedupe_key, part),
                        )
                    ):
                        for k in asked[key]:
                            found[k] = KeyFacts(sender, _aware(when))
        except SQLAlchemyError as exc:
            raise StoreError(f"could not look up messages: {database_failure(exc)}") from exc
        return found

    # -- ingest --------------------------------------------------------------------------------

    def ingest_batch(
        self,
        account_id: int,
        folder_id: int,
        items: Sequence[IncomingMessage],
        checkpoint: FolderCheckpointUpdate,
        *,
        chooser: ThreadChooser,
    ) -> IngestResult:
        """Store a fetched batch and move the folder's cursor, all in ONE transaction.

        For each item: a location already at ``(folder, uid)`` is left alone (a re-run after a
        crash); a known dedupe key gains a location; otherwise the message is inserted with its
        references and attachments and put in a thread; a known message found in a Sent folder
        also gains what only the sender's copy has (Bcc, outbound). Text is stored in
        :func:`storable` form. Either the whole batch and its checkpoint are stored, or nothing
        is.

        Set-based, not row by row: the thread candidates of the whole batch are read with three
        queries, decisions are made in memory (messages of the same batch see each other), and
        rows are written with multi-row INSERTs. Measured ~10x faster than an ORM flush per
        message, which dominated backfill time.
        """
        # Made storable before the transaction opens (SQLite holds its write lock meanwhile).
        items = [_storable_item(i) for i in items]
        try:
            result = self._ingest(account_id, folder_id, items, checkpoint, chooser)
        except _Refused:
            result = self._ingest_in_parts(account_id, folder_id, items, checkpoint, chooser)
        if result.created:
            if self._growth is not None:
                self._growth.grew(account_id, len(result.created))
            for wake in self.after_ingest:
                wake()
        return result

    def _ingest(
        self,
        account_id: int,
        folder_id: int,
        items: Sequence[IncomingMessage],
        checkpoint: FolderCheckpointUpdate | None,
        chooser: ThreadChooser,
    ) -> IngestResult:
        """One transaction; :class:`_Refused` when the database refused what was written
        (not when it is unavailable: that is a :class:`StoreError` to retry later)."""
        result = IngestResult()
        try:
            with self._session() as s, s.begin():
                written: list[Any] = []

                def move_cursor() -> None:
                    if checkpoint is not None:
                        written.append(self._checkpoint_update(s, folder_id, checkpoint))

                _BatchIngest(s, account_id, folder_id, chooser, result).run(items, move_cursor)
                for done in written:
                    _require_folder(done, folder_id)
                send_wakeup(s)  # the API processes' fan-out (store.wakeups)
        except SQLAlchemyError as exc:
            error = StoreError(
                f"could not store a batch for folder {folder_id}: {database_failure(exc)}"
            )
            if _refused_by_database(exc):
                raise _Refused(error, exc) from exc
            raise error from exc
        except OverflowError as exc:
            # sqlite3 raises this unwrapped for an integer beyond 64 bits (a Gmail id is
            # unsigned): a value of the message, refused like any other.
            error = StoreError(
                f"could not store a batch for folder {folder_id}: {database_failure(exc)}"
            )
            raise _Refused(error, exc) from exc
        return result

    def _ingest_in_parts(
        self,
        account_id: int,
        folder_id: int,
        items: Sequence[IncomingMessage],
        checkpoint: FolderCheckpointUpdate,
        chooser: ThreadChooser,
    ) -> IngestResult:
        """The database refused a batch: store it again in halves, and halves of the half
        refused, down to the message at fault, which is stored without its content
        (:func:`minimal_message`, then :func:`bare_message`); then move the cursor. So one
        poison message costs ~2 log2(n) transactions, not n (``bench/poison_ingest_bench.py``,
        200 messages, loaded machine: 2.6-3.5x a clean batch on SQLite and PostgreSQL; one by
        one it was ~25x). A database that refuses even the bare row fails the batch as
        before."""
        result = IngestResult()
        self._ingest_split(account_id, folder_id, list(items), chooser, result)
        self.update_checkpoint(folder_id, checkpoint)
        return result

    def _ingest_split(
        self,
        account_id: int,
        folder_id: int,
        items: list[IncomingMessage],
        chooser: ThreadChooser,
        result: IngestResult,
    ) -> None:
        # Halves in order: a message's copy later in the batch still links to it.
        pending = [items]
        while pending:
            part = pending.pop(0)
            try:
                done = self._ingest(account_id, folder_id, part, None, chooser)
            except _Refused as refused:
                if len(part) > 1:
                    half = len(part) // 2
                    pending[:0] = [part[:half], part[half:]]
                    continue
                done = self._ingest_fallback(account_id, folder_id, part[0], chooser, refused)
            result.created += done.created
            result.linked += done.linked
            result.already_present += done.already_present

    def _ingest_fallback(
        self,
        account_id: int,
        folder_id: int,
        item: IncomingMessage,
        chooser: ThreadChooser,
        refused: _Refused,
    ) -> IngestResult:
        """The one message refused: its minimal row, else its bare row, else the error."""
        for fallback in (minimal_message, bare_message):
            reason = _REFUSED_REASON.format(type(refused.__cause__).__name__)
            attempt = replace(item, data=fallback(item.data, reason))
            try:
                return self._ingest(account_id, folder_id, [attempt], None, chooser)
            except _Refused as again:
                refused = again
        raise refused.error from refused.__cause__

    @staticmethod
    def _present_uids(s: Session, folder_id: int, uids: Sequence[int]) -> set[int]:
        present: set[int] = set()
        for part in _chunks(sorted(set(uids))):
            present.update(
                s.scalars(
                    select(MessageLocationRow.uid).where(
                        MessageLocationRow.folder_id == folder_id,
                        _in(s, MessageLocationRow.uid, part),
                    )
                )
            )
        return present

    # -- live changes ----------------------------------------------------------------------------

    def apply_remote_changes(
        self,
        folder_id: int,
        *,
        flag_updates: Mapping[int, frozenset[str]] = {},
        removed_uids: Collection[int] = (),
        modseqs: Mapping[int, int] = {},
        checkpoint: FolderCheckpointUpdate | None = None,
    ) -> tuple[int, int]:
        """Apply flag changes and expunges to stored locations, with the checkpoint, atomically.

        A removed location is deleted; the message itself stays (whether the CRM copy is archived
        or deleted is the toggle rules' decision, not the mirror's). Returns (updated, removed).

        The message's own (CRM) flags follow the location's, except where a CRM change of the
        same flag waits in the outbox: then the later change wins
        (``rules.two_way.merge_remote_flags``; the remote change counts as seen now).
        """
        seen_at = utcnow()
        changed: list[int] = []
        try:
            with self._session() as s, s.begin():
                # Set-based: "mark all as read" on 10,000 messages is a few statements.
                for part in _chunks(sorted(flag_updates)):
                    rows = s.execute(
                        select(
                            MessageLocationRow.id,
                            MessageLocationRow.uid,
                            MessageLocationRow.message_id,
                            MessageLocationRow.flags,
                        ).where(
                            MessageLocationRow.folder_id == folder_id,
                            MessageLocationRow.uid.in_(part),
                        )
                    ).all()
                    changed.extend(_update_flags(s, rows, flag_updates, modseqs, seen_at))
                updated = len(changed)
                removed = 0
                losing: list[int] = []
                for part in _chunks(sorted(set(removed_uids))):
                    losing.extend(
                        s.scalars(
                            select(MessageLocationRow.message_id).where(
                                MessageLocationRow.folder_id == folder_id,
                                MessageLocationRow.uid.in_(part),
                            )
                        )
                    )
                    removed += _rowcount(
                        s.execute(
                            delete(MessageLocationRow).where(
                                MessageLocationRow.folder_id == folder_id,
                                MessageLocationRow.uid.in_(part),
                            )
                        )
                    )
                # Their last location gone: why is for the engine to find out (reason NULL).
                _mark_gone(s, losing, None)
                # What leaving this folder means for the CRM copy (store.remote_state).
                settle_after_removal(s, dict.fromkeys(losing, (folder_id,)))
                # Webhooks hear of it in the same transaction (one query when none listens).
                queue_changed_messages(s, changed, losing)
                if checkpoint is not None:
                    self._apply_checkpoint(s, folder_id, checkpoint)
        except SQLAlchemyError as exc:
            raise StoreError(
                f"could not apply changes to folder {folder_id}: {database_failure(exc)}"
            ) from exc
        return updated, removed

    def apply_notified_flags(
        self, folder_id: int, notified: Mapping[int, tuple[frozenset[str], int | None]]
    ) -> int:
        """Apply the flag changes the server announced in IDLE (``* n FETCH (UID u FLAGS (...)
        MODSEQ (m))``; ``notified``: UID -> (flags, MODSEQ or None)) to stored locations, as
        :meth:`apply_remote_changes` does (conflict rule, webhooks) but without a checkpoint:
        the folder's HIGHESTMODSEQ stays where the last sync left it, so that sync's
        ``CHANGEDSINCE`` re-reads these changes (a no-op then) and nothing it has not seen is
        ever skipped. A UID not stored (new, not yet synced) is left to the sync; flags equal
        to the stored ones (the echo of the CRM's own STORE) change nothing; an announcement
        whose MODSEQ is not above the location's is stale and ignored. Returns how many
        locations changed.
        """
        seen_at = utcnow()
        changed: list[int] = []
        try:
            with self._session() as s, s.begin():
                for part in _chunks(sorted(notified)):
                    rows = s.execute(
                        select(
                            MessageLocationRow.id,
                            MessageLocationRow.uid,
                            MessageLocationRow.message_id,
                            MessageLocationRow.flags,
                            MessageLocationRow.modseq,
                        ).where(
                            MessageLocationRow.folder_id == folder_id,
                            MessageLocationRow.uid.in_(part),
                        )
                    ).all()
                    fresh = [r for r in rows if _notified_change(r, *notified[r.uid])]
                    if not fresh:
                        continue
                    flag_updates = {r.uid: notified[r.uid][0] for r in fresh}
                    modseqs = {r.uid: mod for r in fresh if (mod := notified[r.uid][1]) is not None}
                    changed.extend(_update_flags(s, fresh, flag_updates, modseqs, seen_at))
                if changed:
                    queue_changed_messages(s, changed, [])
        except SQLAlchemyError as exc:
            raise StoreError(
                f"could not apply flag changes to folder {folder_id}: {database_failure(exc)}"
            ) from exc
        return len(changed)

    # -- messages gone from the mailbox -----------------------------------------------------------

    def gone_unexplained(self, account_id: int, limit: int) -> list[tuple[int, str | None]]:
        """Up to ``limit`` messages of the account whose last location went and whose reason
        is still to be found: (id, Message-ID header), oldest first."""
        try:
            with self._session() as s:
                rows = s.execute(
                    select(MessageRow.id, MessageRow.message_id_header)
                    .where(
                        MessageRow.account_id == account_id,
                        MessageRow.gone_from_mailbox_at.is_not(None),
                        MessageRow.gone_reason.is_(None),
                    )
                    .order_by(MessageRow.gone_from_mailbox_at, MessageRow.id)
                    .limit(limit)
                ).all()
        except SQLAlchemyError as exc:
            raise StoreError(f"could not look up messages: {database_failure(exc)}") from exc
        return [(int(i), None if h is None else str(h)) for i, h in rows]

    def set_gone_reasons(
        self,
        reasons: Mapping[int, str],
        *,
        account_id: int | None = None,
        found_in: Mapping[int, int] = {},
    ) -> None:
        """Record why each message left the mailbox (only while it still has no location),
        and, given ``account_id``, what that means for its CRM state: ``moved`` to the
        unsynced folder ``found_in`` names, or ``expunged`` (``rules.two_way``; ``unknown``
        decides nothing)."""
        try:
            with self._session() as s, s.begin():
                if account_id is not None:
                    explained: dict[int, int | None] = {
                        mid: found_in.get(mid)
                        for mid, reason in reasons.items()
                        if reason == "expunged" or (reason == "moved" and mid in found_in)
                    }
                    settle_explained(s, account_id, explained)
                by_reason: dict[str, list[int]] = {}
                for mid, reason in reasons.items():
                    by_reason.setdefault(reason, []).append(mid)
                for reason, ids in by_reason.items():
                    for part in _chunks(sorted(ids)):
                        s.execute(
                            update(MessageRow)
                            .where(
                                MessageRow.id.in_(part),
                                MessageRow.gone_from_mailbox_at.is_not(None),
                            )
                            .values(gone_reason=reason)
                        )
        except SQLAlchemyError as exc:
            raise StoreError(f"could not look up messages: {database_failure(exc)}") from exc

    # -- counts and reads for surfaces -----------------------------------------------------------

    def count_messages(self, account_id: int) -> int:
        with self._session() as s:
            return int(
                s.scalar(
                    select(func.count())
                    .select_from(MessageRow)
                    .where(MessageRow.account_id == account_id)
                )
                or 0
            )

    def count_locations(self, folder_id: int) -> int:
        with self._session() as s:
            return int(
                s.scalar(
                    select(func.count())
                    .select_from(MessageLocationRow)
                    .where(MessageLocationRow.folder_id == folder_id)
                )
                or 0
            )

    def count_threads(self, account_id: int) -> int:
        with self._session() as s:
            return int(
                s.scalar(
                    select(func.count())
                    .select_from(ThreadRow)
                    .where(ThreadRow.account_id == account_id)
                )
                or 0
            )

    def list_messages(
        self,
        account_id: int,
        *,
        folder_id: int | None = None,
        thread_id: int | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[MessageSummary]:
        """Messages newest first, optionally only those in one folder or one thread."""
        query = select(MessageRow).where(
            MessageRow.account_id == account_id, shown(MessageRow.state)
        )
        query = where_in_folder_or_thread(query, folder_id=folder_id, thread_id=thread_id)
        query = (
            query.order_by(MessageRow.date.desc().nulls_last(), MessageRow.id.desc())
            .limit(limit)
            .offset(offset)
        )
        with self._session() as s:
            return [_summary(r) for r in s.scalars(query)]

    def get_message(self, message_id: int) -> MessageDetail:
        """One message with its locations and attachments; NotFound if absent."""
        with self._session() as s:
            row = s.get(MessageRow, message_id)
            if row is None:
                raise NotFound(f"message {message_id} does not exist")
            return MessageDetail(
                summary=_summary(row),
                message_id=row.message_id_header,
                dedupe_key=row.dedupe_key,
                to=_addr_tuple(row.to_addrs or ()),
                cc=_addr_tuple(row.cc_addrs or ()),
                text=row.text_body,
                html=row.html_body,
                raw_blob_key=row.raw_blob_key,
                truncated=row.truncated,
                defects=tuple(row.defects or ()),
                locations=tuple(sorted((loc.folder_id, loc.uid) for loc in row.locations)),
                attachments=tuple(
                    AttachmentData(
                        filename=a.filename,
                        content_type=a.content_type,
                        size=a.size,
                        content_id=a.content_id,
                        inline=a.inline,
                        blob_key=a.blob_key,
                        section=a.section,
                    )
                    for a in row.attachments
                ),
            )

    def folder_contents(self, folder_id: int) -> dict[int, str]:
        """UID -> dedupe key of every location in the folder (tests and consistency checks)."""
        with self._session() as s:
            rows = s.execute(
                select(MessageLocationRow.uid, MessageRow.dedupe_key)
                .join(MessageRow, MessageRow.id == MessageLocationRow.message_id)
                .where(MessageLocationRow.folder_id == folder_id)
            ).all()
        return {int(uid): key for uid, key in rows}


_MESSAGES = cast(Table, MessageRow.__table__)
_MESSAGE_REFS = cast(Table, MessageRefRow.__table__)
_SUBJECT_KEYS = cast(Table, MessageSubjectKeyRow.__table__)
_THREADS = cast(Table, ThreadRow.__table__)
# Stand-in ids of threads created in a batch before they are inserted: above any real id.
_PENDING_THREAD_BASE = 1 << 62
_ATTACHMENTS = cast(Table, AttachmentRow.__table__)
_LOCATIONS = cast(Table, MessageLocationRow.__table__)

_CANDIDATE_COLUMNS = (
    MessageRow.id,
    MessageRow.thread_id,
    MessageRow.message_id_header,
    MessageRow.reference_ids,
    MessageRow.in_reply_to,
    MessageRow.normalized_subject,
    MessageRow.participants,
    MessageRow.date,
)


def _candidate_from(row: Any) -> ThreadCandidate:
    parents: list[str] = list(row.reference_ids or ())
    if row.in_reply_to and row.in_reply_to not in parents:
        parents.append(row.in_reply_to)
    return ThreadCandidate(
        id=row.id,
        thread_id=row.thread_id,
        message_id=row.message_id_header,
        parent_ids=tuple(parents),
        normalized_subject=row.normalized_subject,
        participants=tuple(row.participants or ()),
        date=row.date,
    )


class _BatchIngest:
    """One batch's ingest inside an open transaction (see :meth:`MessageStore.ingest_batch`)."""

    def __init__(
        self,
        s: Session,
        account_id: int,
        folder_id: int,
        chooser: ThreadChooser,
        result: IngestResult,
    ) -> None:
        self.s = s
        self.account_id = account_id
        self.folder_id = folder_id
        self.chooser = chooser
        self.result = result
        # Candidate indexes: by Message-ID, by referenced id, by normalised subject.
        self.by_mid: dict[str, dict[int, ThreadCandidate]] = {}
        self.by_ref: dict[str, dict[int, ThreadCandidate]] = {}
        self.by_subject: dict[str, dict[int, ThreadCandidate]] = {}
        # Thread ids merged away in this batch -> the thread they now belong to.
        self.alias: dict[int, int] = {}
        self.touched_threads: set[int] = set()
        self.gm_threads: dict[int, int] = {}
        # New threads of this batch, by stand-in id, inserted together at the end.
        self.pending_threads: dict[int, dict[str, Any]] = {}
        self.dropped_pending: set[int] = set()
        # Subject keys gained by stored messages (Bcc learnt from a Sent copy).
        self.new_subject_keys: list[dict[str, Any]] = []
        # Stored messages whose CRM state a new copy may change (not active, or gone from
        # the synced folders): read with the lookup, so the common case costs no query.
        self.restate: set[int] = set()

    def _resolve(self, thread_id: int | None) -> int | None:
        while thread_id is not None and thread_id in self.alias:
            thread_id = self.alias[thread_id]
        return thread_id

    def _index(self, c: ThreadCandidate) -> None:
        if c.message_id:
            self.by_mid.setdefault(c.message_id, {})[c.id] = c
        for ref in c.parent_ids:
            self.by_ref.setdefault(ref, {})[c.id] = c
        if c.normalized_subject:
            self.by_subject.setdefault(c.normalized_subject, {})[c.id] = c

    def _load_candidates(self, new: Sequence[MessageData]) -> None:
        s, acct = self.s, self.account_id
        ids = sorted(
            {d.message_id for d in new if d.message_id} | {p for d in new for p in d.parent_ids}
        )
        rows: dict[int, Any] = {}
        if s.get_bind().dialect.name == "postgresql":
            # One statement for the three lookups (one round trip, not three: on a loaded
            # machine each is a wait for two processes to be scheduled).
            for row in self._candidate_rows_pg(ids, new):
                rows[row.id] = row
            ids = []
        for part in _chunks(ids):
            for row in s.execute(
                select(*_CANDIDATE_COLUMNS).where(
                    MessageRow.account_id == acct, _in(s, MessageRow.message_id_header, part)
                )
            ):
                rows[row.id] = row
            for row in s.execute(
                select(*_CANDIDATE_COLUMNS).where(
                    MessageRow.id.in_(
                        select(MessageRefRow.message_id).where(
                            MessageRefRow.account_id == acct, _in(s, MessageRefRow.ref, part)
                        )
                    )
                )
            ):
                rows[row.id] = row
        if s.get_bind().dialect.name != "postgresql":
            for row in self._same_subject_rows(new):
                rows[row.id] = row
        for row in rows.values():
            self._index(_candidate_from(row))
        gm = sorted({d.gm_thrid for d in new if d.gm_thrid is not None})
        for part in _chunks(gm):
            for tid, gm_thrid in s.execute(
                select(ThreadRow.id, ThreadRow.gm_thrid).where(
                    ThreadRow.account_id == acct, _in(s, ThreadRow.gm_thrid, part)
                )
            ):
                self.gm_threads.setdefault(int(gm_thrid), int(tid))

    def _candidate_rows_pg(self, ids: Sequence[str], new: Sequence[MessageData]) -> Iterable[Any]:
        """PostgreSQL: the stored messages whose Message-ID is one of ``ids``, that refer to
        one of ``ids``, or that share a subject key with a message of ``new`` within the date
        window (see :meth:`_same_subject_rows`), in one statement with array parameters."""
        s, acct = self.s, self.account_id
        keys, span = self._subject_span(new)
        parts: list[Select[Any]] = []
        if ids:
            parts.append(
                select(MessageRow.id).where(
                    MessageRow.account_id == acct, _in(s, MessageRow.message_id_header, ids)
                )
            )
            parts.append(
                select(MessageRefRow.message_id).where(
                    MessageRefRow.account_id == acct, _in(s, MessageRefRow.ref, ids)
                )
            )
        if keys and span is not None:
            parts.append(
                select(_SUBJECT_KEYS.c.message_id).where(
                    _SUBJECT_KEYS.c.account_id == acct,
                    _in(s, _SUBJECT_KEYS.c.key, sorted(keys)),
                    _SUBJECT_KEYS.c.date.between(*span),
                )
            )
        if not parts:
            return ()
        return s.execute(
            select(*_CANDIDATE_COLUMNS).where(MessageRow.id.in_(union(*parts).scalar_subquery()))
        )

    @staticmethod
    def _subject_span(
        new: Sequence[MessageData],
    ) -> tuple[set[str], tuple[datetime, datetime] | None]:
        """The subject keys of the dated messages of ``new`` and the date window around them."""
        keys: set[str] = set()
        dates: list[datetime] = []
        for d in new:
            found = d.subject_keys
            if found and d.date is not None:
                keys.update(found)
                dates.append(d.date)
        if not keys:
            return keys, None
        return keys, (min(dates) - _SAME_SUBJECT_WINDOW, max(dates) + _SAME_SUBJECT_WINDOW)

    def _same_subject_rows(self, new: Sequence[MessageData]) -> Iterable[Any]:
        """Stored messages that may join a message of the batch by subject: those filed under
        one of its subject keys (same normalised subject and a shared counterpart; see
        :func:`correspond.mail.threading.subject_keys`) and dated within the window around the
        batch's dates.

        The index on (account, key, date) makes this a handful of short range scans however
        common the subject: reading every same-subject row and filtering in Python was most of
        a backfill's commit time. Messages without a Date never join by subject, so they have
        no keys and look none up.
        """
        keys, span = self._subject_span(new)
        if span is None:
            return
        lo, hi = span
        for part in _chunks(sorted(keys)):
            yield from self.s.execute(
                select(*_CANDIDATE_COLUMNS).where(
                    MessageRow.id.in_(
                        select(_SUBJECT_KEYS.c.message_id).where(
                            _SUBJECT_KEYS.c.account_id == self.account_id,
                            _in(self.s, _SUBJECT_KEYS.c.key, part),
                            _SUBJECT_KEYS.c.date.between(lo, hi),
                        )
                    )
                )
            )

    def _candidates(self, data: MessageData) -> tuple[list[ThreadCandidate], list[ThreadCandidate]]:
        related: dict[int, ThreadCandidate] = {}
        for p in data.parent_ids:
            related.update(self.by_mid.get(p, {}))
            related.update(self.by_ref.get(p, {}))
        if data.message_id:
            related.update(self.by_ref.get(data.message_id, {}))
        same: list[ThreadCandidate] = []
        counterparts = frozenset(data.counterparts)
        when = data.date
        if data.normalized_subject and counterparts and when is not None:
            # Only dated messages sharing a counterpart can be chosen by subject; the nearest
            # in time come first, so the cap never hides the conversation closest to ``when``.
            for c in self.by_subject.get(data.normalized_subject, {}).values():
                if (
                    c.date is not None
                    and abs(c.date - when) <= _SAME_SUBJECT_WINDOW
                    and not counterparts.isdisjoint(c.participants)
                ):
                    same.append(c)
            same.sort(key=lambda c: (abs(c.date - when), c.id))  # type: ignore[operator]
            same = same[:_SAME_SUBJECT_LIMIT]

        def fix(c: ThreadCandidate) -> ThreadCandidate:
            tid = self._resolve(c.thread_id)
            if tid == c.thread_id:
                return c
            return ThreadCandidate(
                c.id, tid, c.message_id, c.parent_ids, c.normalized_subject, c.participants, c.date
            )

        ordered = sorted(related.values(), key=lambda c: c.id)
        return [fix(c) for c in ordered], [fix(c) for c in same]

    def _new_thread(self, data: MessageData) -> int:
        """A thread for ``data``, inserted with the batch's others at the end of the batch
        (one executemany, not one INSERT ... RETURNING per new conversation); until then it
        has a stand-in id above every stored one, so "lowest id wins" still prefers stored
        threads."""
        tid = _PENDING_THREAD_BASE + len(self.pending_threads) + len(self.dropped_pending)
        self.pending_threads[tid] = {
            "account_id": self.account_id,
            "subject": data.subject,
            "gm_thrid": data.gm_thrid,
            "message_count": 0,
            "first_message_at": None,
            "last_message_at": None,
            "created_at": utcnow(),
        }
        return tid

    def _merge(self, into: int, others: Sequence[int]) -> int:
        """Fold ``others`` into one thread; returns the surviving thread (``into``, or the
        lowest stored one when ``into`` is a stand-in and a stored thread is involved)."""
        group = {t for t in {self._resolve(o) for o in (into, *others)} if t is not None}
        stored = sorted(t for t in group if t < _PENDING_THREAD_BASE)
        if stored and into >= _PENDING_THREAD_BASE:
            into = stored[0]
        others = [t for t in group if t != into]
        if not others:
            return into
        stored_others = [t for t in others if t < _PENDING_THREAD_BASE]
        pending_others = [t for t in others if t >= _PENDING_THREAD_BASE]
        gm_thrid: int | None = None
        if stored_others:
            self.s.execute(
                update(MessageRow)
                .where(
                    MessageRow.account_id == self.account_id,
                    MessageRow.thread_id.in_(stored_others),
                )
                .values(thread_id=into)
            )
            gm = self.s.execute(
                select(ThreadRow.gm_thrid).where(
                    ThreadRow.id.in_(stored_others), ThreadRow.gm_thrid.is_not(None)
                )
            ).first()
            gm_thrid = None if gm is None else int(gm[0])
            self.s.execute(delete(ThreadRow).where(ThreadRow.id.in_(stored_others)))
        for o in pending_others:
            row = self.pending_threads.pop(o)
            self.dropped_pending.add(o)
            if gm_thrid is None and row["gm_thrid"] is not None:
                gm_thrid = int(row["gm_thrid"])
        if gm_thrid is not None:
            if into >= _PENDING_THREAD_BASE:
                row = self.pending_threads[into]
                if row["gm_thrid"] is None:
                    row["gm_thrid"] = gm_thrid
            else:
                self.s.execute(
                    update(ThreadRow)
                    .where(ThreadRow.id == into, ThreadRow.gm_thrid.is_(None))
                    .values(gm_thrid=gm_thrid)
                )
        for o in others:
            self.alias[o] = into
            self.touched_threads.discard(o)
        self.touched_threads.add(into)
        return into

    def _thread_for(self, data: MessageData) -> int:
        if data.gm_thrid is not None and data.gm_thrid in self.gm_threads:
            # Gmail says which thread a message is in: that beats any heuristic.
            tid = self._resolve(self.gm_threads[data.gm_thrid])
            assert tid is not None
            return tid
        related, same = self._candidates(data)
        choice = self.chooser(data, related, same)
        tid = self._resolve(choice.thread_id)
        if tid is None:
            tid = self._new_thread(data)
        if choice.merge_thread_ids:
            tid = self._merge(tid, choice.merge_thread_ids)
        if data.gm_thrid is not None:
            self.gm_threads.setdefault(data.gm_thrid, tid)
        return tid

    def _insert_pending_threads(self, ids: list[int] | None) -> dict[int, int]:
        """Insert the batch's new threads in one executemany; stand-in id -> real id. ``ids``:
        their ids if already drawn (:func:`_reserve_ids`)."""
        if not self.pending_threads:
            return {}
        standins = list(self.pending_threads)
        ids = _insert_rows(self.s, _THREADS, [self.pending_threads[t] for t in standins], ids)
        return {t: int(i) for t, i in zip(standins, ids, strict=True)}

    def run(self, items: Sequence[IncomingMessage], finish: Callable[[], None]) -> None:
        """Store ``items``; ``finish`` (the checkpoint's write) is called last, among the batch's
        writes: on PostgreSQL those go in one pipeline, one round trip (:func:`_pipelined`)."""
        s = self.s
        present = MessageStore._present_uids(s, self.folder_id, [i.uid for i in items])
        todo: list[IncomingMessage] = []
        for item in items:
            if item.uid in present:
                self.result.already_present.append(item.uid)
            else:
                present.add(item.uid)
                todo.append(item)
        if not todo:
            finish()
            return
        existing: dict[str, int] = {}
        facts: dict[str, KeyFacts] = {}
        # Each location carries its message's list position (the folder list's index).
        sort_of: dict[int, datetime] = {}
        self._look_up(existing, facts, sort_of, {i.data.dedupe_key for i in todo})
        todo = self._distinct_reused_ids(todo, existing, facts, sort_of)
        first_of_key: dict[str, IncomingMessage] = {}
        for item in todo:
            if item.data.dedupe_key not in existing:
                first_of_key.setdefault(item.data.dedupe_key, item)
        new_items = list(first_of_key.values())
        self._load_candidates([i.data for i in new_items])

        # Decide threads in arrival order; later messages of the batch see earlier ones.
        thread_of: dict[str, int] = {}
        for n, item in enumerate(new_items):
            data = item.data
            tid = self._thread_for(data)
            thread_of[data.dedupe_key] = tid
            self.touched_threads.add(tid)
            self._index(
                ThreadCandidate(
                    id=-(n + 1),  # not stored yet: a stand-in id, unique within the batch
                    thread_id=tid,
                    message_id=data.message_id,
                    parent_ids=data.parent_ids,
                    normalized_subject=data.normalized_subject,
                    participants=data.participants,
                    date=data.date,
                )
            )
        # A new thread holds only this batch's messages: its count and dates are known here,
        # so it is inserted complete and skips the re-count below.
        for item in new_items:
            pending = self.pending_threads.get(self._resolve(thread_of[item.data.dedupe_key]) or 0)
            if pending is None:
                continue
            pending["message_count"] += 1
            when = item.data.date or item.data.internaldate
            if when is not None:
                when = _aware(when)
                first, last = pending["first_message_at"], pending["last_message_at"]
                pending["first_message_at"] = when if first is None else min(first, when)
                pending["last_message_at"] = when if last is None else max(last, when)
        # The new threads' and messages' ids in one round trip (None on SQLite: RETURNING).
        reserved = _reserve_ids(
            s, {_THREADS.name: len(self.pending_threads), _MESSAGES.name: len(new_items)}
        )
        created_keys = {i.data.dedupe_key for i in new_items}
        # Read before the writes (they go in a pipeline, which returns no rows until its end):
        # what Sent copies of stored messages add to them.
        enriched = self._sent_copy_changes(
            {
                existing[i.data.dedupe_key]: i.data
                for i in todo
                if i.data.dedupe_key in existing
                and i.data.dedupe_key not in created_keys
                and i.data.direction == "outbound"
            }
        )
        # What a new copy of a stored message means for its CRM state (moved back to INBOX,
        # out of Trash, or found in the folder it was moved to): decided before the writes.
        relinked = self.restate & {
            existing[i.data.dedupe_key]
            for i in todo
            if i.data.dedupe_key in existing and i.data.dedupe_key not in created_keys
        }
        state_changes = (
            settle_after_link(s, home_folders_of(s, relinked), self.folder_id) if relinked else []
        )
        # Every write from here on goes in one pipeline on PostgreSQL: one round trip.
        with _pipelined(s):
            for mid, values in state_changes:
                s.execute(update(_MESSAGES).where(_MESSAGES.c.id == mid).values(values))
            real_thread = self._insert_pending_threads(
                None if reserved is None else reserved[_THREADS.name]
            )

            def final_thread(tid: int) -> int | None:
                resolved = self._resolve(tid)
                return None if resolved is None else real_thread.get(resolved, resolved)

            # Merged-away ids are dropped before mapping: SQLite may hand a deleted id out again.
            touched = {
                t for t in self.touched_threads if t not in self.alias and t < _PENDING_THREAD_BASE
            }
            now = utcnow()
            if new_items:
                rows = [
                    _message_values(
                        self.account_id, i, final_thread(thread_of[i.data.dedupe_key]), now
                    )
                    for i in new_items
                ]
                # Core inserts on the tables, not ORM bulk inserts: the same executemany without
                # the ORM's per-row bookkeeping (a fifth of the commit stage when measured).
                inserted = _insert_rows(
                    s, _MESSAGES, rows, None if reserved is None else reserved[_MESSAGES.name]
                )
                for mid, row in zip(inserted, rows, strict=True):
                    existing[row["dedupe_key"]] = int(mid)
                    sort_of[int(mid)] = row["sort_at"]
                    self.result.created.append(int(mid))
                refs = [
                    {
                        "account_id": self.account_id,
                        "message_id": existing[i.data.dedupe_key],
                        "ref": r,
                    }
                    for i in new_items
                    for r in i.data.parent_ids
                ]
                if refs:
                    s.execute(insert(_MESSAGE_REFS).inline(), refs)
                subject_rows = [
                    {
                        "account_id": self.account_id,
                        "message_id": existing[i.data.dedupe_key],
                        "key": key,
                        "date": i.data.date,
                    }
                    for i in new_items
                    for key in i.data.subject_keys
                ]
                if subject_rows:
                    s.execute(insert(_SUBJECT_KEYS).inline(), subject_rows)
                atts = [
                    {
                        "message_id": existing[i.data.dedupe_key],
                        "filename": a.filename,
                        "content_type": a.content_type,
                        "size": a.size,
                        "content_id": a.content_id,
                        "inline": a.inline,
                        "blob_key": a.blob_key,
                        "section": a.section,
                    }
                    for i in new_items
                    for a in i.data.attachments
                ]
                if atts:
                    s.execute(insert(_ATTACHMENTS).inline(), atts)
            locations = []
            flag_updates: dict[int, list[str]] = {}
            for item in todo:
                mid = existing[item.data.dedupe_key]
                if first_of_key.get(item.data.dedupe_key) is not item:
                    self.result.linked.append(item.uid)
                    if item.data.dedupe_key not in created_keys:
                        flag_updates[mid] = sorted(item.flags)
                locations.append(
                    {
                        "message_id": mid,
                        "folder_id": self.folder_id,
                        "uid": item.uid,
                        "modseq": item.modseq,
                        "flags": sorted(item.flags),
                        "created_at": now,
                        "sort_at": sort_of[mid],
                    }
                )
            # inline(): no RETURNING of the new id even for one row (a pipeline reads nothing).
            s.execute(insert(_LOCATIONS).inline(), locations)
            back = sorted(
                {existing[i.data.dedupe_key] for i in todo} - {existing[k] for k in created_keys}
            )
            for part in _chunks(back):
                # In a mailbox folder again (moved back, or its folder synced again).
                # Core, not ORM: nothing to synchronise, and no rows to read back in a pipeline.
                s.execute(
                    update(_MESSAGES)
                    .where(
                        _in(s, _MESSAGES.c.id, part), _MESSAGES.c.gone_from_mailbox_at.is_not(None)
                    )
                    .values(gone_from_mailbox_at=None, gone_reason=None)
                )
            if self.new_subject_keys:
                s.execute(insert(_SUBJECT_KEYS).inline(), self.new_subject_keys)
            # Executemany by primary key, grouped by the columns set: no statement per message.
            params: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for mid, flags in flag_updates.items():
                row = {"id": mid, "flags": flags, **enriched.get(mid, {})}
                params.setdefault(tuple(sorted(row)), []).append(row)
            for columns, group in params.items():
                # Core executemany by primary key (the ORM's bulk form checks row counts, which a
                # pipeline only has at its end).
                s.execute(
                    update(_MESSAGES)
                    .where(_MESSAGES.c.id == bindparam("b_id"))
                    .values({c: bindparam(f"b_{c}") for c in columns if c != "id"}),
                    [{f"b_{k}": v for k, v in row.items()} for row in group],
                )
            self._refresh_threads(touched)
            finish()

    def _look_up(
        self,
        existing: dict[str, int],
        facts: dict[str, KeyFacts],
        sort_of: dict[int, datetime],
        keys: Collection[str],
    ) -> None:
        """Add the stored messages among ``keys`` to ``existing`` (key -> id), their sender
        and Date to ``facts`` and their list position to ``sort_of`` (id -> sort_at)."""
        for part in _chunks(sorted(set(keys) - set(existing))):
            for mid, key, sender, when, sort_at, state, gone in self.s.execute(
                select(
                    MessageRow.id,
                    MessageRow.dedupe_key,
                    MessageRow.from_email,
                    MessageRow.date,
                    MessageRow.sort_at,
                    MessageRow.state,
                    MessageRow.gone_from_mailbox_at,
                ).where(
                    MessageRow.account_id == self.account_id,
                    _in(self.s, MessageRow.dedupe_key, part),
                )
            ):
                if state != "active" or gone is not None:
                    self.restate.add(int(mid))
                existing[key] = int(mid)
                facts[key] = KeyFacts(sender, _aware(when))
                sort_of[int(mid)] = sort_at

    def _distinct_reused_ids(
        self,
        todo: list[IncomingMessage],
        existing: dict[str, int],
        facts: dict[str, KeyFacts],
        sort_of: dict[int, datetime],
    ) -> list[IncomingMessage]:
        """Messages whose Message-ID key is taken by another message (a stored one, or one
        earlier in the batch) that is not the same message (:func:`same_message`: another
        sender, or a Date more than a day away) get their :func:`distinct_key`."""
        out: list[IncomingMessage] = []
        moved: set[str] = set()
        for item in todo:
            key = item.data.dedupe_key
            if reusable_key(key):
                mine = _facts(item.data)
                theirs = facts.get(key)
                if theirs is not None and not same_message(theirs, mine):
                    key = distinct_key(key, mine)
                    item = replace(item, data=replace(item.data, dedupe_key=key))
                    moved.add(key)
                if key not in facts and key not in moved:
                    facts[key] = mine
            out.append(item)
        if moved:
            self._look_up(existing, facts, sort_of, moved)
        return out

    def _sent_copy_changes(self, copies: Mapping[int, MessageData]) -> dict[int, dict[str, Any]]:
        """What a copy found in Sent adds to a message stored from another folder.

        The copy the user's client filed in Sent is the only one that carries Bcc (RFC 5322
        §3.6.3: it is removed from what recipients get), and it proves the message is the
        user's own. When the received copy (user in To/Cc, or a list) was stored first, the row
        gains the Bcc recipients (and so the participants the timeline links) and becomes
        outbound. Only messages that change are returned.
        """
        out: dict[int, dict[str, Any]] = {}
        for part in _chunks(sorted(copies)):
            for mid, bcc, participants, direction, subject, when in self.s.execute(
                select(
                    MessageRow.id,
                    MessageRow.bcc_addrs,
                    MessageRow.participants,
                    MessageRow.direction,
                    MessageRow.normalized_subject,
                    MessageRow.date,
                ).where(_in(self.s, MessageRow.id, part))
            ):
                data = copies[int(mid)]
                have = {str(a.get("email") or "").lower() for a in bcc or ()}
                extra = [a for a in data.bcc if a.email and a.email.lower() not in have]
                if not extra and direction == "outbound":
                    continue
                added = {a.email.lower() for a in extra if "@" in a.email}
                merged = set(participants or ()) | added
                if when is not None:
                    # The Bcc recipients are counterparts too: file the message under them.
                    fresh = added - set(participants or ()) - data.own_addresses
                    self.new_subject_keys.extend(
                        {
                            "account_id": self.account_id,
                            "message_id": int(mid),
                            "key": k,
                            "date": when,
                        }
                        for k in subject_keys(subject or "", fresh)
                    )
                out[int(mid)] = {
                    "bcc_addrs": list(bcc or ()) + _addr_json(extra),
                    "participants": sorted(merged),
                    "direction": "outbound",
                }
        return out

    def _refresh_threads(self, touched: set[int]) -> None:
        """Recompute count and first/last dates of every thread this batch touched (exact,
        whatever merges happened)."""
        tids = sorted(touched)
        when = func.coalesce(MessageRow.date, MessageRow.internaldate)
        if tids and self.s.get_bind().dialect.name == "postgresql":
            # One UPDATE ... FROM the counts: one round trip, not a read and a write.
            counted = (
                select(
                    MessageRow.thread_id.label("tid"),
                    func.count().label("n"),
                    func.min(when).label("first"),
                    func.max(when).label("last"),
                )
                .where(_in(self.s, MessageRow.thread_id, tids))
                .group_by(MessageRow.thread_id)
                .subquery()
            )
            self.s.execute(
                update(_THREADS)
                .where(_THREADS.c.id == counted.c.tid)
                .values(
                    message_count=counted.c.n,
                    first_message_at=counted.c.first,
                    last_message_at=counted.c.last,
                )
            )
            return
        for part in _chunks(tids):
            stats = self.s.execute(
                select(MessageRow.thread_id, func.count(), func.min(when), func.max(when))
                .where(_in(self.s, MessageRow.thread_id, part))
                .group_by(MessageRow.thread_id)
            ).all()
            if stats:
                # One Core executemany by primary key: no statement per thread, and none of the
                # ORM bulk update's per-row bookkeeping.
                self.s.execute(
                    update(_THREADS)
                    .where(_THREADS.c.id == bindparam("b_id"))
                    .values(
                        message_count=bindparam("b_count"),
                        first_message_at=bindparam("b_first"),
                        last_message_at=bindparam("b_last"),
                    ),
                    [
                        {
                            "b_id": int(tid),
                            "b_count": int(count),
                            "b_first": _aware(first),
                            "b_last": _aware(last),
                        }
                        for tid, count, first, last in stats
                    ],
                )


def _reserve_ids(s: Session, counts: Mapping[str, int]) -> dict[str, list[int]] | None:
    """PostgreSQL: draw ``counts[table]`` ids from each table's sequence, all in one statement
    (one round trip for the batch's threads and messages together), ascending per table.
    None on SQLite, which has no sequences (:func:`_insert_rows` uses ``RETURNING`` there)."""
    if s.get_bind().dialect.name != "postgresql":
        return None
    out: dict[str, list[int]] = {name: [] for name in counts}
    wanted = [(name, n) for name, n in counts.items() if n > 0]
    if not wanted:
        return out
    # Table names are this module's own constants, never input; the counts are parameters.
    sql = " UNION ALL ".join(
        f"SELECT {i} AS t, nextval(pg_get_serial_sequence('{name}', 'id')) AS id"
        f" FROM generate_series(1, :n{i})"
        for i, (name, _) in enumerate(wanted)
    )
    params = {f"n{i}": n for i, (_, n) in enumerate(wanted)}
    for t, i in s.execute(text(sql), params):
        out[wanted[int(t)][0]].append(int(i))
    for ids in out.values():
        ids.sort()
    return out


def _insert_rows(
    s: Session, table: Table, rows: list[dict[str, Any]], ids: list[int] | None = None
) -> list[int]:
    """Insert ``rows`` into ``table``; their new ids, in the order of ``rows`` (``ids``, when
    already drawn by :func:`_reserve_ids`).

    On PostgreSQL the ids are drawn from the table's sequence first (one statement), and the
    rows are inserted with a plain executemany, which psycopg sends as one pipeline of a
    statement it parses and prepares once. ``INSERT ... RETURNING`` of many rows goes through
    SQLAlchemy's "insertmanyvalues" instead: one statement text per 1,000 rows with a
    placeholder per value, which psycopg re-parses in Python every time (too long for its
    cache): a third of the commit stage's client time at 200 messages a batch. SQLite has no
    sequences; there ``RETURNING`` is cheap and stays.
    """
    if s.get_bind().dialect.name != "postgresql":
        returned = s.execute(
            insert(table).returning(table.c.id, sort_by_parameter_order=True), rows
        ).scalars()
        return [int(i) for i in returned]
    if ids is None:
        reserved = _reserve_ids(s, {table.name: len(rows)})
        assert reserved is not None
        ids = reserved[table.name]
    s.execute(insert(table).inline(), [{**row, "id": i} for row, i in zip(rows, ids, strict=True)])
    return ids


def _aware(value: Any) -> datetime | None:
    """min()/max() bypass the column type on SQLite: naive text or datetime comes back."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def _message_values(
    account_id: int, item: IncomingMessage, thread_id: int | None, now: datetime
) -> dict[str, Any]:
    data = item.data
    return {
        "account_id": account_id,
        "thread_id": thread_id,
        "dedupe_key": data.dedupe_key,
        "message_id_header": data.message_id,
        "in_reply_to": data.in_reply_to,
        "reference_ids": list(data.references),
        "subject": data.subject,
        "normalized_subject": data.normalized_subject,
        "from_name": data.from_.name if data.from_ else None,
        "from_email": data.from_.email.lower() if data.from_ and data.from_.email else None,
        "sender": _addr_json(data.sender),
        "reply_to": _addr_json(data.reply_to),
        "to_addrs": _addr_json(data.to),
        "cc_addrs": _addr_json(data.cc),
        "bcc_addrs": _addr_json(data.bcc),
        "participants": list(data.participants),
        "date": data.date,
        "internaldate": data.internaldate,
        "snippet": data.snippet,
        "text_body": data.text,
        "html_body": data.html,
        "flags": sorted(item.flags),
        "state": "active",
        "direction": data.direction,
        "size": data.size,
        "raw_blob_key": data.raw_blob_key,
        "truncated": data.truncated,
        "gm_msgid": data.gm_msgid,
        "gm_thrid": data.gm_thrid,
        "defects": list(data.defects),
        "created_at": now,
        "updated_at": now,
        "sort_at": list_sort_at(data.date, data.internaldate, now),
    }


def _mark_gone(s: Session, message_ids: Collection[int], reason: str | None) -> None:
    """Stamp the messages of ``message_ids`` that have no location left as gone from the
    mailbox now, with ``reason`` (None: to be looked for in the unsynced folders)."""
    ids = sorted(set(message_ids))
    if not ids:
        return
    now = utcnow()
    for part in _chunks(ids):
        s.execute(
            update(MessageRow)
            .where(
                MessageRow.id.in_(part),
                ~select(MessageLocationRow.id)
                .where(MessageLocationRow.message_id == MessageRow.id)
                .exists(),
            )
            .values(gone_from_mailbox_at=now, gone_reason=reason)
        )


@contextmanager
def _pipelined(s: Session) -> Iterator[None]:
    """On PostgreSQL, psycopg's pipeline mode for what runs inside: statements are sent
    without waiting for each one's reply, and the replies are read together at the end, so a
    batch's writes cost one round trip, not one each (on a loaded machine each round trip
    waits for two processes to be scheduled). Statements inside may not read rows (a result
    is only there at the end). Nothing on SQLite, in-process.

    An error reaches the caller as the same :class:`~sqlalchemy.exc.DBAPIError` subclass as
    without the pipeline, whether SQLAlchemy saw it during a statement or psycopg raised it
    when the pipeline ended."""
    if s.get_bind().dialect.name != "postgresql":
        yield
        return
    import psycopg

    driver = s.connection().connection.driver_connection
    assert driver is not None  # a connection just checked out for this transaction
    try:
        with driver.pipeline():
            yield
    except psycopg.Error as exc:
        raise DBAPIError.instance(None, None, exc, psycopg.Error) from exc


def _require_folder(result: Any, folder_id: int) -> None:
    """:class:`NotFound` if the checkpoint's UPDATE (``result``) found no folder. In a
    pipeline, SQLAlchemy read the row count before the reply came (-1); psycopg sets it on the
    cursor when the pipeline ends."""
    count = _rowcount(result)
    if count < 0:
        count = int(getattr(result.context.cursor, "rowcount", -1))
    if count == 0:
        raise NotFound(f"folder {folder_id} does not exist")


def _rowcount(result: Any) -> int:
    """Rows a DELETE/UPDATE touched (a CursorResult's rowcount; typing does not know that)."""
    return int(getattr(result, "rowcount", 0) or 0)


def _flags_after_conflicts(
    s: Session,
    rows: Sequence[Any],
    flag_updates: Mapping[int, frozenset[str]],
    seen_at: datetime,
) -> dict[int, list[str]]:
    """The CRM flags of each message whose location's flags changed (``rows``: location id,
    uid, message id, previous flags): the location's new flags, unless a CRM change of the
    same flag waits in the outbox (one query, usually empty), then the conflict rule decides
    and a losing outbox row is superseded."""
    result = {r.message_id: sorted(flag_updates[r.uid]) for r in rows}
    pending = pending_flag_changes(s, list(result))
    if not pending:
        return result
    stored: dict[int, list[str]] = {
        int(mid): list(flags or ())
        for mid, flags in s.execute(
            select(MessageRow.id, MessageRow.flags).where(MessageRow.id.in_(sorted(pending)))
        )
    }
    for r in rows:
        changes = pending.get(r.message_id)
        if not changes:
            continue
        merged = merge_remote_flags(
            crm_flags=frozenset(stored.get(r.message_id) or ()),
            previous_remote=frozenset(r.flags or ()),
            remote=flag_updates[r.uid],
            pending=changes,
            remote_seen_at=seen_at,
        )
        result[r.message_id] = sorted(merged.flags)
        supersede_flag_rows(s, r.message_id, merged.superseded)
    return result


def _update_flags(
    s: Session,
    rows: Sequence[Any],
    flag_updates: Mapping[int, frozenset[str]],
    modseqs: Mapping[int, int],
    seen_at: datetime,
) -> list[int]:
    """Set the remote flags (and MODSEQ, where known) of the locations ``rows`` (id, uid,
    message id, previous flags) and their messages' CRM flags under the conflict rule; returns
    the message ids."""
    if not rows:
        return []
    crm_flags = _flags_after_conflicts(s, rows, flag_updates, seen_at)
    with_modseq = [
        {"id": r.id, "flags": sorted(flag_updates[r.uid]), "modseq": modseqs[r.uid]}
        for r in rows
        if r.uid in modseqs
    ]
    without = [
        {"id": r.id, "flags": sorted(flag_updates[r.uid])} for r in rows if r.uid not in modseqs
    ]
    for params in (with_modseq, without):
        if params:
            s.execute(update(MessageLocationRow), params)
    s.execute(
        update(MessageRow),
        [{"id": r.message_id, "flags": crm_flags[r.message_id]} for r in rows],
    )
    return [r.message_id for r in rows]


def _notified_change(row: Any, flags: frozenset[str], modseq: int | None) -> bool:
    """Whether an announced flag change is news for the location ``row`` (flags, modseq)."""
    if frozenset(row.flags or ()) == flags:
        return False
    return modseq is None or row.modseq is None or modseq > row.modseq
