"""The linker's SQL: the participant index and the automatic timeline links.

Two kinds of step, each ONE transaction that either happens whole or not at all, so a process
killed at any point leaves nothing half done that the next step does not redo:

- :meth:`LinkerStore.index_batch`: the next ``batch`` messages after the watermark
  (``crm_linker_state.indexed_through``) get their ``message_participants`` rows and their
  links, and the watermark moves past them. Rows of those messages are deleted first, so a
  step that runs twice writes the same rows.
- :meth:`LinkerStore.relink_batch`: the oldest entry of ``crm_relink_queue`` (an address or
  a domain a record change touched): the next ``batch`` indexed messages with that participant
  are linked again, and the entry's ``done_through`` moves (the entry goes when done).

Linking a set of messages (:meth:`_relink`) reads what the rules need for their addresses,
asks :func:`correspond.rules.crm.links_for` per message, then deletes the automatic links no
longer wanted and inserts the missing ones; manual links are never deleted by it, and a thread
a person linked to (or unlinked from) a deal keeps that for all its messages.

Writers are serialised (several processes may run a linker): a transaction-scoped advisory
lock on PostgreSQL; on SQLite the step writes first, which takes the database's write lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Engine, delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from correspond.rules.crm import (
    LinkContext,
    domain_of,
    links_for,
    normalize_address,
    normalize_domain,
    participant_rows,
)
from correspond.store.crm_tables import (
    ActivityParticipantRow,
    CompanyDomainRow,
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
from correspond.store.message_tables import MessageRow
from correspond.store.tables import AccountRow, UserRow, utcnow

__all__ = ["LinkPolicy", "LinkerStore"]

T = TypeVar("T")
_LOCK_KEY = 0x63726D6C  # "crml": the linker's advisory lock
_CHUNK = 1000


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

    @classmethod
    def build(
        cls, organisation_domains: Iterable[str], blocklist: Iterable[str], link_internal: bool
    ) -> LinkPolicy:
        blocked: set[str] = set()
        for entry in blocklist:
            norm = normalize_address(entry) if "@" in entry.strip("@") else None
            norm = norm or normalize_domain(entry.lstrip("@"))
            if norm:
                blocked.add(norm)
        doms = {d for d in (normalize_domain(x.lstrip("@")) for x in organisation_domains) if d}
        return cls(frozenset(doms), frozenset(blocked), link_internal)


@dataclass(frozen=True, slots=True)
class _Message:
    sort_at: datetime
    thread_id: int | None
    addresses: frozenset[str]


class LinkerStore:
    """The linker's transactions over one engine."""

    def __init__(self, engine: Engine, policy: LinkPolicy, *, batch: int = 2000) -> None:
        self.engine = engine
        self.policy = policy
        self.batch = batch
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
            rows = s.execute(
                select(
                    MessageRow.id,
                    MessageRow.from_email,
                    MessageRow.to_addrs,
                    MessageRow.cc_addrs,
                    MessageRow.bcc_addrs,
                    MessageRow.direction,
                    MessageRow.sort_at,
                    MessageRow.thread_id,
                )
                .where(MessageRow.id > mark)
                .order_by(MessageRow.id)
                .limit(self.batch)
            ).all()
            if not rows:
                return 0
            ids = [int(r[0]) for r in rows]
            for part in _chunks(ids):
                s.execute(
                    delete(MessageParticipantRow).where(MessageParticipantRow.message_id.in_(part))
                )
            index: list[dict[str, Any]] = []
            messages: dict[int, _Message] = {}
            for mid, from_email, to, cc, bcc, direction, sort_at, thread_id in rows:
                pairs = participant_rows(from_email, to, cc, bcc, outbound=direction == "outbound")
                index.extend(
                    {"message_id": mid, "address": a, "role": r, "domain": domain_of(a)}
                    for a, r in pairs
                )
                messages[int(mid)] = _Message(sort_at, thread_id, frozenset(a for a, _ in pairs))
            if index:
                s.execute(insert(MessageParticipantRow), index)
            self._relink(s, messages)
            s.execute(
                update(LinkerStateRow).where(LinkerStateRow.id == 1).values(indexed_through=ids[-1])
            )
            return len(ids)

    def relink_batch(self) -> int:
        """Link again the next batch of messages of the oldest queued address or domain; how
        many messages (0 and the entry gone when it had none left; -1: the queue is empty)."""
        with unit_of_work(self._sessions) as s:
            mark = self._lock(s)
            entry = s.scalars(select(RelinkQueueRow).order_by(RelinkQueueRow.id).limit(1)).first()
            if entry is None:
                return -1
            p = MessageParticipantRow
            column = p.address if entry.address is not None else p.domain
            value = entry.address if entry.address is not None else entry.domain
            ids = list(
                s.scalars(
                    select(p.message_id)
                    .where(column == value, p.message_id > entry.done_through, p.message_id <= mark)
                    .group_by(p.message_id)
                    .order_by(p.message_id)
                    .limit(self.batch)
                )
            )
            if ids:
                self._relink(s, self._load(s, ids))
            if len(ids) < self.batch:
                s.delete(entry)
            else:
                entry.done_through = ids[-1]
            return len(ids)

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

    @staticmethod
    def _load(s: Session, ids: Sequence[int]) -> dict[int, _Message]:
        found: dict[int, set[str]] = {i: set() for i in ids}
        meta: dict[int, tuple[datetime, int | None]] = {}
        for part in _chunks(ids):
            for mid, address in s.execute(
                select(MessageParticipantRow.message_id, MessageParticipantRow.address).where(
                    MessageParticipantRow.message_id.in_(part)
                )
            ):
                found[mid].add(address)
            for mid, sort_at, thread_id in s.execute(
                select(MessageRow.id, MessageRow.sort_at, MessageRow.thread_id).where(
                    MessageRow.id.in_(part)
                )
            ):
                meta[mid] = (sort_at, thread_id)
        return {i: _Message(meta[i][0], meta[i][1], frozenset(found[i])) for i in ids if i in meta}

    def _context(self, s: Session, messages: dict[int, _Message]) -> LinkContext:
        addrs = sorted({a for m in messages.values() for a in m.addresses})
        doms = sorted({domain_of(a) for a in addrs})
        contacts: dict[str, int] = {}
        contact_company: dict[int, int] = {}
        activities: dict[str, list[int]] = {}
        domain_companies: dict[str, int] = {}
        open_deals: dict[int, list[int]] = {}
        for part in _chunks(addrs):
            for address, cid, company in s.execute(
                select(ContactEmailRow.address, ContactRow.id, ContactRow.company_id)
                .join(ContactRow, ContactRow.id == ContactEmailRow.contact_id)
                .where(ContactEmailRow.address.in_(part))
            ):
                contacts[address] = cid
                if company is not None:
                    contact_company[cid] = company
            for address, aid in s.execute(
                select(ActivityParticipantRow.address, ActivityParticipantRow.activity_id).where(
                    ActivityParticipantRow.address.in_(part)
                )
            ):
                activities.setdefault(address, []).append(aid)
        for part in _chunks(doms):
            for domain, company in s.execute(
                select(CompanyDomainRow.domain, CompanyDomainRow.company_id).where(
                    CompanyDomainRow.domain.in_(part)
                )
            ):
                domain_companies[domain] = company
        for ids in _chunks(sorted(set(contacts.values()))):
            for cid, did in s.execute(
                select(DealContactRow.contact_id, DealContactRow.deal_id)
                .join(DealRow, DealRow.id == DealContactRow.deal_id)
                .where(DealContactRow.contact_id.in_(ids), DealRow.status == "open")
            ):
                open_deals.setdefault(cid, []).append(did)
        internal = {
            a
            for a in (
                normalize_address(x)
                for x in [
                    *s.scalars(select(UserRow.email_key)),
                    *s.scalars(select(AccountRow.email)),
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

    def _relink(self, s: Session, messages: dict[int, _Message]) -> None:
        """Make the links of ``messages`` what the rules and the manual thread links say."""
        if not messages:
            return
        ctx = self._context(s, messages)
        ids = sorted(messages)
        threads = sorted({m.thread_id for m in messages.values() if m.thread_id is not None})
        manual: dict[int, dict[int, bool]] = {}
        for part in _chunks(threads):
            for tid, did, linked in s.execute(
                select(
                    ThreadDealLinkRow.thread_id, ThreadDealLinkRow.deal_id, ThreadDealLinkRow.linked
                ).where(ThreadDealLinkRow.thread_id.in_(part))
            ):
                manual.setdefault(tid, {})[did] = bool(linked)
        existing: dict[tuple[int, str, int], tuple[int, str]] = {}
        for part in _chunks(ids):
            for lid, mid, kind, target, source in s.execute(
                select(
                    TimelineLinkRow.id,
                    TimelineLinkRow.message_id,
                    TimelineLinkRow.target_kind,
                    TimelineLinkRow.target_id,
                    TimelineLinkRow.source,
                ).where(TimelineLinkRow.message_id.in_(part))
            ):
                existing[(mid, kind, target)] = (lid, source)
        drop: list[int] = []
        promote: list[int] = []
        add: list[dict[str, Any]] = []
        now = utcnow()
        keep: dict[int, set[tuple[str, int]]] = {}
        for mid in ids:
            message = messages[mid]
            wanted = links_for(message.addresses, ctx)
            by_hand = manual.get(message.thread_id, {}) if message.thread_id is not None else {}
            wanted -= {("deal", d) for d, linked in by_hand.items() if not linked}
            hand = {("deal", d) for d, linked in by_hand.items() if linked}
            keep[mid] = wanted | hand
            for kind, target in keep[mid]:
                found = existing.get((mid, kind, target))
                source = "manual" if (kind, target) in hand else "auto"
                if found is None:
                    add.append(
                        {
                            "message_id": mid,
                            "target_kind": kind,
                            "target_id": target,
                            "source": source,
                            "sort_at": message.sort_at,
                            "created_at": now,
                        }
                    )
                elif source == "manual" and found[1] != "manual":
                    promote.append(found[0])
        for (mid, kind, target), (lid, source) in existing.items():
            if source == "auto" and (kind, target) not in keep.get(mid, ()):
                drop.append(lid)
        for part in _chunks(drop):
            s.execute(delete(TimelineLinkRow).where(TimelineLinkRow.id.in_(part)))
        for part in _chunks(promote):
            s.execute(
                update(TimelineLinkRow).where(TimelineLinkRow.id.in_(part)).values(source="manual")
            )
        if add:
            s.execute(insert(TimelineLinkRow), add)
