"""Inbox view latency at scale: fill a store with N synthetic messages, then time the first
page of the personal inbox (and its filters, a deep page and a contact's threads).

    .venv/bin/python bench/inbox_bench.py --count 100000                      # SQLite, temp dir
    .venv/bin/python bench/inbox_bench.py --count 1000000 \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/a_fresh_db

The fill is ``correspond.testing.synthetic`` (5 messages a thread, 80% in INBOX, 2/3 read,
1/7 starred, 1/10 with an attachment), owned by one member; one contact is linked to every
100th message (``timeline_links`` written directly, as the linker would). Pages are timed
through ``InboxQueries`` (the store, what ``GET /inbox`` runs) and through the HTTP app in
process (FastAPI TestClient, signed in with an API token): wall p50/p99/max per call. See
bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from cryptography.fernet import Fernet
from sqlalchemy import Table, func, literal, select, text
from sqlalchemy.orm import Session

from correspond.errors import NotFound
from correspond.settings import Settings
from correspond.store import open_store
from correspond.store.crm_tables import ContactRow, TimelineLinkRow
from correspond.store.inbox import InboxFilters, InboxQueries
from correspond.store.message_tables import MessageRow
from correspond.store.notify_tables import FanoutStateRow, NotificationRow
from correspond.testing.synthetic import (
    fill_messages,
    make_account_with_folders,
    skip_background_indexing,
)

ACCOUNT = "inbox-bench"
OWNER = "inbox-bench@example.test"


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(p99 * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def _time(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    """Wall p50/p99/max, and this thread's CPU per call (median): on a loaded machine the
    wall time is mostly waiting for a core, the CPU time is the client's own cost."""
    fn()  # warm: the statement cache and the pages the first call reads
    samples, cpu = [], []
    for _ in range(repeat):
        c0, t0 = time.thread_time(), time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    return {**_ms(samples), "cpu_p50_ms": round(statistics.median(cpu) * 1000, 2)}


def _fill(store: Any, count: int, record: dict[str, Any]) -> None:
    account_id, folders = make_account_with_folders(store.engine, ACCOUNT)
    t0 = time.perf_counter()
    fill = fill_messages(store.engine, account_id, folders, count, chunk=10_000)
    record["fill_s"] = round(time.perf_counter() - t0, 1)
    print(f"filled {fill.messages} messages in {record['fill_s']} s", flush=True)
    _link_contact(store.engine, account_id)
    t0 = time.perf_counter()
    if store.engine.dialect.name == "postgresql":  # after the links: they are planned too
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    else:
        with store.engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    record["analyze_s"] = round(time.perf_counter() - t0, 1)


def _link_contact(engine: Any, account_id: int) -> int:
    """The bench contact (made when missing), linked to every 100th message (all in INBOX:
    the fill's message k is in Sent when k % 5 == 4), as the linker would."""
    links = cast(Table, TimelineLinkRow.__table__)
    with Session(engine) as s, s.begin():
        contact_id = s.scalar(select(ContactRow.id).where(ContactRow.name == "Bench Contact"))
        if contact_id is None:
            contact = ContactRow(name="Bench Contact")
            s.add(contact)
            s.flush()
            contact_id = contact.id
        s.execute(
            links.delete().where(links.c.target_kind == "contact", links.c.target_id == contact_id)
        )
        first = s.scalar(select(func.min(MessageRow.id)).where(MessageRow.account_id == account_id))
        picked = select(
            MessageRow.id,
            literal("contact"),
            literal(contact_id),
            literal("auto"),
            MessageRow.sort_at,
        ).where(MessageRow.account_id == account_id, (MessageRow.id - first) % 100 == 0)
        s.execute(
            links.insert().from_select(
                ["message_id", "target_kind", "target_id", "source", "sort_at"], picked
            )
        )
        return int(contact_id)


def _skip_fanout(engine: Any) -> None:
    """Mark every filled message as looked at by the notification fan-out: otherwise the
    app would spend the HTTP run announcing the whole fill (it is old mail, not new)."""
    with engine.begin() as conn:
        newest = conn.scalar(select(func.max(MessageRow.id))) or 0
        state = cast(Table, FanoutStateRow.__table__)
        if conn.execute(state.update().values(watermark=newest)).rowcount == 0:
            conn.execute(state.insert().values(id=1, watermark=newest))
        conn.execute(cast(Table, NotificationRow.__table__).delete())


