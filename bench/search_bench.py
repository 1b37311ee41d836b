"""Full-text search at scale: fill N synthetic messages, index them, time searches.

    .venv/bin/python bench/search_bench.py --count 1000000 --data-dir /tmp/sb-sqlite --reuse
    .venv/bin/python bench/search_bench.py --count 1000000 \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/search_bench --reuse

The fill is ``correspond.testing.synthetic`` (bodies of ~60 words from a 21-word vocabulary,
plus a customer name found in 1 of 10,000 messages and an order reference in 1 of 50,000).
Indexing is timed through ``SearchIndex.index_all`` (the background indexer's rounds), then
ANALYZE. Searches go through ``SearchService.search`` (the service behind ``GET /search``),
as an admin (every account) and as the member who owns the account, first page of 50 unless
said; each kind of query is run ``--repeat`` times with varying words. Prints a JSON line with
the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from sqlalchemy import func, select, text

from correspond.auth import AuthService
from correspond.errors import NotFound
from correspond.search import OPERATOR, SearchService, viewer_of
from correspond.settings import Settings
from correspond.store import open_store
from correspond.store.message_tables import MessageRow
from correspond.store.visibility import Viewer
from correspond.testing.synthetic import (
    _WORDS,
    customer_name,
    fill_messages,
    make_account_with_folders,
)

ACCOUNT = "search-bench"
NEWEST = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(p99 * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def _cases(rng: random.Random, senders: list[str], count: int) -> dict[str, Callable[[], str]]:
    words = [w for w in _WORDS if "-" not in w]

    def window() -> str:
        start = NEWEST - timedelta(minutes=rng.randrange(count))
        return f"after:{start - timedelta(days=30):%Y-%m-%d} before:{start:%Y-%m-%d}"

    return {
        "common word": lambda: rng.choice(words),
        "rare word (customer, 1/10,000)": lambda: customer_name(rng.randrange(count)),
        "order ref (1/50,000)": lambda: f"ref{rng.randrange(50_000)}",
        "from:address": lambda: f"from:{rng.choice(senders)}",
        "from:address has:attachment word": lambda: (
            f"from:{rng.choice(senders)} has:attachment {rng.choice(words)}"
        ),
        '"phrase" (common)': lambda: f'"{rng.choice(words)} {rng.choice(words)}"',
        "word is:unread in:inbox": lambda: f"{rng.choice(words)} is:unread in:inbox",
        "rare -common": lambda: f"{customer_name(rng.randrange(count))} -{rng.choice(words)}",
        "common + 30-day window": lambda: f"{rng.choice(words)} {window()}",
        "prefix (cust*)": lambda: customer_name(rng.randrange(count))[:5] + "*",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=1_000_000, help="messages to fill")
    ap.add_argument("--database-url", help="PostgreSQL URL (a fresh database); default SQLite")
    ap.add_argument("--data-dir", type=Path, help="keep the store here (default: a temp dir)")
    ap.add_argument("--repeat", type=int, default=100, help="timed searches per kind")
    ap.add_argument("--batch", type=int, default=500, help="indexer batch")
    ap.add_argument("--reuse", action="store_true", help="skip fill and index if done")
    ap.add_argument("--out", help="append the JSON line to this file")
    args = ap.parse_args(argv)

    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="correspond-search-bench-"))
    key_file = data_dir / "bench.key"
    data_dir.mkdir(parents=True, exist_ok=True)
    if not key_file.exists():
        key_file.write_text(Fernet.generate_key().decode("ascii"))
    settings = Settings(
        data_dir=data_dir,
        secret_key=key_file.read_text().strip(),
        database_url=args.database_url,
        search_index_batch=args.batch,
    )
    store = open_store(settings)
    engine = store.engine
    record: dict[str, Any] = {
        "bench": "search",
        "backend": engine.dialect.name,
        "count": args.count,
        "load_before": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        try:
            account = store.get_account(ACCOUNT)
            account_id = account.id
        except NotFound:
            t0 = time.perf_counter()
            account_id, folders = make_account_with_folders(engine, ACCOUNT)
            fill_messages(engine, account_id, folders, args.count, newest=NEWEST, chunk=10_000)
            record["fill_s"] = round(time.perf_counter() - t0, 1)
        service = SearchService(engine, settings)
        last, _ = service.index.state()
        with engine.connect() as conn:
            top = int(conn.scalar(select(func.max(MessageRow.id))) or 0)
            record["messages"] = int(conn.scalar(select(func.count()).select_from(MessageRow)))
        if last < top or not args.reuse:
            t0 = time.perf_counter()
            indexed = service.index.index_all()
            took = time.perf_counter() - t0
            record["indexed"] = indexed
            record["index_s"] = round(took, 1)
            record["index_per_s"] = round(indexed / took) if took else None
            record["load_after_index"] = [round(x, 2) for x in os.getloadavg()]
        # Always: a fill in an interrupted run leaves tables without statistics, and
        # PostgreSQL then joins every location for an in: filter (23 s instead of 20 ms).
        _analyze(engine)
        # A round once caught up (what the background indexer does when woken with nothing
        # new): its cost while ids are younger than the settle time, and after.
        t0 = time.perf_counter()
        service.index.index_batch()
        record["caught_up_round_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        service.index.index_batch(now=datetime.now(UTC) + timedelta(hours=1))
        t0 = time.perf_counter()
        service.index.index_batch()
        record["settled_round_ms"] = round((time.perf_counter() - t0) * 1000, 1)

        member = _member(store, settings)
        rng = random.Random(11)
        with engine.connect() as conn:
            senders = [
                str(v)
                for v in conn.scalars(
                    select(MessageRow.from_email)
                    .where(MessageRow.id.in_([rng.randrange(1, top + 1) for _ in range(300)]))
                    .limit(200)
                )
            ]
        cases = _cases(rng, senders, args.count)
        results: dict[str, Any] = {}
        everything: list[float] = []
        for viewer_name, viewer in (("admin", OPERATOR), ("member", member)):
            for name, make in cases.items():
                service.search(make(), viewer)  # warm
                samples, hits = [], []
                for _ in range(args.repeat):
                    q = make()
                    t0 = time.perf_counter()
                    page = service.search(q, viewer, limit=50)
                    samples.append(time.perf_counter() - t0)
                    hits.append(len(page.items))
                everything.extend(samples)
                results[f"{viewer_name}: {name}"] = {
                    **_ms(samples),
                    "median_hits": statistics.median(hits),
                }
            # The second page of a common word (cursor).
            samples = []
            for _ in range(args.repeat):
                first = service.search(rng.choice(_WORDS[:5]), viewer, limit=50)
                assert first.next_cursor
                t0 = time.perf_counter()
                service.search(rng.choice(_WORDS[:5]), viewer, cursor=first.next_cursor)
                samples.append(time.perf_counter() - t0)
            everything.extend(samples)
            results[f"{viewer_name}: common word, page 2"] = _ms(samples)
        record["searches"] = results
        record["all_searches"] = _ms(everything)
        record["load_after"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        store.close()
    line = json.dumps(record)
    print(line)
    for name, figures in record["searches"].items():
        print(f"  {name:<48} p50 {figures['p50_ms']:>8} ms  p99 {figures['p99_ms']:>8} ms")
    if args.out:
        with open(args.out, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    return 0


def _member(store: Any, settings: Settings) -> Viewer:
    """A member who owns the bench account (made once)."""
    auth = AuthService(store, settings)
    try:
        user = auth.users.get_user("bench-member@example.test")
    except NotFound:
        if auth.users.count_users() == 0:
            auth.create_user("bench-admin@example.test", None, admin=True)
        user, _ = auth.create_user("bench-member@example.test", None)
    auth.users.set_account_owner(ACCOUNT, user.id)
    return viewer_of(user)


def _analyze(engine: Any) -> None:
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    else:
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))


if __name__ == "__main__":
    sys.exit(main())
