"""CRM and search at the scale of issue 8: timelines, searches and re-linking on PostgreSQL.

    .venv/bin/python bench/crm_bench.py \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/crm_bench --reuse

A fresh database (created when missing) is filled once with ``--count`` messages (1,000,000),
``--contacts`` contacts (100,000: ``c<n>@co<n % companies>.example``, each the sender of
count / contacts messages), ``--companies`` companies (10,000, one domain each) and
``--deals`` deals (10,000; four in five open, two contacts each), plus three addresses on
many messages (in Cc): ``heavy@bigcorp.example`` (a contact, on 1 in 20 messages: its
timeline is the long one), ``relink1k@newco.example`` (1,000 messages) and
``relink100k@newco.example`` (1 in 10 messages), neither a contact at first. The fill is
bulk (COPY and ``INSERT ... SELECT``: the participant index and the links are written by
SQL, then the linker's watermark is set past them); the search index goes through the real
indexer. ``--reuse`` keeps it for the next run.

Then, printed as JSON lines (``--out FILE`` appends them), each with the load average:

- ``timeline``: p50/p99 of a contact timeline's first page (50) through ``CrmStore.timeline``
  (the service behind ``GET /contacts/{id}/timeline``), as an admin and as the member who
  owns the account, for random contacts (~10 messages) and for the heavy one;
- ``search``: p50/p99 of the kinds of query of ``search_bench.py`` (rare word, common word,
  ``from:``, prefix, ``has:attachment``, ...) through ``SearchService.search``;
- ``inbox``: the inbox's first page for each viewer, as ``GET /inbox`` reads it;
- ``relink``: a contact is created with ``relink1k@newco.example`` (1,000 past messages),
  then ``relink100k@newco.example`` (100,000) is added to it, each through ``CrmStore`` (as
  the API does) with the background linker (``sync.linker.Linker``, its own thread and
  loop) woken as the API wakes it: the time from the record change's commit until the
  contact's timeline holds every one of those messages. The contact is deleted afterwards
  (and the linker left idle), so the next ``--reuse`` run measures the same thing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from sqlalchemy import create_engine, func, insert, select, text
from sqlalchemy.engine import make_url

from correspond.auth import AuthService
from correspond.errors import NotFound
from correspond.search import SearchService, viewer_of
from correspond.settings import Settings
from correspond.store import open_store
from correspond.store.crm import CrmStore
from correspond.store.crm_tables import (
    CompanyDomainRow,
    CompanyRow,
    ContactEmailRow,
    ContactRow,
    DealContactRow,
    DealRow,
)
from correspond.store.inbox import InboxFilters, InboxQueries
from correspond.store.message_tables import MessageRow
from correspond.store.repository import Store
from correspond.store.visibility import Viewer
from correspond.sync.linker import Linker
from correspond.testing.synthetic import fill_messages, make_account_with_folders

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_bench import _cases  # a sibling script: the same kinds of query

ACCOUNT = "crm-bench"
NEWEST = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
HEAVY = "heavy@bigcorp.example"
RELINK_1K = "relink1k@newco.example"
RELINK_100K = "relink100k@newco.example"


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(p99 * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _emit(record: dict[str, Any], out: str | None) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if out:
        with open(out, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


# --- the fill -----------------------------------------------------------------------------------


def _people(contacts: int, companies: int) -> Callable[[int], tuple[str, list[str]]]:
    def people(k: int) -> tuple[str, list[str]]:
        n = (k * 7919) % contacts  # 7919 is prime: every contact sends count / contacts
        cc = []
        if k % 20 == 2:
            cc.append(HEAVY)
        if k % 10 == 1:
            cc.append(RELINK_100K)
        if k % 1000 == 7:
            cc.append(RELINK_1K)
        return f"c{n}@co{n % companies}.example", cc

    return people


def _create_database(url: str) -> None:
    parsed = make_url(url)
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if not conn.scalar(
            text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": parsed.database}
        ):
            conn.execute(text(f'CREATE DATABASE "{parsed.database}"'))
    admin.dispose()


def _fill(
    store: Store, settings: Settings, args: argparse.Namespace, record: dict[str, Any]
) -> None:
    engine = store.engine
    t0 = time.perf_counter()
    account_id, folders = make_account_with_folders(engine, ACCOUNT)
    fill_messages(
        engine,
        account_id,
        folders,
        args.count,
        newest=NEWEST,
        chunk=10_000,
        people=_people(args.contacts, args.companies),
    )
    record["fill_messages_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    with engine.begin() as conn:
        now = datetime.now(UTC)
        conn.execute(
            insert(CompanyRow),
            [
                {"id": i + 1, "name": f"Company {i}", "created_at": now, "updated_at": now}
                for i in range(args.companies)
            ],
        )
        conn.execute(
            insert(CompanyDomainRow),
            [{"company_id": i + 1, "domain": f"co{i}.example"} for i in range(args.companies)],
        )
        conn.execute(
            insert(ContactRow),
            [
                {
                    "id": n + 1,
                    "name": f"Contact {n}",
                    "company_id": n % args.companies + 1,
                    "created_at": now,
                    "updated_at": now,
                }
                for n in range(args.contacts)
            ]
            + [
                {
                    "id": args.contacts + 1,
                    "name": "Heavy",
                    "company_id": None,
                    "created_at": now,
                    "updated_at": now,
                }
            ],
        )
        conn.execute(
            insert(ContactEmailRow),
            [
                {"contact_id": n + 1, "address": f"c{n}@co{n % args.companies}.example"}
                for n in range(args.contacts)
            ]
            + [{"contact_id": args.contacts + 1, "address": HEAVY}],
        )
        conn.execute(
            insert(DealRow),
            [
                {
                    "id": i + 1,
                    "name": f"Deal {i}",
                    "status": "open" if i % 5 else "won",
                    "company_id": i % args.companies + 1,
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(args.deals)
            ],
        )
        conn.execute(
            insert(DealContactRow),
            [
                {"deal_id": i + 1, "contact_id": (i + off) % args.contacts + 1}
                for i in range(args.deals)
                for off in (0, args.contacts // 2)
            ],
        )
        for table in ("companies", "contacts", "deals"):
            conn.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT max(id) FROM {table}))"
                )
            )
        # The participant index and the links as the linker would write them (every fill
        # address is external, none blocked; no activities, no manual links).
        conn.execute(
            text(
                """
                INSERT INTO message_participants (message_id, address, role, domain)
                SELECT id, lower(from_email), 'from', split_part(lower(from_email), '@', 2)
                  FROM messages WHERE from_email IS NOT NULL
                UNION ALL
                SELECT m.id, lower(e->>'email'), r.role, split_part(lower(e->>'email'), '@', 2)
                  FROM messages m
                  CROSS JOIN LATERAL (VALUES ('to', m.to_addrs::json), ('cc', m.cc_addrs::json))
                       AS r(role, addrs)
                  CROSS JOIN LATERAL json_array_elements(r.addrs) AS e
                """
            )
        )
        conn.execute(
            text(
                """
                INSERT INTO timeline_links
                       (message_id, target_kind, target_id, source, sort_at, created_at)
                SELECT w.message_id, w.kind, w.target, 'auto', m.sort_at, now()
                  FROM (
                    SELECT p.message_id, 'contact' AS kind, ce.contact_id AS target
                      FROM message_participants p JOIN contact_emails ce USING (address)
                    UNION
                    SELECT p.message_id, 'company', c.company_id
                      FROM message_participants p JOIN contact_emails ce USING (address)
                      JOIN contacts c ON c.id = ce.contact_id WHERE c.company_id IS NOT NULL
                    UNION
                    SELECT p.message_id, 'company', cd.company_id
                      FROM message_participants p JOIN company_domains cd USING (domain)
                    UNION
                    SELECT p.message_id, 'deal', d.id
                      FROM message_participants p JOIN contact_emails ce USING (address)
                      JOIN deal_contacts dc ON dc.contact_id = ce.contact_id
                      JOIN deals d ON d.id = dc.deal_id AND d.status = 'open'
                  ) AS w
                  JOIN messages m ON m.id = w.message_id
                """
            )
        )
        newest = conn.scalar(select(func.max(MessageRow.id)))
        conn.execute(text("DELETE FROM crm_linker_state"))
        conn.execute(
            text("INSERT INTO crm_linker_state (id, indexed_through) VALUES (1, :n)"),
            {"n": newest},
        )
        conn.execute(text("DELETE FROM crm_relink_queue"))
    record["fill_crm_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    record["indexed"] = SearchService(engine, settings).index.index_all()
    record["fill_search_index_s"] = round(time.perf_counter() - t0, 1)


def _analyze(store: Store) -> None:
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))


def _member(store: Store, settings: Settings) -> tuple[Viewer, Viewer]:
    """An admin, and a member who owns the bench account (made once)."""
    auth = AuthService(store, settings)
    try:
        admin = auth.users.get_user("bench-admin@example.test")
    except NotFound:
        admin, _ = auth.create_user("bench-admin@example.test", None, admin=True)
    try:
        user = auth.users.get_user("bench-member@example.test")
    except NotFound:
        user, _ = auth.create_user("bench-member@example.test", None)
    auth.users.set_account_owner(ACCOUNT, user.id)
    return viewer_of(admin), viewer_of(user)


# --- the measurements ---------------------------------------------------------------------------


def _timelines(
    crm: CrmStore, viewers: dict[str, Viewer], args: argparse.Namespace
) -> dict[str, Any]:
    rng = random.Random(5)
    out: dict[str, Any] = {}
    heavy = args.contacts + 1
    for who, viewer in viewers.items():
        for name, pick in (
            ("random contact", lambda: rng.randrange(1, args.contacts + 1)),
            ("heavy contact (1 in 20 messages)", lambda: heavy),
        ):
            crm.timeline("contact", pick(), viewer, limit=50)  # warm
            samples, sizes = [], []
            for _ in range(args.repeat):
                cid = pick()
                t0 = time.perf_counter()
                page = crm.timeline("contact", cid, viewer, limit=50)
                samples.append(time.perf_counter() - t0)
                sizes.append(len(page.items))
            out[f"{who}: {name}"] = {**_ms(samples), "median_items": statistics.median(sizes)}
    return out


def _searches(
    store: Store, settings: Settings, viewers: dict[str, Viewer], args: argparse.Namespace
) -> dict[str, Any]:
    service = SearchService(store.engine, settings)
    if args.walk_threshold is not None:
        # 0: never read the matches first (the plan before it existed), for comparisons.
        service.queries.walk_threshold = args.walk_threshold
    rng = random.Random(11)
    with store.engine.connect() as conn:
        top = int(conn.scalar(select(func.max(MessageRow.id))) or 0)
        senders = [
            str(v)
            for v in conn.scalars(
                select(MessageRow.from_email)
                .where(MessageRow.id.in_([rng.randrange(1, top + 1) for _ in range(300)]))
                .limit(200)
            )
        ]
    cases = _cases(rng, senders, args.count)
    out: dict[str, Any] = {}
    for who, viewer in viewers.items():
        for name, make in cases.items():
            service.search(make(), viewer)  # warm
            samples, hits = [], []
            for _ in range(args.repeat):
                q = make()
                t0 = time.perf_counter()
                page = service.search(q, viewer, limit=50)
                samples.append(time.perf_counter() - t0)
                hits.append(len(page.items))
            out[f"{who}: {name}"] = {**_ms(samples), "median_hits": statistics.median(hits)}
    return out


def _inbox_first_page(store: Store, viewers: dict[str, Viewer], args: argparse.Namespace) -> Any:
    """The inbox's first page of the bench account (what ``GET /inbox?account=`` reads) for
    each viewer: ``args.repeat`` reads of the scope and the first 50 threads, timed together
    as the route runs them. The admin does not own the account: it reads it by name."""
    queries = InboxQueries(store.engine)
    out: dict[str, Any] = {}
    for who, viewer in viewers.items():
        queries.page(queries.scope(viewer, account=ACCOUNT), InboxFilters(), limit=50)  # warm
        samples, sizes = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            scope = queries.scope(viewer, account=ACCOUNT)
            page = queries.page(scope, InboxFilters(), limit=50)
            samples.append(time.perf_counter() - t0)
            sizes.append(len(page.threads))
        out[f"{who}: first page"] = {**_ms(samples), "median_threads": statistics.median(sizes)}
    return out


class _BackgroundLinker:
    """``sync.linker.Linker`` on its own thread and event loop, as in ``serve``."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.linker = Linker(store, settings)
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            await self.linker.run(self._stop)

        asyncio.run(run())

    def wake(self) -> None:
        self.linker.wake()

    def close(self) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=60)