def _owner(settings: Settings, store: Any) -> tuple[Any, str]:
    """The account's owner (a member) and an API token of theirs."""
    from correspond.auth import AuthService

    auth = AuthService(store, settings)
    try:
        user = auth.users.get_user(OWNER)
    except NotFound:
        user, _ = auth.create_user(OWNER, None, admin=False)
    auth.users.set_account_owner(ACCOUNT, user.id)
    return auth.users.get_user(OWNER), auth.create_token(user, "inbox-bench").token


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=1_000_000, help="messages to fill")
    ap.add_argument("--database-url", help="PostgreSQL URL (a fresh database); default SQLite")
    ap.add_argument("--data-dir", type=Path, help="keep the store here (default: a temp dir)")
    ap.add_argument("--repeat", type=int, default=300, help="timed calls per case")
    ap.add_argument("--limit", type=int, default=50, help="page size")
    ap.add_argument("--reuse", action="store_true", help="skip the fill if the account exists")
    ap.add_argument("--out", help="append the JSON line to this file")
    args = ap.parse_args(argv)

    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="correspond-inbox-bench-"))
    settings = Settings(
        data_dir=data_dir,
        database_url=args.database_url,
        secret_key=Fernet.generate_key().decode("ascii"),
    )
    store = open_store(settings)
    record: dict[str, Any] = {"bench": "correspond-inbox", "backend": store.engine.dialect.name}
    record["load_before"] = [round(x, 2) for x in os.getloadavg()]
    try:
        try:
            store.get_account(ACCOUNT)
            exists = True
        except NotFound:
            exists = False
        if not (args.reuse and exists):
            _fill(store, args.count, record)
        skip_background_indexing(store.engine)
        _skip_fanout(store.engine)
        with store.engine.connect() as conn:
            record["messages"] = int(conn.scalar(select(func.count()).select_from(MessageRow)) or 0)
        contact_id = _link_contact(store.engine, store.get_account(ACCOUNT).id)
        user, token = _owner(settings, store)
        queries = InboxQueries(store.engine, scan_rows=settings.message_search_scan_rows)
        scope = queries.scope(user)
        lim = args.limit
        deep = queries.page(scope, InboxFilters(), limit=lim)
        for _ in range(200):  # 200 pages on: 10,000 threads down
            if deep.next_cursor is None:
                break
            deep = queries.page(scope, InboxFilters(), limit=lim, cursor=deep.next_cursor)
        deep_cursor = deep.next_cursor
        cases: dict[str, Callable[[], Any]] = {
            "first_page": lambda: queries.page(queries.scope(user), InboxFilters(), limit=lim),
            "deep_page": lambda: queries.page(scope, InboxFilters(), limit=lim, cursor=deep_cursor),
            "unread": lambda: queries.page(scope, InboxFilters(unread=True), limit=lim),
            "starred": lambda: queries.page(scope, InboxFilters(starred=True), limit=lim),
            "has_attachment": lambda: queries.page(
                scope, InboxFilters(has_attachment=True), limit=lim
            ),
            "sent": lambda: queries.page(scope, InboxFilters(folder="sent"), limit=lim),
            "contact": lambda: queries.page(scope, InboxFilters(contact_id=contact_id), limit=lim),
        }
        for name, fn in cases.items():
            page = fn()
            record[name] = {**_time(fn, args.repeat), "threads": len(page.threads)}
            print(f"{name:16} {record[name]}", flush=True)
        record["http_first_page"] = _http(settings, store, token, lim, args.repeat)
        print(f"{'http_first_page':16} {record['http_first_page']}", flush=True)
    finally:
        store.close()
        record["load_after"] = [round(x, 2) for x in os.getloadavg()]
        if args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)
    line = json.dumps(record)
    print(line)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(line + "\n")
    return 0


def _http(settings: Settings, store: Any, token: str, limit: int, repeat: int) -> dict[str, Any]:
    """``GET /inbox`` through the app in this process, as the owner."""
    from fastapi.testclient import TestClient

    from correspond.api import create_app

    app = create_app(settings, store=store)
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(app, base_url="http://localhost", headers=headers) as client:
        first = client.get("/inbox", params={"limit": limit})
        first.raise_for_status()
        timed = _time(
            lambda: client.get("/inbox", params={"limit": limit}).raise_for_status(), repeat
        )
        return {**timed, "threads": len(first.json()["threads"])}


if __name__ == "__main__":
    raise SystemExit(main())
