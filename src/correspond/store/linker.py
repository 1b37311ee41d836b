"""The linker's SQL: the participant index and the automatic timeline links.

Two kinds of step, each ONE transaction that either happens whole or not at all, so a process
killed at any point leaves nothing half done that the next step does not redo:

- :meth:`LinkerStore.index_batch`: the next ``batch`` messages after the watermark
  (``crm_linker_state.indexed_through``) get their ``message_participants`` rows and their
  links, and the watermark moves past them. Rows of those messages are deleted first, so a
  step that runs twice writes the same rows.
- :meth:`LinkerStore.relink_batch`: the oldest entry of ``crm_relink_queue`` (an address or
  a domain a record change touched): the next ``relink_size`` indexed messages with that
  participant are linked again, and the entry's ``done_through`` moves (the entry goes when
  done).

With ``Settings.auto_create_contacts`` on, an indexing step first makes contacts for the
batch's new external participants (:meth:`_auto_create_contacts`, decided by
:func:`correspond.rules.crm.contacts_to_create`), in the same transaction, so its links
include them.

Linking a batch of new messages (:meth:`_relink`) reads what the rules need for their
addresses, asks :func:`correspond.rules.crm.links_for` per message, then deletes the automatic
links no longer wanted and inserts the missing ones; manual links are never deleted by it, and
a thread a person linked to (or unlinked from) a deal keeps that for all its messages.

Linking again the messages of one address or domain (:meth:`_relink_set`, up to 100,000 and
more after a contact is added) is the same rule written as set-based SQL over the participant
index (no row through Python): ``links_for`` is a union of what each participant brings, so
the wanted links are a join of the messages' participants with the records, gated by "has an
external participant". ``tests/test_crm_linker.py`` holds the two forms to the same links.

Writers are serialised (several processes may run a linker): a transaction-scoped advisory
lock on PostgreSQL; on SQLite the step writes first, which takes the database's write lock.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar, cast

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    Select,
    String,
    Table,
    any_,
    bindparam,
    column,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from correspond.rules.crm import (
    AUTO_CREATE_MODES,
    LinkContext,
    contacts_to_create,
    domain_of,
    links_for,
    named_participants,
    normalize_address,
    normalize_domain,
    participant_rows,
)
from correspond.store.crm_tables import (
    ActivityParticipantRow,
    CompanyDomainRow,
    ContactDismissalRow,
    ContactEmailRow,
    ContactRow,
    DealContactRow,
    DealRow,
    LinkerStateRow,
    MessageParticipantRow,
    RelinkQueueRow,
    ThreadDealLinkRow,
    TimelineLinkRow,
)
from correspond.store.engine import register_table_modules, unit_of_work
from correspond.store.message_tables import MessageLocationRow, MessageRow
from correspond.store.tables import AccountRow, FolderRow, UserRow, UtcDateTime, utcnow

__all__ = ["DEFAULT_RELINK_BATCH", "LinkPolicy", "LinkerStore"]

T = TypeVar("T")
_LOCK_KEY = 0x63726D6C  # "crml": the linker's advisory lock
_CHUNK = 1000
#: PostgreSQL's work_mem for a re-link step (its hashes of up to a few hundred thousand rows).
_RELINK_WORK_MEM = "64MB"
#: PostgreSQL's random_page_cost for a re-link step (see _relink_set).
_RELINK_RANDOM_PAGE_COST = 1.1
#: See :attr:`LinkerStore.relink_size`.
DEFAULT_RELINK_BATCH = 25_000
_PARTICIPANTS = cast(Table, MessageParticipantRow.__table__)
_LINKS = cast(Table, TimelineLinkRow.__table__)
_STATE = cast(Table, LinkerStateRow.__table__)
_QUEUE = cast(Table, RelinkQueueRow.__table__)


def _insert_links(conn: Connection, kind: str, target: int, source: str, ids: list[int]) -> None:
    """Link messages ``ids`` to one target in one statement: the message's ``sort_at`` is
    copied by the database (no timestamp through Python), and the ids go as ONE parameter
    (``= ANY(array)`` on PostgreSQL, ``json_each`` on SQLite), so the statement's text is the
    same whatever their number."""
    if conn.dialect.name == "postgresql":
        chosen: Any = MessageRow.id == any_(bindparam("ids", ids, type_=ARRAY(BigInteger())))
    else:
        chosen = MessageRow.id.in_(
            select(column("value", BigInteger())).select_from(
                func.json_each(bindparam("ids", json.dumps(ids), type_=String()))
            )
        )
    conn.execute(
        insert(_LINKS).from_select(
            ["message_id", "target_kind", "target_id", "source", "sort_at", "created_at"],
            select(
                MessageRow.id,
                bindparam("kind", kind, type_=String()),
                bindparam("target", target, type_=BigInteger()),
                bindparam("source", source, type_=String()),
                MessageRow.sort_at,
                bindparam("now", utcnow(), type_=UtcDateTime()),
            ).where(chosen),
        )
    )


def _chunks(values: Sequence[T], size: int = _CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


@dataclass(frozen=True, slots=True)
class LinkPolicy:
    """The settings the rules take (``Settings.organisation_domains``, ``link_blocklist``,
    ``link_internal_mail``), normalised."""

    organisation_domains: frozenset[str] = frozenset()
    blocklist: frozenset[str] = frozenset()
    link_internal: bool = False
    #: ``Settings.auto_create_contacts`` (off | sent | all) and its bound per indexing batch.
    auto_create: str = "off"
    auto_create_limit: int = 200

    @classmethod
    def build(
        cls,
        organisation_domains: Iterable[str],
        blocklist: Iterable[str],
        link_internal: bool,
        *,
        auto_create: str = "off",
        auto_create_limit: int = 200,
    ) -> LinkPolicy:
        blocked: set[str] = set()
        for entry in blocklist:
            norm = normalize_address(entry) if "@" in entry.strip("@") else None
            norm = norm or normalize_domain(entry.lstrip("@"))
            if norm:
                blocked.add(norm)
        doms = {d for d in (normalize_domain(x.lstrip("@")) for x in organisation_domains) if d}
        if auto_create not in AUTO_CREATE_MODES:
            raise ValueError(f"auto_create must be one of {', '.join(AUTO_CREATE_MODES)}")
        return cls(
            frozenset(doms), frozenset(blocked), link_internal, auto_create, auto_create_limit
        )


class LinkerStore:
    """The linker's transactions over one engine."""

    def __init__(
        self,
        engine: Engine,
        policy: LinkPolicy,
        *,
        batch: int = 2000,
        relink_size: int = DEFAULT_RELINK_BATCH,
    ) -> None:
        if batch < 1 or relink_size < 1:
            raise ValueError("linker batches must hold at least one message")
        self.engine = engine
        self.policy = policy
        self.batch = batch
        #: Messages of one queued address or domain linked again per step (set-based SQL:
        #: its cost is the database's, ~10x a batch of new messages in the same time).
        self.relink_size = relink_size
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        register_table_modules()

    # -- state -----------------------------------------------------------------------------

    def _lock(self, s: Session) -> int:
        """Serialise linkers and return the watermark (creating its row the first time)."""
        if self.engine.dialect.name == "postgresql":
            s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
        else:
            # A write first: SQLite's write lock for the whole step (no read-then-upgrade).
            s.execute(update(LinkerStateRow).values(indexed_through=LinkerStateRow.indexed_through))
        found = s.scalar(select(LinkerStateRow.indexed_through).where(LinkerStateRow.id == 1))
        if found is None:
            s.add(LinkerStateRow(id=1, indexed_through=0))
            s.flush()
            return 0
        return int(found)

    def watermark(self) -> int:
        with unit_of_work(self._sessions) as s:
            found = s.scalar(select(LinkerStateRow.indexed_through).where(LinkerStateRow.id == 1))
            return int(found or 0)

    def requeue_sent_copies(self, folder_id: int, uids: Sequence[int]) -> int:
        """Queue the messages at ``uids`` of ``folder_id`` to be indexed again when the folder
        is a Sent folder: a Sent copy of a message stored first from another folder brings
        its Bcc recipients (and makes it outbound) after it was indexed. How many queued."""
        if not uids:
            return 0
        loc = cast(Table, MessageLocationRow.__table__)
        folders = cast(Table, FolderRow.__table__)
        with unit_of_work(self._sessions) as s:
            chosen = (
                select(loc.c.message_id)
                .join(folders, folders.c.id == loc.c.folder_id)
                .where(
                    loc.c.folder_id == folder_id,
                    folders.c.role == "sent",
                    loc.c.uid.in_(list(uids)),
                )
                .distinct()
            )
            ids = list(s.connection().scalars(chosen))
            if ids:
                now = utcnow()
                s.connection().execute(
                    insert(_QUEUE),
                    [{"message_id": i, "done_through": 0, "created_at": now} for i in ids],
                )
            return len(ids)

    def reset(self) -> None:
        """Index and link every message again from the first (after a change of the settings
        the rules take, or of the installation's users): the watermark goes back to 0; each
        step then rewrites its messages' participants and links as if they were new."""
        with unit_of_work(self._sessions) as s:
            self._lock(s)
            s.execute(update(_STATE).where(_STATE.c.id == 1).values(indexed_through=0))

    def pending(self) -> bool:
        """Whether a step has work: unindexed messages or queued relinks."""
        with unit_of_work(self._sessions) as s:
            mark = s.scalar(select(LinkerStateRow.indexed_through).where(LinkerStateRow.id == 1))
            newest = s.scalar(select(func.max(MessageRow.id)))
            queued = s.scalar(select(RelinkQueueRow.id).limit(1))
            return queued is not None or (newest or 0) > (mark or 0)

    def _ensure_state(self) -> None:
        try:
            with unit_of_work(self._sessions) as s:
                self._lock(s)
        except IntegrityError:  # pragma: no cover - another linker made the row first
            pass

    # -- steps -----------------------------------------------------------------------------

    def index_batch(self) -> int:
        """Index and link the next batch after the watermark; how many messages (0: none)."""
        with unit_of_work(self._sessions) as s:
            mark = self._lock(s)
            conn = s.connection()
            rows = conn.execute(
                select(
                    MessageRow.id,
                    MessageRow.from_email,
                    MessageRow.to_addrs,
                    MessageRow.cc_addrs,
                    MessageRow.bcc_addrs,
                    MessageRow.direction,
                )
                .where(MessageRow.id > mark)
                .order_by(MessageRow.id)
                .limit(self.batch)
            ).all()
            if not rows:
                return 0
            last = int(rows[-1][0])
            conn.execute(
                delete(_PARTICIPANTS).where(
                    _PARTICIPANTS.c.message_id > mark, _PARTICIPANTS.c.message_id <= last
                )
            )
            self._write_participants(conn, rows)
            if self.policy.auto_create != "off":
                last = self._auto_create_contacts(conn, mark, last)
                rows = [r for r in rows if r[0] <= last]
            self._relink(
                conn, select(MessageRow.id).where(MessageRow.id > mark, MessageRow.id <= last)
            )
            conn.execute(update(_STATE).where(_STATE.c.id == 1).values(indexed_through=last))
            return len(rows)

    def relink_batch(self) -> int:
        """Link again the next batch of messages of the oldest queued address or domain; how
        many messages (0 and the entry gone when it had none left; -1: the queue is empty)."""
        with unit_of_work(self._sessions) as s:
            mark = self._lock(s)
            entry = s.scalars(select(RelinkQueueRow).order_by(RelinkQueueRow.id).limit(1)).first()
            if entry is None:
                return -1
            conn = s.connection()
            if entry.message_id is not None:
                return self._reindex_queued(conn, mark)
            p = _PARTICIPANTS.c
            by_address = entry.address is not None
            column = p.address if by_address else p.domain
            value = entry.address if by_address else entry.domain
            mine = (column == value, p.message_id > entry.done_through)
            # The batch ends at its last message: the relink_size-th row of the index (a
            # message with the address in two roles counts twice, so a batch may hold a few
            # less).
            end = conn.scalar(
                select(p.message_id)
                .where(*mine, p.message_id <= mark)
                .order_by(p.message_id)
                .offset(self.relink_size - 1)
                .limit(1)
            )
            high = mark if end is None else int(end)
            count = self._relink_set(
                conn,
                "address" if by_address else "domain",
                str(value),
                entry.done_through,
                high,
            )
            if end is None:
                s.delete(entry)
            else:
                entry.done_through = high
            return count

    def _reindex_queued(self, conn: Connection, mark: int) -> int:
        """Index again (participants and links) the queued single messages at the head of the
        queue, up to a batch, and drop their entries. Messages past the watermark are left to
        the indexing step."""
        q = _QUEUE.c
        head = conn.execute(select(q.id, q.message_id).order_by(q.id).limit(self.batch)).all()
        entries: list[int] = []
        ids: set[int] = set()
        for qid, mid in head:
            if mid is None:
                break  # an address or domain: the next step takes it, in queue order
            entries.append(qid)
            if mid <= mark:
                ids.add(int(mid))
        if ids:
            chosen = sorted(ids)
            rows = conn.execute(
                select(
                    MessageRow.id,
                    MessageRow.from_email,
                    MessageRow.to_addrs,
                    MessageRow.cc_addrs,
                    MessageRow.bcc_addrs,
                    MessageRow.direction,
                ).where(MessageRow.id.in_(chosen))
            ).all()
            conn.execute(delete(_PARTICIPANTS).where(_PARTICIPANTS.c.message_id.in_(chosen)))
            self._write_participants(conn, rows)
            self._relink(conn, select(MessageRow.id).where(MessageRow.id.in_(chosen)))
        conn.execute(delete(_QUEUE).where(q.id.in_(entries)))
        return len(ids)

    def _auto_create_contacts(self, conn: Connection, mark: int, last: int) -> int:
        """Contacts for the new external participants of the messages after ``mark`` up to
        ``last`` (whose participants are written), as :func:`~correspond.rules.crm.
        contacts_to_create` decides; the batch ends where its bound cut it (the index rows
        past that go, the next step takes those messages). Each new contact's address is
        queued for relinking, so mail indexed before it was made reaches its timeline too
        (the batch's own messages are linked by the step). The last message id covered."""
        scope = select(MessageRow.id).where(MessageRow.id > mark, MessageRow.id <= last)
        messages = conn.execute(
            select(
                MessageRow.id,
                MessageRow.from_email,
                MessageRow.from_name,
                MessageRow.to_addrs,
                MessageRow.cc_addrs,
                MessageRow.bcc_addrs,
                MessageRow.direction,
            )
            .where(MessageRow.id.in_(scope))
            .order_by(MessageRow.id)
        ).all()
        ctx = self._context(conn, scope)
        dismissed = frozenset(
            conn.scalars(
                select(ContactDismissalRow.address).where(
                    ContactDismissalRow.address.in_(
                        select(_PARTICIPANTS.c.address)
                        .where(_PARTICIPANTS.c.message_id.in_(scope))
                        .distinct()
                    )
                )
            )
        )
        plan = contacts_to_create(
            [
                (
                    direction == "outbound",
                    named_participants(
                        from_email, from_name, to, cc, bcc, outbound=direction == "outbound"
                    ),
                )
                for _, from_email, from_name, to, cc, bcc, direction in messages
            ],
            replace(ctx, dismissed=dismissed),
            mode=self.policy.auto_create,
            limit=self.policy.auto_create_limit,
        )
        if plan.covered < len(messages):
            cut = int(messages[plan.covered - 1][0])
            conn.execute(
                delete(_PARTICIPANTS).where(
                    _PARTICIPANTS.c.message_id > cut, _PARTICIPANTS.c.message_id <= last
                )
            )
            last = cut
        if plan.contacts:
            now = utcnow()
            ids = conn.scalars(
                insert(ContactRow).returning(ContactRow.id, sort_by_parameter_order=True),
                [
                    {"name": name, "origin": "auto", "created_at": now, "updated_at": now}
                    for _, name in plan.contacts
                ],
            ).all()
            conn.execute(
                insert(ContactEmailRow),
                [
                    {"contact_id": cid, "address": address}
                    for cid, (address, _) in zip(ids, plan.contacts, strict=True)
                ],
            )
            conn.execute(
                insert(_QUEUE),
                [
                    {"address": address, "done_through": 0, "created_at": now}
                    for address, _ in plan.contacts
                ],
            )
        return last

    @staticmethod
    def _write_participants(conn: Connection, rows: Sequence[Any]) -> None:
        index: list[dict[str, Any]] = []
        for mid, from_email, to, cc, bcc, direction in rows:
            pairs = participant_rows(from_email, to, cc, bcc, outbound=direction == "outbound")
            index.extend(
                {"message_id": mid, "address": a, "role": r, "domain": domain_of(a)}
                for a, r in pairs
            )
        if index:
            conn.execute(insert(_PARTICIPANTS), index)

    def step(self) -> bool:
        """One step (indexing first, then the queue); False when there was nothing to do."""
        if self.index_batch():
            return True
        return self.relink_batch() >= 0

    def run_until_idle(self) -> tuple[int, int]:
        """Steps until nothing is left: (messages indexed, messages linked again)."""
        indexed = relinked = 0
        while True:
            n = self.index_batch()
            indexed += n
            if n:
                continue
            m = self.relink_batch()
            if m < 0:
                return indexed, relinked
            relinked += m

    # -- linking ---------------------------------------------------------------------------

    def _context(self, conn: Connection, scope: Select[Any]) -> LinkContext:
        """What the rules need about the participants of the messages ``scope`` selects,
        read with subqueries (no list of values sent back and forth)."""
        p = _PARTICIPANTS.c
        addresses = select(p.address).where(p.message_id.in_(scope)).distinct()
        domains = select(p.domain).where(p.message_id.in_(scope)).distinct()
        contacts: dict[str, int] = {}
        contact_company: dict[int, int] = {}
        activities: dict[str, list[int]] = {}
        open_deals: dict[int, list[int]] = {}
        for address, cid, company in conn.execute(
            select(ContactEmailRow.address, ContactRow.id, ContactRow.company_id)
            .join(ContactRow, ContactRow.id == ContactEmailRow.contact_id)
            .where(ContactEmailRow.address.in_(addresses))
        ).all():
            contacts[address] = cid
            if company is not None:
                contact_company[cid] = company
        for address, aid in conn.execute(
            select(ActivityParticipantRow.address, ActivityParticipantRow.activity_id).where(
                ActivityParticipantRow.address.in_(addresses)
            )
        ).all():
            activities.setdefault(address, []).append(aid)
        domain_companies = {
            domain: company
            for domain, company in conn.execute(
                select(CompanyDomainRow.domain, CompanyDomainRow.company_id).where(
                    CompanyDomainRow.domain.in_(domains)
                )
            ).all()
        }
        for cid, did in conn.execute(
            select(DealContactRow.contact_id, DealContactRow.deal_id)
            .join(DealRow, DealRow.id == DealContactRow.deal_id)
            .join(ContactEmailRow, ContactEmailRow.contact_id == DealContactRow.contact_id)
            .where(ContactEmailRow.address.in_(addresses), DealRow.status == "open")
            .distinct()
        ).all():
            open_deals.setdefault(cid, []).append(did)
        internal = {
            a
            for a in (
                normalize_address(x)
                for x in [
                    *conn.scalars(select(UserRow.email_key)),
                    *conn.scalars(select(AccountRow.email)),
                ]
            )
            if a
        }
        return LinkContext(
            contacts=contacts,
            contact_company=contact_company,
            domain_companies=domain_companies,
            open_deals=open_deals,
            activities=activities,
            internal=frozenset(internal),
            organisation_domains=self.policy.organisation_domains,
            blocklist=self.policy.blocklist,
            link_internal=self.policy.link_internal,
        )

    def _relink(self, conn: Connection, scope: Select[Any]) -> None:
        """Make the links of the messages ``scope`` selects (a SELECT of message ids) what
        the rules and the manual thread links say."""
        messages: dict[int, int | None] = {
            mid: tid
            for mid, tid in conn.execute(
                select(MessageRow.id, MessageRow.thread_id).where(MessageRow.id.in_(scope))
            ).all()
        }
        if not messages:
            return
        people: dict[int, set[str]] = {}
        p = _PARTICIPANTS.c
        for mid, address in conn.execute(
            select(p.message_id, p.address).where(p.message_id.in_(scope))
        ).all():
            people.setdefault(mid, set()).add(address)
        ctx = self._context(conn, scope)
        manual: dict[int, dict[int, bool]] = {}
        for tid, did, linked in conn.execute(
            select(
                ThreadDealLinkRow.thread_id, ThreadDealLinkRow.deal_id, ThreadDealLinkRow.linked
            ).where(
                ThreadDealLinkRow.thread_id.in_(
                    select(MessageRow.thread_id).where(MessageRow.id.in_(scope))
                )
            )
        ).all():
            manual.setdefault(tid, {})[did] = bool(linked)
        links = _LINKS.c
        existing: dict[tuple[int, str, int], tuple[int, str]] = {
            (mid, kind, target): (lid, source)
            for lid, mid, kind, target, source in conn.execute(
                select(
                    links.id, links.message_id, links.target_kind, links.target_id, links.source
                ).where(links.message_id.in_(scope))
            ).all()
        }
        drop: list[int] = []
        promote: list[int] = []
        add: dict[tuple[str, int, str], list[int]] = {}
        keep: dict[int, set[tuple[str, int]]] = {}
        no_hand: dict[int, bool] = {}
        # Many messages share their participants (a thread, a correspondent): ask the rules
        # once per set of addresses.
        ruled: dict[frozenset[str], set[tuple[str, int]]] = {}
        for mid, thread_id in messages.items():
            who = frozenset(people.get(mid, ()))
            found_rule = ruled.get(who)
            if found_rule is None:
                found_rule = ruled[who] = links_for(who, ctx)
            wanted = set(found_rule)
            by_hand = manual.get(thread_id, no_hand) if thread_id is not None else no_hand
            if by_hand:
                wanted -= {("deal", d) for d, linked in by_hand.items() if not linked}
                hand = {("deal", d) for d, linked in by_hand.items() if linked}
                wanted |= hand
            else:
                hand = set()
            keep[mid] = wanted
            for kind, target in wanted:
                found = existing.get((mid, kind, target))
                source = "manual" if (kind, target) in hand else "auto"
                if found is None:
                    add.setdefault((kind, target, source), []).append(mid)
                elif source == "manual" and found[1] != "manual":
                    promote.append(found[0])
        for (mid, kind, target), (lid, source) in existing.items():
            if source == "auto" and (kind, target) not in keep.get(mid, ()):
                drop.append(lid)
        for part in _chunks(drop):
            conn.execute(delete(_LINKS).where(links.id.in_(part)))
        for part in _chunks(promote):
            conn.execute(update(_LINKS).where(links.id.in_(part)).values(source="manual"))
        for (kind, target, source), mids in add.items():
            _insert_links(conn, kind, target, source, mids)

    # -- linking again, set-based ------------------------------------------------------------

    def _values(self, conn: Connection, name: str) -> str:
        """SQL for the rows of a list parameter ``name`` (one bound value whatever its size)."""
        if conn.dialect.name == "postgresql":
            return f"(SELECT unnest(CAST(:{name} AS text[])))"
        return f"(SELECT value FROM json_each(:{name}))"

    def _list(self, conn: Connection, values: Iterable[str]) -> Any:
        ordered = sorted(values)
        return ordered if conn.dialect.name == "postgresql" else json.dumps(ordered)

    def _internal(self, conn: Connection) -> frozenset[str]:
        """The installation's own addresses (users, mailboxes), normalised."""
        found = [
            *conn.scalars(select(UserRow.email_key)),
            *conn.scalars(select(AccountRow.email)),
        ]
        return frozenset(a for a in (normalize_address(x) for x in found) if a)

    def _relink_set(self, conn: Connection, column: str, value: str, low: int, high: int) -> int:
        """Make the links of the messages with participant ``column`` (``address`` or
        ``domain``) = ``value`` and ids in ``(low, high]`` what the rules and the manual
        thread links say, in four statements whatever their number; how many messages.

        The rules of :func:`correspond.rules.crm.links_for` as joins: each participant that
        is not blocklisted brings its contact, the contact's company and open deals, its
        activities and, when it is external, its domain's company; a message with no
        external participant brings nothing (unless ``link_internal``). A thread's manual
        deal link (``thread_deal_links``) wins over the rules both ways. The wanted links go
        to a temporary table, then: auto links not wanted are deleted, wanted manual ones
        promoted, missing ones inserted (``sort_at`` copied from the message)."""
        if column not in ("address", "domain"):
            raise ValueError(column)
        postgres = conn.dialect.name == "postgresql"
        # The scope (the messages and their sort keys) is read once into a temporary table:
        # every statement below joins it instead of reading the participant index again.
        if postgres:
            conn.execute(
                text(
                    "CREATE TEMP TABLE IF NOT EXISTS crm_relink_wanted (message_id bigint, "
                    "target_kind varchar(10), target_id bigint, source varchar(6), "
                    "PRIMARY KEY (message_id, target_kind, target_id)) ON COMMIT DELETE ROWS"
                )
            )
            conn.execute(
                text(
                    "CREATE TEMP TABLE IF NOT EXISTS crm_relink_scope (message_id bigint "
                    "PRIMARY KEY, sort_at timestamptz) ON COMMIT DELETE ROWS"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE TEMP TABLE IF NOT EXISTS crm_relink_wanted (message_id INTEGER, "
                    "target_kind TEXT, target_id INTEGER, source TEXT, "
                    "PRIMARY KEY (message_id, target_kind, target_id))"
                )
            )
            conn.execute(
                text(
                    # sort_at without a type: the value is copied as stored, unconverted.
                    "CREATE TEMP TABLE IF NOT EXISTS crm_relink_scope (message_id INTEGER "
                    "PRIMARY KEY, sort_at)"
                )
            )
        conn.execute(text("DELETE FROM crm_relink_wanted"))
        conn.execute(text("DELETE FROM crm_relink_scope"))
        count = conn.execute(
            text(
                "INSERT INTO crm_relink_scope (message_id, sort_at) "
                "SELECT m.id, m.sort_at FROM messages m WHERE m.id IN ("
                "SELECT message_id FROM message_participants "
                f"WHERE {column} = :value AND message_id > :low AND message_id <= :high)"
            ),
            {"value": value, "low": low, "high": high},
        ).rowcount
        if not count:
            return 0
        if postgres:
            conn.execute(text("ANALYZE crm_relink_scope"))
            # The joins below hash up to a few hundred thousand rows: in memory, not in
            # batches spilled to disk (the default 4 MB); for this transaction only.
            conn.execute(text(f"SET LOCAL work_mem = '{_RELINK_WORK_MEM}'"))
            # Reading the links of a scope of 25,000 messages by the unique index (message_id
            # first) beats a scan of every link, but not at the default random_page_cost of
            # 4 (a disk's); the index pages are in memory. Measured per 25,000-message batch at
            # a million messages: delete + insert 1.0-1.1 s of backend CPU -> 0.6-0.7 s.
            conn.execute(text(f"SET LOCAL random_page_cost = {_RELINK_RANDOM_PAGE_COST}"))
        internal = self._values(conn, "internal")
        org = self._values(conn, "org")
        blocked = self._values(conn, "blocked")
        scope = "SELECT message_id FROM crm_relink_scope"
        params: dict[str, Any] = {
            "internal": self._list(conn, self._internal(conn)),
            "org": self._list(conn, self.policy.organisation_domains),
            "blocked": self._list(conn, self.policy.blocklist),
            "need_external": 0 if self.policy.link_internal else 1,
        }
        conn.execute(
            text(
                f"""
                INSERT INTO crm_relink_wanted (message_id, target_kind, target_id, source)
                WITH scope AS ({scope}),
                people AS (
                    SELECT p.message_id, p.address, p.domain,
                           CASE WHEN p.address IN {internal} OR p.domain IN {org}
                                THEN 0 ELSE 1 END AS external
                      FROM message_participants p
                      JOIN crm_relink_scope s ON s.message_id = p.message_id
                     WHERE p.address NOT IN {blocked} AND p.domain NOT IN {blocked}
                ),
                eligible AS (
                    SELECT * FROM people WHERE message_id IN (
                        SELECT message_id FROM people GROUP BY message_id
                        HAVING max(external) >= :need_external)
                ),
                their_contacts AS (
                    SELECT e.message_id, ce.contact_id
                      FROM eligible e JOIN contact_emails ce ON ce.address = e.address
                ),
                auto AS (
                    SELECT message_id, 'contact' AS target_kind, contact_id AS target_id
                      FROM their_contacts
                    UNION
                    SELECT tc.message_id, 'company', c.company_id
                      FROM their_contacts tc JOIN contacts c ON c.id = tc.contact_id
                     WHERE c.company_id IS NOT NULL
                    UNION
                    SELECT tc.message_id, 'deal', dc.deal_id
                      FROM their_contacts tc
                      JOIN deal_contacts dc ON dc.contact_id = tc.contact_id
                      JOIN deals d ON d.id = dc.deal_id
                     WHERE d.status = 'open'
                    UNION
                    SELECT e.message_id, 'activity', ap.activity_id
                      FROM eligible e JOIN activity_participants ap ON ap.address = e.address
                    UNION
                    SELECT e.message_id, 'company', cd.company_id
                      FROM eligible e JOIN company_domains cd ON cd.domain = e.domain
                     WHERE e.external = 1
                ),
                by_hand AS (
                    SELECT m.id AS message_id, t.deal_id, t.linked
                      FROM scope s JOIN messages m ON m.id = s.message_id
                      JOIN thread_deal_links t ON t.thread_id = m.thread_id
                )
                SELECT a.message_id, a.target_kind, a.target_id, 'auto' FROM auto a
                 WHERE a.target_kind <> 'deal' OR NOT EXISTS (
                       SELECT 1 FROM by_hand h
                        WHERE h.message_id = a.message_id AND h.deal_id = a.target_id)
                UNION ALL
                SELECT h.message_id, 'deal', h.deal_id, 'manual' FROM by_hand h WHERE h.linked
                """
            ),
            params,
        )
        if postgres:
            # Its size varies from a few rows to hundreds of thousands: without statistics the
            # planner guesses and reads every link of the installation for the joins below.
            conn.execute(text("ANALYZE crm_relink_wanted"))
        same = (
            "w.message_id = timeline_links.message_id "
            "AND w.target_kind = timeline_links.target_kind "
            "AND w.target_id = timeline_links.target_id"
        )
        conn.execute(
            text(
                f"DELETE FROM timeline_links WHERE source = 'auto' "
                f"AND message_id IN ({scope}) "
                f"AND NOT EXISTS (SELECT 1 FROM crm_relink_wanted w WHERE {same})"
            )
        )
        conn.execute(
            text(
                f"UPDATE timeline_links SET source = 'manual' WHERE source = 'auto' "
                f"AND message_id IN ({scope}) AND EXISTS "
                f"(SELECT 1 FROM crm_relink_wanted w WHERE {same} AND w.source = 'manual')"
            )
        )
        # The links the scope has, read first: an anti-join straight against timeline_links
        # hashes every link of the installation (PostgreSQL 15 hashes the inner side).
        have = (
            "WITH have AS MATERIALIZED (SELECT l.message_id, l.target_kind, l.target_id "
            "FROM timeline_links l "
            "WHERE l.message_id IN (SELECT message_id FROM crm_relink_scope)) "
            if postgres
            else ""
        )
        conn.execute(
            text(
                f"{have}INSERT INTO timeline_links "
                "(message_id, target_kind, target_id, source, sort_at, created_at) "
                "SELECT w.message_id, w.target_kind, w.target_id, w.source, m.sort_at, :now "
                "FROM crm_relink_wanted w JOIN crm_relink_scope m ON m.message_id = w.message_id "
                f"WHERE NOT EXISTS (SELECT 1 FROM {'have' if postgres else 'timeline_links'} l "
                "WHERE l.message_id = w.message_id AND l.target_kind = w.target_kind "
                "AND l.target_id = w.target_id)"
            ).bindparams(bindparam("now", utcnow(), type_=UtcDateTime())),
        )
        conn.execute(text("DELETE FROM crm_relink_wanted"))
        conn.execute(text("DELETE FROM crm_relink_scope"))
        return count
