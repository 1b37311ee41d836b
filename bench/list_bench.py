"""Message list latency at scale: fill a store with N synthetic messages, then time pages.

    .venv/bin/python bench/list_bench.py --count 1000000                      # SQLite, temp dir
    .venv/bin/python bench/list_bench.py --count 1000000 \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/a_fresh_db

The fill writes rows straight into the store's tables (``correspond.testing.synthetic``: no
IMAP, no parsing), then ANALYZE. Pages are timed through ``MailboxReader.list_messages``, the
service behind ``GET /accounts/{name}/messages`` and ``correspond messages list``, and once
through the HTTP app (FastAPI TestClient, signed in as an admin with an API token). See
bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from sqlalchemy import func, select, text

from correspond.errors import NotFound
from correspond.mailbox import MailboxReader
from correspond.settings import Settings
from correspond.store import open_store
from correspond.store.message_queries import encode_cursor
from correspond.store.message_tables import MessageRow
from correspond.testing.synthetic import fill_messages, make_account_with_folders

ACCOUNT = "list-bench"


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(p99 * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def _time(
    fn: Callable[[], Any], repeat: int, clock: Callable[[], float] = time.thread_time
) -> dict[str, float]:
    """Wall p50/p99/max, and CPU per call (median) by ``clock``: this thread's by default (on a
    loaded machine the wall time is mostly waiting for a core; on SQLite the CPU time is the
    query's own cost), the whole process's for the HTTP case (the app runs in other threads)."""
    fn()  # warm: the statement cache and the pages the first call reads
    samples, cpu = [], []
    for _ in range(repeat):
        c0, t0 = clock(), time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        cpu.append(clock() - c0)
    return {**_ms(samples), "cpu_p50_ms": round(statistics.median(cpu) * 1000, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=1_000_000, help="messages to fill")
    ap.add_argument("--database-url", help="PostgreSQL URL (a fresh database); default SQLite")
    ap.add_argument("--data-dir", type=Path, help="keep the store here (default: a temp dir)")
    ap.add_argument("--repeat", type=int, default=200, help="timed calls per case")
    ap.add_argument("--limit", type=int, default=50, help="page size")
    ap.add_argument("--reuse", action="store_true", help="skip the fill if the account exists")
    ap.add_argument("--keep", action="store_true", help="keep the temp data dir")
    ap.add_argument("--out", help="append the JSON line to this file")
    args = ap.parse_args(argv)

    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="correspond-list-bench-"))
    settings = Settings(
        data_dir=data_dir,
        database_url=args.database_url,
        secret_key=Fernet.generate_key().decode("ascii"),
    )
    store = open_store(settings)
    backend = store.engine.dialect.name
    record: dict[str, Any] = {"bench": "correspond-list", "backend": backend}
    record["load_before"] = [round(x, 2) for x in os.getloadavg()]
    try:
        if args.reuse and _exists(store):
            account = store.get_account(ACCOUNT)
            folders = {f.role: f.id for f in store.list_folders(ACCOUNT) if f.role}
        else:
            account_id, folders = make_account_with_folders(store.engine, ACCOUNT)
            t0 = time.perf_counter()
            fill = fill_messages(store.engine, account_id, folders, args.count, chunk=10_000)
            record["fill_s"] = round(time.perf_counter() - t0, 1)
            record["fill_rows_per_s"] = round((fill.messages + fill.locations) / record["fill_s"])
            print(
                f"filled {fill.messages} messages, {fill.locations} locations in "
                f"{record['fill_s']} s",
                flush=True,
            )
            t0 = time.perf_counter()
            if backend == "postgresql":
                with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    conn.execute(text("VACUUM ANALYZE"))
            else:
                with store.engine.begin() as conn:
                    conn.execute(text("ANALYZE"))
            record["analyze_s"] = round(time.perf_counter() - t0, 1)
            account = store.get_account(ACCOUNT)
        with store.engine.connect() as conn:
            total = int(
                conn.scalar(
                    select(func.count())
                    .select_from(MessageRow)
                    .where(MessageRow.account_id == account.id)
                )
                or 0
            )
            # A cursor 90% of the way down the list: the deep page.
            deep = conn.execute(
                select(MessageRow.sort_at, MessageRow.id)
                .where(MessageRow.account_id == account.id)
                .order_by(MessageRow.sort_at.desc(), MessageRow.id.desc())
                .offset(int(total * 0.9))
                .limit(1)
            ).one()
            thread_id = conn.scalar(
                select(MessageRow.thread_id)
                .where(MessageRow.account_id == account.id)
                .order_by(MessageRow.sort_at.desc())
                .limit(1)
            )
        record["messages"] = total
        deep_cursor = encode_cursor(deep[0], int(deep[1]))
        reader = MailboxReader(store, settings)
        lim = args.limit
        inbox = "INBOX"
        cases: dict[str, Callable[[], Any]] = {
            "first_page": lambda: reader.list_messages(ACCOUNT, limit=lim),
            "deep_page": lambda: reader.list_messages(ACCOUNT, limit=lim, before=deep_cursor),
            "folder_first_page": lambda: reader.list_messages(ACCOUNT, folder=inbox, limit=lim),
            "folder_deep_page": lambda: reader.list_messages(
                ACCOUNT, folder=inbox, limit=lim, before=deep_cursor
            ),
            "thread": lambda: reader.list_messages(ACCOUNT, thread_id=thread_id, limit=lim),
            "first_page_limit_1": lambda: reader.list_messages(ACCOUNT, limit=1),
            "search_dense": lambda: reader.list_messages(ACCOUNT, q="invoice", limit=lim),
            "search_none": lambda: reader.list_messages(ACCOUNT, q="zz-no-such-text", limit=lim),
        }
        for name, fn in cases.items():
            page = fn()
            record[name] = {**_time(fn, args.repeat), "items": len(page.items)}
            print(f"{name:20} {record[name]}", flush=True)
        record["http_first_page"] = _http(settings, store, lim, args.repeat)
        print(f"{'http_first_page':20} {record['http_first_page']}", flush=True)
    finally:
        store.close()
        record["load_after"] = [round(x, 2) for x in os.getloadavg()]
        if not args.keep and args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)
    line = json.dumps(record)
    print(line)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(line + "\n")
    return 0


def _exists(store: Any) -> bool:
    try:
        store.get_account(ACCOUNT)
    except NotFound:
        return False
    return True


def _http(settings: Settings, store: Any, limit: int, repeat: int) -> dict[str, Any]:
    """The first page through the app, as an admin (``bench-admin@example.test``, made when
    missing) with an API token, on a host name the app answers to."""
    from fastapi.testclient import TestClient

    from correspond.api import create_app

    app = create_app(settings, store=store)
    auth = app.state.auth
    try:
        user = auth.users.get_user("bench-admin@example.test")
    except NotFound:
        user, _ = auth.create_user("bench-admin@example.test", None, admin=True)
    token = auth.create_token(user, "list-bench").token
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(app, base_url="http://localhost", headers=headers) as client:
        url = f"/accounts/{ACCOUNT}/messages"
        first = client.get(url, params={"limit": limit})
        first.raise_for_status()
        return {
            **_time(
                lambda: client.get(url, params={"limit": limit}).raise_for_status(),
                repeat,
                clock=time.process_time,
            ),
            "items": len(first.json()["messages"]),
        }


if __name__ == "__main__":
    sys.exit(main())
