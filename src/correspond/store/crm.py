"""CRM records: contacts, companies, deals and activities, their import, manual thread-deal
links and timelines. All their SQL is here (the linker's is in :mod:`correspond.store.linker`).

Every change that can move a message on or off a timeline queues the addresses and domains it
touched (``crm_relink_queue``) in the same transaction, so the linker links those messages
again in the background and a crash between the two loses nothing. Deleting a record deletes
its links at once (auto and manual: the record is gone).

Timelines show only what the caller may see, through :func:`correspond.store.visibility.
visible_message_filter`, the one rule every timeline query goes through.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Engine,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import Session, sessionmaker

from correspond.errors import ConfigError, Conflict, NotFound
from correspond.rules.crm import (
    ACTIVITY_KINDS,
    DEAL_STATUSES,
    TARGET_KINDS,
    normalize_address,
    normalize_domain,
)
from correspond.store.crm_tables import (
    CONTACT_ORIGINS,
    ActivityParticipantRow,
    ActivityRow,
    CompanyDomainRow,
    CompanyRow,
    ContactDismissalRow,
    ContactEmailRow,
    ContactRow,
    DealContactRow,
    DealRow,
    RelinkQueueRow,
    ThreadDealLinkRow,
    TimelineLinkRow,
)
from correspond.store.engine import register_table_modules, unit_of_work
from correspond.store.message_queries import (
    _LIST_COLUMNS,
    MAX_PAGE,
    MessagePage,
    _list_items,
    decode_cursor,
    encode_cursor,
)
from correspond.store.message_tables import MessageRow, ThreadRow, shown
from correspond.store.tables import UtcDateTime, utcnow
from correspond.store.visibility import Viewer, viewer_params, visible_message_filter

__all__ = [
    "Activity",
    "Company",
    "Contact",
    "CrmStore",
    "Deal",
    "ImportReport",
    "RecordPage",
    "RowError",
]

T = TypeVar("T")
MAX_EXTERNAL_ID = 200
#: A company's domains looked at for its activities (a bound on the query's size).
_MAX_RECORD_DOMAINS = 50


@dataclass(frozen=True, slots=True)
class Contact:
    id: int
    name: str
    emails: tuple[str, ...]
    company_id: int | None
    external_id: str | None
    created_at: datetime
    updated_at: datetime
    origin: str = "manual"


@dataclass(frozen=True, slots=True)
class Company:
    id: int
    name: str
    domains: tuple[str, ...]
    external_id: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Deal:
    id: int
    name: str
    status: str
    company_id: int | None
    contact_ids: tuple[int, ...]
    external_id: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Activity:
    id: int
    kind: str
    title: str
    at: datetime | None
    participants: tuple[str, ...]
    external_id: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class DealChoice:
    """A deal as a picker offers it."""

    id: int
    name: str
    status: str


@dataclass(frozen=True, slots=True)
class RecordPage(Generic[T]):
    items: list[T]
    #: Pass as ``after`` for the next page; None on the last.
    next_cursor: int | None


@dataclass(frozen=True, slots=True)
class RowError:
    row: int
    error: str


@dataclass(slots=True)
class ImportReport:
    created: int = 0
    updated: int = 0
    errors: list[RowError] = field(default_factory=list)


def addresses(values: Iterable[str]) -> list[str]:
    """``values`` normalised, in order, without repeats; ConfigError naming a bad one."""
    out: dict[str, None] = {}
    for value in values:
        norm = normalize_address(value)
        if norm is None:
            raise ConfigError(f"not an e-mail address: {value[:80]!r}")
        out[norm] = None
    return list(out)


def domains(values: Iterable[str]) -> list[str]:
    out: dict[str, None] = {}
    for value in values:
        norm = normalize_domain(value.removeprefix("@"))
        if norm is None or "." not in norm:
            raise ConfigError(f"not a domain: {value[:80]!r}")
        out[norm] = None
    return list(out)


def _external(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if len(value) > MAX_EXTERNAL_ID:
        raise ConfigError(f"external_id is longer than {MAX_EXTERNAL_ID} characters")
    return value


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _pattern(q: str) -> str:
    return f"%{_escape_like(q.lower())}%"


_MODELS: dict[str, Any] = {
    "contact": ContactRow,
    "company": CompanyRow,
    "deal": DealRow,
    "activity": ActivityRow,
}


class CrmStore:
    """CRM records over one SQLAlchemy engine (SQLite or PostgreSQL). Thread-safe."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        register_table_modules()

    def _tx(self) -> Any:
        return unit_of_work(self._sessions)

    # -- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _enqueue(s: Session, *, addrs: Iterable[str] = (), doms: Iterable[str] = ()) -> None:
        rows = [{"address": a, "domain": None} for a in sorted(set(addrs))]
        rows += [{"address": None, "domain": d} for d in sorted(set(doms))]
        if rows:
            now = utcnow()
            s.execute(
                insert(RelinkQueueRow), [{**r, "done_through": 0, "created_at": now} for r in rows]
            )

    @staticmethod
    def _row(s: Session, kind: str, record_id: int) -> Any:
        row = s.get(_MODELS[kind], record_id)
        if row is None:
            raise NotFound(f"no {kind} with id {record_id}")
        return row

    @staticmethod
    def _check_external(s: Session, kind: str, external_id: str | None, me: int | None) -> None:
        if external_id is None:
            return
        model = _MODELS[kind]
        other = s.scalar(select(model.id).where(model.external_id == external_id))
        if other is not None and other != me:
            raise Conflict(f"external_id {external_id!r} belongs to {kind} {other}")

    def _check_company(self, s: Session, company_id: int | None) -> None:
        if company_id is not None and s.get(CompanyRow, company_id) is None:
            raise ConfigError(f"no company with id {company_id}")

    def _page(
        self,
        s: Session,
        kind: str,
        query: Any,
        after: int | None,
        limit: int,
        build: Callable[[Session, Sequence[Any]], list[T]],
    ) -> RecordPage[T]:
        if not 1 <= limit <= MAX_PAGE:
            raise ConfigError(f"limit must be between 1 and {MAX_PAGE}")
        model = _MODELS[kind]
        if after is not None:
            query = query.where(model.id > after)
        rows = s.scalars(query.order_by(model.id).limit(limit + 1)).all()
        items = build(s, rows[:limit])
        return RecordPage(items, rows[limit - 1].id if len(rows) > limit else None)

    # -- contacts --------------------------------------------------------------------------

    @staticmethod
    def _contacts(s: Session, rows: Sequence[ContactRow]) -> list[Contact]:
        ids = [r.id for r in rows]
        emails: dict[int, list[str]] = {i: [] for i in ids}
        if ids:
            for cid, address in s.execute(
                select(ContactEmailRow.contact_id, ContactEmailRow.address)
                .where(ContactEmailRow.contact_id.in_(ids))
                .order_by(ContactEmailRow.id)
            ):
                emails[cid].append(address)
        return [
            Contact(
                r.id,
                r.name,
                tuple(emails[r.id]),
                r.company_id,
                r.external_id,
                r.created_at,
                r.updated_at,
                r.origin,
            )
            for r in rows
        ]

    def _check_addresses(self, s: Session, addrs: Sequence[str], me: int | None) -> None:
        if not addrs:
            return
        for address, owner in s.execute(
            select(ContactEmailRow.address, ContactEmailRow.contact_id).where(
                ContactEmailRow.address.in_(addrs)
            )
        ):
            if owner != me:
                raise Conflict(f"{address} belongs to contact {owner}")

    def _contact_by_address(self, s: Session, addrs: Sequence[str]) -> int | None:
        if not addrs:
            return None
        return s.scalar(
            select(ContactEmailRow.contact_id)
            .where(ContactEmailRow.address.in_(addrs))
            .order_by(ContactEmailRow.contact_id)
            .limit(1)
        )

    def _set_contact(
        self,
        s: Session,
        row: ContactRow | None,
        fields: dict[str, Any],
        origin: str = "manual",
    ) -> ContactRow:
        """Create (``row`` None) or change a contact from already-checked ``fields``; the
        contact's ``origin`` becomes ``origin`` (a person's change adopts an auto-created
        contact). Its addresses are no longer dismissed from auto-creation."""
        emails = addresses(fields["emails"]) if "emails" in fields else None
        if "external_id" in fields:
            fields["external_id"] = _external(fields["external_id"])
            self._check_external(
                s, "contact", fields["external_id"], row.id if row is not None else None
            )
        if "company_id" in fields:
            self._check_company(s, fields["company_id"])
        if emails is not None:
            self._check_addresses(s, emails, row.id if row is not None else None)
        touched: set[str] = set()
        if row is None:
            row = ContactRow(
                name=fields.get("name") or "",
                company_id=fields.get("company_id"),
                external_id=fields.get("external_id"),
                origin=origin,
            )
            s.add(row)
            s.flush()
        else:
            old = set(
                s.scalars(
                    select(ContactEmailRow.address).where(ContactEmailRow.contact_id == row.id)
                )
            )
            for key in ("name", "company_id", "external_id"):
                if key in fields:
                    setattr(row, key, fields[key] if key != "name" else fields[key] or "")
            row.updated_at = utcnow()
            row.origin = origin
            if "company_id" in fields or emails is not None:
                touched |= old  # its messages' company links change
            if emails is not None:
                s.execute(delete(ContactEmailRow).where(ContactEmailRow.contact_id == row.id))
                s.flush()
        if emails is not None:
            s.add_all(ContactEmailRow(contact_id=row.id, address=a) for a in emails)
            touched |= set(emails)
            if emails:
                s.execute(
                    delete(ContactDismissalRow).where(ContactDismissalRow.address.in_(emails))
                )
        self._enqueue(s, addrs=touched)
        s.flush()
        return row

    def create_contact(self, **fields: Any) -> Contact:
        with self._tx() as s:
            return self._contacts(s, [self._set_contact(s, None, fields)])[0]

    def update_contact(self, contact_id: int, **fields: Any) -> Contact:
        with self._tx() as s:
            row = self._row(s, "contact", contact_id)
            return self._contacts(s, [self._set_contact(s, row, fields)])[0]

    def get_contact(self, contact_id: int) -> Contact:
        with self._tx() as s:
            return self._contacts(s, [self._row(s, "contact", contact_id)])[0]

    def list_contacts(
        self,
        *,
        q: str | None = None,
        after: int | None = None,
        limit: int = 50,
        origin: str | None = None,
    ) -> RecordPage[Contact]:
        query = select(ContactRow)
        if origin is not None:
            if origin not in CONTACT_ORIGINS:
                raise ConfigError(f"origin must be one of {', '.join(CONTACT_ORIGINS)}")
            query = query.where(ContactRow.origin == origin)
        if q and q.strip():
            pattern = _pattern(q.strip())
            query = query.where(
                or_(
                    func.lower(ContactRow.name).like(pattern, escape="\\"),
                    exists().where(
                        ContactEmailRow.contact_id == ContactRow.id,
                        ContactEmailRow.address.like(pattern, escape="\\"),
                    ),
                )
            )
        with self._tx() as s:
            return self._page(s, "contact", query, after, limit, self._contacts)

    def delete_contact(self, contact_id: int) -> None:
        with self._tx() as s:
            row = self._row(s, "contact", contact_id)
            old = list(
                s.scalars(
                    select(ContactEmailRow.address).where(ContactEmailRow.contact_id == row.id)
                )
            )
            self._drop_links(s, "contact", contact_id)
            s.delete(row)
            self._enqueue(s, addrs=old)
            self._dismiss(s, old)

    @staticmethod
    def _dismiss(s: Session, addrs: Sequence[str]) -> None:
        """A deleted contact's addresses: auto-creation must not make it again."""
        if not addrs:
            return
        known = set(
            s.scalars(
                select(ContactDismissalRow.address).where(ContactDismissalRow.address.in_(addrs))
            )
        )
        now = utcnow()
        s.add_all(ContactDismissalRow(address=a, dismissed_at=now) for a in addrs if a not in known)

    def list_dismissals(
        self, *, after: str | None = None, limit: int = 50
    ) -> tuple[list[tuple[str, datetime]], str | None]:
        """Dismissed addresses in address order, ``limit`` after ``after``; and the cursor
        of the next page (the last address) when there is one."""
        if not 1 <= limit <= MAX_PAGE:
            raise ConfigError(f"limit must be between 1 and {MAX_PAGE}")
        query = select(ContactDismissalRow.address, ContactDismissalRow.dismissed_at)
        if after is not None:
            query = query.where(ContactDismissalRow.address > after)
        with self._tx() as s:
            rows = [
                (str(a), d)
                for a, d in s.execute(
                    query.order_by(ContactDismissalRow.address).limit(limit + 1)
                ).all()
            ]
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (rows[-1][0] if more else None)

    def undismiss(self, address: str) -> None:
        """Let auto-creation make a contact for ``address`` again; NotFound when it is not
        dismissed."""
        norm = addresses([address])[0]
        with self._tx() as s:
            gone = s.execute(
                delete(ContactDismissalRow).where(ContactDismissalRow.address == norm)
            ).rowcount
            if not gone:
                raise NotFound(f"{norm} is not dismissed")

    # -- companies -------------------------------------------------------------------------

    @staticmethod
    def _companies(s: Session, rows: Sequence[CompanyRow]) -> list[Company]:
        ids = [r.id for r in rows]
        found: dict[int, list[str]] = {i: [] for i in ids}
        if ids:
            for cid, domain in s.execute(
                select(CompanyDomainRow.company_id, CompanyDomainRow.domain)
                .where(CompanyDomainRow.company_id.in_(ids))
                .order_by(CompanyDomainRow.id)
            ):
                found[cid].append(domain)
        return [
            Company(r.id, r.name, tuple(found[r.id]), r.external_id, r.created_at, r.updated_at)
            for r in rows
        ]

    def _contact_addresses_of_company(self, s: Session, company_id: int) -> list[str]:
        return list(
            s.scalars(
                select(ContactEmailRow.address)
                .join(ContactRow, ContactRow.id == ContactEmailRow.contact_id)
                .where(ContactRow.company_id == company_id)
            )
        )

    def _set_company(
        self, s: Session, row: CompanyRow | None, fields: dict[str, Any]
    ) -> CompanyRow:
        doms = domains(fields["domains"]) if "domains" in fields else None
        if "external_id" in fields:
            fields["external_id"] = _external(fields["external_id"])
            self._check_external(
                s, "company", fields["external_id"], row.id if row is not None else None
            )
        if doms:
            for domain, owner in s.execute(
                select(CompanyDomainRow.domain, CompanyDomainRow.company_id).where(
                    CompanyDomainRow.domain.in_(doms)
                )
            ):
                if row is None or owner != row.id:
                    raise Conflict(f"{domain} belongs to company {owner}")
        touched: set[str] = set()
        if row is None:
            if not (fields.get("name") or "").strip():
                raise ConfigError("a company needs a name")
            row = CompanyRow(name=fields["name"], external_id=fields.get("external_id"))
            s.add(row)
            s.flush()
        else:
            for key in ("name", "external_id"):
                if key in fields:
                    setattr(row, key, fields[key])
            row.updated_at = utcnow()
            if doms is not None:
                touched = set(
                    s.scalars(
                        select(CompanyDomainRow.domain).where(CompanyDomainRow.company_id == row.id)
                    )
                )
                s.execute(delete(CompanyDomainRow).where(CompanyDomainRow.company_id == row.id))
                s.flush()
        if doms is not None:
            s.add_all(CompanyDomainRow(company_id=row.id, domain=d) for d in doms)
            touched |= set(doms)
        self._enqueue(s, doms=touched)
        s.flush()
        return row

    def create_company(self, **fields: Any) -> Company:
        with self._tx() as s:
            return self._companies(s, [self._set_company(s, None, fields)])[0]

    def update_company(self, company_id: int, **fields: Any) -> Company:
        with self._tx() as s:
            row = self._row(s, "company", company_id)
            return self._companies(s, [self._set_company(s, row, fields)])[0]

    def get_company(self, company_id: int) -> Company:
        with self._tx() as s:
            return self._companies(s, [self._row(s, "company", company_id)])[0]

    def list_companies(
        self, *, q: str | None = None, after: int | None = None, limit: int = 50
    ) -> RecordPage[Company]:
        query = select(CompanyRow)
        if q and q.strip():
            pattern = _pattern(q.strip())
            query = query.where(
                or_(
                    func.lower(CompanyRow.name).like(pattern, escape="\\"),
                    exists().where(
                        CompanyDomainRow.company_id == CompanyRow.id,
                        CompanyDomainRow.domain.like(pattern, escape="\\"),
                    ),
                )
            )
        with self._tx() as s:
            return self._page(s, "company", query, after, limit, self._companies)

    def delete_company(self, company_id: int) -> None:
        with self._tx() as s:
            row = self._row(s, "company", company_id)
            self._drop_links(s, "company", company_id)
            s.delete(row)

    # -- deals -----------------------------------------------------------------------------

    @staticmethod
    def _deals(s: Session, rows: Sequence[DealRow]) -> list[Deal]:
        ids = [r.id for r in rows]
        found: dict[int, list[int]] = {i: [] for i in ids}
        if ids:
            for did, cid in s.execute(
                select(DealContactRow.deal_id, DealContactRow.contact_id)
                .where(DealContactRow.deal_id.in_(ids))
                .order_by(DealContactRow.contact_id)
            ):
                found[did].append(cid)
        return [
            Deal(
                r.id,
                r.name,
                r.status,
                r.company_id,
                tuple(found[r.id]),
                r.external_id,
                r.created_at,
                r.updated_at,
            )
            for r in rows
        ]

    def _addresses_of_contacts(self, s: Session, contact_ids: Iterable[int]) -> set[str]:
        ids = sorted(set(contact_ids))
        if not ids:
            return set()
        return set(
            s.scalars(select(ContactEmailRow.address).where(ContactEmailRow.contact_id.in_(ids)))
        )

    def _set_deal(self, s: Session, row: DealRow | None, fields: dict[str, Any]) -> DealRow:
        if "status" in fields and fields["status"] not in DEAL_STATUSES:
            raise ConfigError(f"status must be one of {', '.join(DEAL_STATUSES)}")
        if "external_id" in fields:
            fields["external_id"] = _external(fields["external_id"])
            self._check_external(
                s, "deal", fields["external_id"], row.id if row is not None else None
            )
        if "company_id" in fields:
            self._check_company(s, fields["company_id"])
        contacts = None
        if "contact_ids" in fields:
            contacts = sorted(set(fields["contact_ids"] or ()))
            known = set(s.scalars(select(ContactRow.id).where(ContactRow.id.in_(contacts))))
            missing = [c for c in contacts if c not in known]
            if missing:
                raise ConfigError(f"no contact with id {missing[0]}")
        old_contacts: set[int] = set()
        if row is None:
            if not (fields.get("name") or "").strip():
                raise ConfigError("a deal needs a name")
            row = DealRow(
                name=fields["name"],
                status=fields.get("status") or "open",
                company_id=fields.get("company_id"),
                external_id=fields.get("external_id"),
            )
            s.add(row)
            s.flush()
        else:
            old_contacts = set(
                s.scalars(select(DealContactRow.contact_id).where(DealContactRow.deal_id == row.id))
            )
            for key in ("name", "status", "company_id", "external_id"):
                if key in fields:
                    setattr(row, key, fields[key])
            row.updated_at = utcnow()
        if contacts is not None:
            s.execute(delete(DealContactRow).where(DealContactRow.deal_id == row.id))
            s.add_all(DealContactRow(deal_id=row.id, contact_id=c) for c in contacts)
        if contacts is not None or "status" in fields:
            now = set(contacts) if contacts is not None else old_contacts
            self._enqueue(s, addrs=self._addresses_of_contacts(s, old_contacts | now))
        s.flush()
        return row

    def create_deal(self, **fields: Any) -> Deal:
        with self._tx() as s:
            return self._deals(s, [self._set_deal(s, None, fields)])[0]

    def update_deal(self, deal_id: int, **fields: Any) -> Deal:
        with self._tx() as s:
            row = self._row(s, "deal", deal_id)
            return self._deals(s, [self._set_deal(s, row, fields)])[0]

    def get_deal(self, deal_id: int) -> Deal:
        with self._tx() as s:
            return self._deals(s, [self._row(s, "deal", deal_id)])[0]

    def list_deals(
        self, *, q: str | None = None, after: int | None = None, limit: int = 50
    ) -> RecordPage[Deal]:
        query = select(DealRow)
        if q and q.strip():
            query = query.where(func.lower(DealRow.name).like(_pattern(q.strip()), escape="\\"))
        with self._tx() as s:
            return self._page(s, "deal", query, after, limit, self._deals)

    def deal_choices(self, *, limit: int = 200) -> list[DealChoice]:
        """Deals to offer in a picker: open ones first, each group most recently changed
        first, at most ``limit``; id, name and status only (no contacts: a picker shows
        none, and reading them for 200 deals was a third of a thread page's time)."""
        with self._tx() as s:
            rows = s.execute(
                select(DealRow.id, DealRow.name, DealRow.status)
                .order_by((DealRow.status != "open"), DealRow.updated_at.desc(), DealRow.id.desc())
                .limit(limit)
            ).all()
            return [DealChoice(int(r[0]), str(r[1]), str(r[2])) for r in rows]

    def delete_deal(self, deal_id: int) -> None:
        with self._tx() as s:
            row = self._row(s, "deal", deal_id)
            self._drop_links(s, "deal", deal_id)
            s.delete(row)

    # -- activities ------------------------------------------------------------------------

    @staticmethod
    def _activities(s: Session, rows: Sequence[ActivityRow]) -> list[Activity]:
        ids = [r.id for r in rows]
        found: dict[int, list[str]] = {i: [] for i in ids}
        if ids:
            for aid, address in s.execute(
                select(ActivityParticipantRow.activity_id, ActivityParticipantRow.address)
                .where(ActivityParticipantRow.activity_id.in_(ids))
                .order_by(ActivityParticipantRow.address)
            ):
                found[aid].append(address)
        return [
            Activity(
                r.id,
                r.kind,
                r.title,
                r.at,
                tuple(found[r.id]),
                r.external_id,
                r.created_at,
                r.updated_at,
            )
            for r in rows
        ]

    def _set_activity(
        self, s: Session, row: ActivityRow | None, fields: dict[str, Any]
    ) -> ActivityRow:
        if "kind" in fields and fields["kind"] not in ACTIVITY_KINDS:
            raise ConfigError(f"kind must be one of {', '.join(ACTIVITY_KINDS)}")
        people = addresses(fields["participants"]) if "participants" in fields else None
        if "external_id" in fields:
            fields["external_id"] = _external(fields["external_id"])
            self._check_external(
                s, "activity", fields["external_id"], row.id if row is not None else None
            )
        touched: set[str] = set()
        if row is None:
            if not (fields.get("title") or "").strip() or "kind" not in fields:
                raise ConfigError("an activity needs a kind and a title")
            row = ActivityRow(
                kind=fields["kind"],
                title=fields["title"],
                at=fields.get("at"),
                external_id=fields.get("external_id"),
            )
            s.add(row)
            s.flush()
        else:
            for key in ("kind", "title", "at", "external_id"):
                if key in fields:
                    setattr(row, key, fields[key])
            row.updated_at = utcnow()
            if people is not None:
                touched = set(
                    s.scalars(
                        select(ActivityParticipantRow.address).where(
                            ActivityParticipantRow.activity_id == row.id
                        )
                    )
                )
                s.execute(
                    delete(ActivityParticipantRow).where(
                        ActivityParticipantRow.activity_id == row.id
                    )
                )
                s.flush()
        if people is not None:
            s.add_all(ActivityParticipantRow(activity_id=row.id, address=a) for a in people)
            touched |= set(people)
        self._enqueue(s, addrs=touched)
        s.flush()
        return row

    def create_activity(self, **fields: Any) -> Activity:
        with self._tx() as s:
            return self._activities(s, [self._set_activity(s, None, fields)])[0]

    def update_activity(self, activity_id: int, **fields: Any) -> Activity:
        with self._tx() as s:
            row = self._row(s, "activity", activity_id)
            return self._activities(s, [self._set_activity(s, row, fields)])[0]

    def get_activity(self, activity_id: int) -> Activity:
        with self._tx() as s:
            return self._activities(s, [self._row(s, "activity", activity_id)])[0]

    def list_activities(
        self, *, q: str | None = None, after: int | None = None, limit: int = 50
    ) -> RecordPage[Activity]:
        query = select(ActivityRow)
        if q and q.strip():
            pattern = _pattern(q.strip())
            query = query.where(
                or_(
                    func.lower(ActivityRow.title).like(pattern, escape="\\"),
                    exists().where(
                        ActivityParticipantRow.activity_id == ActivityRow.id,
                        ActivityParticipantRow.address.like(pattern, escape="\\"),
                    ),
                )
            )
        with self._tx() as s:
            return self._page(s, "activity", query, after, limit, self._activities)

    def delete_activity(self, activity_id: int) -> None:
        with self._tx() as s:
            row = self._row(s, "activity", activity_id)
            self._drop_links(s, "activity", activity_id)
            s.delete(row)

    def exists(self, kind: str, record_id: int) -> bool:
        with self._tx() as s:
            return s.get(_MODELS[kind], record_id) is not None

    # -- import ----------------------------------------------------------------------------

    def import_records(self, kind: str, rows: Sequence[dict[str, Any] | str]) -> ImportReport:
        """Create or update each row (one transaction per row, so a bad row changes nothing
        and the others go in): matched by ``external_id``, else by e-mail address
        (contacts) or domain (companies), else created. A row that is a string is the
        parser's error for it. ``company_external_id`` and a deal's ``contact_emails`` name
        records by the host CRM's id and by address."""
        setter: dict[str, Callable[[Session, Any, dict[str, Any]], Any]] = {
            "contact": self._set_contact,
            "company": self._set_company,
            "deal": self._set_deal,
        }
        if kind not in setter:
            raise ConfigError(f"cannot import {kind} records")
        report = ImportReport()
        for number, raw in enumerate(rows, start=1):
            if isinstance(raw, str):
                report.errors.append(RowError(number, raw))
                continue
            try:
                with self._tx() as s:
                    fields = self._resolve(s, dict(raw))
                    row = self._match(s, kind, fields)
                    if kind == "contact":
                        self._set_contact(s, row, fields, origin="import")
                    else:
                        setter[kind](s, row, fields)
                if row is None:
                    report.created += 1
                else:
                    report.updated += 1
            except ConfigError as exc:
                report.errors.append(RowError(number, str(exc)))
        return report

    def _resolve(self, s: Session, fields: dict[str, Any]) -> dict[str, Any]:
        if "company_external_id" in fields:
            ext = _external(fields.pop("company_external_id"))
            company = s.scalar(select(CompanyRow.id).where(CompanyRow.external_id == ext))
            if company is None:
                raise ConfigError(f"no company with external_id {ext!r}")
            fields["company_id"] = company
        if "contact_emails" in fields:
            wanted = addresses(fields.pop("contact_emails"))
            found: dict[str, int] = {
                address: contact
                for address, contact in s.execute(
                    select(ContactEmailRow.address, ContactEmailRow.contact_id).where(
                        ContactEmailRow.address.in_(wanted)
                    )
                )
            }
            missing = [a for a in wanted if a not in found]
            if missing:
                raise ConfigError(f"no contact with the address {missing[0]}")
            fields["contact_ids"] = sorted(set(found.values()))
        return fields

    def _match(self, s: Session, kind: str, fields: dict[str, Any]) -> Any:
        model = _MODELS[kind]
        external_id = _external(fields.get("external_id"))
        if external_id is not None:
            row = s.scalars(select(model).where(model.external_id == external_id)).first()
            if row is not None:
                return row
        found: int | None = None
        if kind == "contact" and fields.get("emails"):
            found = self._contact_by_address(s, addresses(fields["emails"]))
        elif kind == "company" and fields.get("domains"):
            found = s.scalar(
                select(CompanyDomainRow.company_id)
                .where(CompanyDomainRow.domain.in_(domains(fields["domains"])))
                .limit(1)
            )
        return None if found is None else s.get(model, found)

    # -- related records (the web app's record pages) --------------------------------------

    def contacts_of_company(self, company_id: int, *, limit: int = 200) -> list[Contact]:
        """The company's contacts (by id, at most ``limit``); NotFound for no such company."""
        with self._tx() as s:
            self._row(s, "company", company_id)
            rows = s.scalars(
                select(ContactRow)
                .where(ContactRow.company_id == company_id)
                .order_by(ContactRow.id)
                .limit(limit)
            ).all()
            return self._contacts(s, rows)

    def deals_of_contact(
        self, contact_id: int, *, status: str | None = None, limit: int = 200
    ) -> list[Deal]:
        """The deals the contact is on (of ``status`` when given; by id, at most ``limit``)."""
        query = (
            select(DealRow)
            .join(DealContactRow, DealContactRow.deal_id == DealRow.id)
            .where(DealContactRow.contact_id == contact_id)
        )
        if status is not None:
            query = query.where(DealRow.status == status)
        with self._tx() as s:
            self._row(s, "contact", contact_id)
            return self._deals(s, s.scalars(query.order_by(DealRow.id).limit(limit)).all())

    def activities_of(self, kind: str, record_id: int, *, limit: int = 20) -> list[Activity]:
        """The activities (meetings, calls, tasks) a record takes part in, newest first (by
        ``at``, else when made), at most ``limit``: a contact's are those with one of its
        addresses among the participants; a deal's, those of its contacts; a company's,
        those of its contacts and of any address at one of its domains. NotFound for no
        such record."""
        if kind not in ("contact", "company", "deal"):
            raise ValueError(kind)
        p = ActivityParticipantRow
        with self._tx() as s:
            self._row(s, kind, record_id)
            emails = select(ContactEmailRow.address)
            if kind == "contact":
                emails = emails.where(ContactEmailRow.contact_id == record_id)
            elif kind == "deal":
                emails = emails.join(
                    DealContactRow, DealContactRow.contact_id == ContactEmailRow.contact_id
                ).where(DealContactRow.deal_id == record_id)
            else:
                emails = emails.join(ContactRow, ContactRow.id == ContactEmailRow.contact_id).where(
                    ContactRow.company_id == record_id
                )
            taking_part: ColumnElement[bool] = p.address.in_(emails)
            if kind == "company":
                domains = s.scalars(
                    select(CompanyDomainRow.domain)
                    .where(CompanyDomainRow.company_id == record_id)
                    .order_by(CompanyDomainRow.domain)
                    .limit(_MAX_RECORD_DOMAINS)
                ).all()
                at_domain = [p.address.like("%@" + _escape_like(d), escape="\\") for d in domains]
                taking_part = or_(taking_part, *at_domain)
            ids = select(p.activity_id).where(taking_part)
            rows = s.scalars(
                select(ActivityRow)
                .where(ActivityRow.id.in_(ids))
                .order_by(
                    func.coalesce(ActivityRow.at, ActivityRow.created_at).desc(),
                    ActivityRow.id.desc(),
                )
                .limit(limit)
            ).all()
            return self._activities(s, rows)

    def deals_of_thread(self, thread_id: int, *, limit: int = 200) -> list[Deal]:
        """The deals whose timeline holds a message of the thread (linked by hand or by the
        rules), by id, at most ``limit``."""
        in_thread = select(MessageRow.id).where(MessageRow.thread_id == thread_id)
        deal_ids = select(TimelineLinkRow.target_id).where(
            TimelineLinkRow.target_kind == "deal", TimelineLinkRow.message_id.in_(in_thread)
        )
        with self._tx() as s:
            rows = s.scalars(
                select(DealRow).where(DealRow.id.in_(deal_ids)).order_by(DealRow.id).limit(limit)
            ).all()
            return self._deals(s, rows)

    # -- manual thread <-> deal links ------------------------------------------------------

    def set_thread_deal(self, thread_id: int, deal_id: int, *, linked: bool) -> int:
        """Link (or unlink) every message of the thread to the deal by hand; the thread's
        later messages follow (the linker reads ``thread_deal_links``), and the automatic
        rules never undo it. Returns how many messages are on the deal's timeline from it."""
        with self._tx() as s:
            if s.get(ThreadRow, thread_id) is None:
                raise NotFound(f"no thread with id {thread_id}")
            self._row(s, "deal", deal_id)
            found = s.get(ThreadDealLinkRow, (thread_id, deal_id))
            if found is None:
                s.add(ThreadDealLinkRow(thread_id=thread_id, deal_id=deal_id, linked=linked))
            else:
                found.linked = linked
            messages = select(MessageRow.id).where(MessageRow.thread_id == thread_id)
            in_thread = TimelineLinkRow.message_id.in_(messages)
            target = (TimelineLinkRow.target_kind == "deal", TimelineLinkRow.target_id == deal_id)
            if not linked:
                s.execute(delete(TimelineLinkRow).where(in_thread, *target))
                return 0
            s.execute(update(TimelineLinkRow).where(in_thread, *target).values(source="manual"))
            have = select(TimelineLinkRow.message_id).where(*target)
            rows = s.execute(
                select(MessageRow.id, MessageRow.sort_at).where(
                    MessageRow.thread_id == thread_id, MessageRow.id.not_in(have)
                )
            ).all()
            now = utcnow()
            if rows:
                s.execute(
                    insert(TimelineLinkRow),
                    [
                        {
                            "message_id": mid,
                            "target_kind": "deal",
                            "target_id": deal_id,
                            "source": "manual",
                            "sort_at": at,
                            "created_at": now,
                        }
                        for mid, at in rows
                    ],
                )
            return int(
                s.scalar(
                    select(func.count()).select_from(TimelineLinkRow).where(in_thread, *target)
                )
                or 0
            )

    # -- timelines -------------------------------------------------------------------------

    @staticmethod
    def _drop_links(s: Session, kind: str, target_id: int) -> None:
        s.execute(
            delete(TimelineLinkRow).where(
                TimelineLinkRow.target_kind == kind, TimelineLinkRow.target_id == target_id
            )
        )

    def timeline(
        self,
        kind: str,
        target_id: int,
        viewer: Viewer,
        *,
        limit: int = 50,
        before: str | None = None,
    ) -> MessagePage:
        """The messages on a record's timeline that ``viewer`` may see, newest first (by the
        message's list time, ties by id), a page at a time: one range scan of
        ``ix_timeline_links_target`` from the cursor."""
        if kind not in TARGET_KINDS:
            raise ConfigError(f"no timeline for {kind!r}")
        if not 1 <= limit <= MAX_PAGE:
            raise ConfigError(f"limit must be between 1 and {MAX_PAGE}")
        position = decode_cursor(before) if before is not None else None
        link = TimelineLinkRow
        query = (
            select(*_LIST_COLUMNS)
            .select_from(link)
            .join(MessageRow, MessageRow.id == link.message_id)
            .where(
                link.target_kind == kind,
                link.target_id == target_id,
                shown(MessageRow.state),
                visible_message_filter(viewer, MessageRow.account_id),
            )
        )
        if position is not None:
            query = query.where(
                tuple_(link.sort_at, link.message_id)
                < tuple_(literal(position[0], UtcDateTime()), literal(position[1], BigInteger()))
            )
        query = query.order_by(link.sort_at.desc(), link.message_id.desc()).limit(limit + 1)
        with self._tx() as s:
            self._row(s, kind, target_id)
            rows = s.execute(query, viewer_params(viewer)).all()
        items = _list_items(rows[:limit])
        cursor = encode_cursor(items[-1].sort_at, items[-1].id) if len(rows) > limit else None
        return MessagePage(items=items, next_cursor=cursor)