def _linked(store: Store, contact_id: int) -> int:
    with store.engine.connect() as conn:
        return int(
            conn.scalar(
                text(
                    "SELECT count(*) FROM timeline_links "
                    "WHERE target_kind = 'contact' AND target_id = :c"
                ),
                {"c": contact_id},
            )
            or 0
        )


def _wait_linked(store: Store, contact_id: int, want: int, limit_s: float) -> float | None:
    start = time.perf_counter()
    while (waited := time.perf_counter() - start) < limit_s:
        if _linked(store, contact_id) >= want:
            return time.perf_counter() - start
        # Counting 100,000 links takes tens of ms on two cores: polling that every 5 ms
        # would slow the very linker being timed. Fine-grained for the first second only.
        time.sleep(0.005 if waited < 1.0 else 0.1)
    return None


def _relinks(
    store: Store, settings: Settings, crm: CrmStore, admin: Viewer, args: argparse.Namespace
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with store.engine.connect() as conn:
        counts = {
            a: int(
                conn.scalar(
                    text("SELECT count(*) FROM message_participants WHERE address = :a"),
                    {"a": a},
                )
                or 0
            )
            for a in (RELINK_1K, RELINK_100K)
        }
    background = _BackgroundLinker(store, settings)
    try:
        t0 = time.perf_counter()
        contact = crm.create_contact(name="New customer", emails=[RELINK_1K])
        background.wake()
        took = _wait_linked(store, contact.id, counts[RELINK_1K], args.relink_limit)
        out["relink_1k"] = {
            "messages": counts[RELINK_1K],
            "seconds": None if took is None else round(took, 3),
            "with_record_change_s": round(time.perf_counter() - t0, 3),
            "first_page_items": len(crm.timeline("contact", contact.id, admin, limit=50).items),
            "load": _load(),
        }
        want = counts[RELINK_1K] + counts[RELINK_100K]
        crm.update_contact(contact.id, emails=[RELINK_1K, RELINK_100K])
        background.wake()
        took = _wait_linked(store, contact.id, want, args.relink_limit)
        out["relink_100k"] = {
            "messages": counts[RELINK_100K],
            "seconds": None if took is None else round(took, 3),
            "load": _load(),
        }
        crm.delete_contact(contact.id)
        background.wake()
        t0 = time.perf_counter()
        while background.linker.links.pending() and time.perf_counter() - t0 < args.relink_limit:
            time.sleep(0.05)
        out["cleanup_s"] = round(time.perf_counter() - t0, 2)
    finally:
        background.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--database-url", required=True, help="PostgreSQL URL (created if missing)")
    ap.add_argument("--count", type=int, default=1_000_000, help="messages")
    ap.add_argument("--contacts", type=int, default=100_000)
    ap.add_argument("--companies", type=int, default=10_000)
    ap.add_argument("--deals", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=200, help="timed reads per kind")
    ap.add_argument("--reuse", action="store_true", help="keep a filled database (else: refuse)")
    ap.add_argument("--relink-limit", type=float, default=300.0, help="seconds to wait")
    ap.add_argument(
        "--walk-threshold",
        type=int,
        help="search: SearchQueries.walk_threshold (0: no match-first plan, as before)",
    )
    ap.add_argument("--skip", default="", help="comma-separated: timeline,inbox,search,relink")
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/correspond-crm-bench"))
    ap.add_argument("--out", help="append the JSON lines to this file")
    args = ap.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    _create_database(args.database_url)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    key_file = args.data_dir / "bench.key"
    if not key_file.exists():
        key_file.write_text(Fernet.generate_key().decode("ascii"))
    settings = Settings(
        data_dir=args.data_dir,
        secret_key=key_file.read_text().strip(),
        database_url=args.database_url,
        search_index_batch=2000,
    )
    store = open_store(settings)
    if store.dialect != "postgresql":
        raise SystemExit("this benchmark is for PostgreSQL")
    base: dict[str, Any] = {"bench": "crm", "count": args.count, "contacts": args.contacts}
    try:
        try:
            store.get_account(ACCOUNT)
            if not args.reuse:
                raise SystemExit("the database is filled already: --reuse, or a fresh one")
        except NotFound:
            fill: dict[str, Any] = {**base, "step": "fill", "load_before": _load()}
            _fill(store, settings, args, fill)
            fill["load_after"] = _load()
            _emit(fill, args.out)
        _analyze(store)
        admin, member = _member(store, settings)
        viewers = {"admin": admin, "member": member}
        crm = CrmStore(store.engine)
        if "timeline" not in skip:
            load = _load()
            figures = _timelines(crm, viewers, args)
            _emit({**base, "step": "timeline", "load": [load, _load()], **figures}, args.out)
        if "inbox" not in skip:
            load = _load()
            figures = _inbox_first_page(store, viewers, args)
            _emit({**base, "step": "inbox", "load": [load, _load()], "inbox": figures}, args.out)
        if "search" not in skip:
            load = _load()
            figures = _searches(store, settings, viewers, args)
            _emit({**base, "step": "search", "load": [load, _load()], **figures}, args.out)
        if "relink" not in skip:
            figures = _relinks(store, settings, crm, admin, args)
            _emit({**base, "step": "relink", **figures}, args.out)
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
