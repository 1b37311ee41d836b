"""Web page server time at issue 8's scale (issue 11's benchmark): inbox, thread, contact.

    .venv/bin/python bench/crm_bench.py --database-url URL --reuse --skip \\
        timeline,inbox,search,relink                                  # fill once (long)
    .venv/bin/python bench/page_bench.py --database-url URL         # then this

Uses the database ``crm_bench.py`` fills (1,000,000 messages, 100,000 contacts, 10,000 deals;
its data directory for the secret key) and its two users: the member who owns the bench
account and an admin. Each page is requested through the app as ``correspond serve`` builds
it, called as an ASGI callable in this process with a session cookie (no server, no HTTP
client: the figure is the server's own time, from the request to the last byte of the page):

- ``inbox``: ``GET /`` (the personal inbox's first page) for the member, and the admin's;
- ``thread``: ``GET /conversation/{id}`` of random threads of the bench account, and
  ``frame``: ``GET /message/{id}/frame`` (the sanitised body a thread page shows per message);
- ``contact``: ``GET /crm/contacts/{id}`` of random contacts (~10 messages each) and of the
  heavy one (on 1 in 20 messages).

Prints one JSON line per page kind (p50/p99/max ms, bytes of the largest page) and the
static assets' weight; ``--out FILE`` appends them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from correspond.api import create_app
from correspond.auth import SESSION_COOKIE, AuthService
from correspond.settings import Settings
from correspond.store import open_store
from correspond.store.crm_tables import ContactEmailRow
from correspond.store.message_tables import MessageRow

ACCOUNT = "crm-bench"
HEAVY = "heavy@bigcorp.example"
STATIC = Path(__file__).resolve().parents[1] / "src" / "correspond" / "web" / "static"


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(p99 * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


class Pages:
    """GET requests straight into the ASGI app, signed in by a session cookie."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def get(self, path: str, session: str) -> tuple[int, bytes]:
        sent: list[Any] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"localhost"),
                (b"cookie", f"{SESSION_COOKIE}={session}".encode()),
            ],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8025),
            "state": {},
        }
        await self.app(scope, receive, send)
        return int(sent[0]["status"]), b"".join(m.get("body", b"") for m in sent[1:])

    async def timed(self, paths: list[str], session: str) -> dict[str, Any]:
        await self.get(paths[0], session)  # warm: statement caches, the first pages read
        samples: list[float] = []
        largest = 0
        for path in paths:
            t0 = time.perf_counter()
            status, body = await self.get(path, session)
            samples.append(time.perf_counter() - t0)
            if status != 200:
                raise SystemExit(f"{path}: status {status}: {body[:300]!r}")
            largest = max(largest, len(body))
        return {**_ms(samples), "requests": len(paths), "largest_bytes": largest}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--database-url", required=True, help="the database crm_bench.py filled")
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/correspond-crm-bench"))
    ap.add_argument("--repeat", type=int, default=200, help="requests per page kind")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--out", help="append the JSON lines to this file")
    args = ap.parse_args(argv)
    key_file = args.data_dir / "bench.key"
    if not key_file.exists():
        raise SystemExit(f"no {key_file}: fill the database with crm_bench.py first")
    settings = Settings(
        data_dir=args.data_dir,
        secret_key=key_file.read_text().strip(),
        database_url=args.database_url,
    )
    store = open_store(settings)
    rng = random.Random(args.seed)
    auth = AuthService(store, settings)
    try:
        member = auth.users.get_user("bench-member@example.test")
        admin = auth.users.get_user("bench-admin@example.test")
        sessions = {"member": auth.start_session(member), "admin": auth.start_session(admin)}
        account = store.get_account(ACCOUNT)
        with store.engine.connect() as conn:
            top = int(
                conn.scalar(
                    select(MessageRow.id)
                    .where(MessageRow.account_id == account.id)
                    .order_by(MessageRow.id.desc())
                    .limit(1)
                )
                or 0
            )
            picks = [rng.randint(1, top) for _ in range(args.repeat)]
            messages = conn.execute(
                select(MessageRow.id, MessageRow.thread_id).where(MessageRow.id.in_(picks))
            ).all()
            contacts = list(
                conn.scalars(
                    select(ContactEmailRow.contact_id).where(
                        ContactEmailRow.contact_id.in_(
                            [rng.randint(1, 100_000) for _ in range(args.repeat)]
                        )
                    )
                )
            )
            heavy = conn.scalar(
                select(ContactEmailRow.contact_id).where(ContactEmailRow.address == HEAVY)
            )
        app = create_app(settings, store=store)
        pages = Pages(app)
        base = {"bench": "pages", "messages_top_id": top}

        async def run() -> list[dict[str, Any]]:
            out = []
            for who in ("member", "admin"):
                figures = await pages.timed(["/"] * args.repeat, sessions[who])
                out.append({**base, "page": "inbox", "viewer": who, **figures})
            threads = [f"/conversation/{tid}" for _mid, tid in messages if tid is not None]
            figures = await pages.timed(threads, sessions["member"])
            out.append({**base, "page": "thread", "viewer": "member", **figures})
            frames = [f"/message/{mid}/frame" for mid, _tid in messages]
            figures = await pages.timed(frames, sessions["member"])
            out.append({**base, "page": "frame", "viewer": "member", **figures})
            paths = [f"/crm/contacts/{cid}" for cid in contacts]
            figures = await pages.timed(paths, sessions["member"])
            out.append({**base, "page": "contact", "viewer": "member", **figures})
            if heavy is not None:
                figures = await pages.timed(
                    [f"/crm/contacts/{heavy}"] * args.repeat, sessions["member"]
                )
                out.append({**base, "page": "contact (heavy)", "viewer": "member", **figures})
            return out

        records = asyncio.run(run())
        static = {p.name: p.stat().st_size for p in sorted(STATIC.iterdir()) if p.is_file()}
        records.append({**base, "page": "static", "bytes": static, "total": sum(static.values())})
        for record in records:
            record["load"] = [round(x, 2) for x in os.getloadavg()]
            line = json.dumps(record)
            print(line, flush=True)
            if args.out:
                with open(args.out, "a", encoding="utf-8") as fh:
                    fh.write(line + "\n")
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
