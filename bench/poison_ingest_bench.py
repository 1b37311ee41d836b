#!/usr/bin/env python3
"""What one refused message costs the commit stage: a batch with one row the database refuses
(a trigger, as a constraint or an index limit would) against the same batch without it.

    poison_ingest_bench.py [--messages 200] [--batches 5] [--database-url URL]

SQLite in a temporary directory unless ``--database-url`` (a fresh, empty PostgreSQL database).
Prints one JSON line: milliseconds per batch, clean and with one refused message, and the
ratio. The machine is shared and noisy: repeat, and compare the ratio.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import Engine, text

from correspond.store.engine import create_store_engine, migrate
from correspond.store.messages import (
    AddressData,
    FolderCheckpointUpdate,
    IncomingMessage,
    MessageData,
    MessageStore,
    ThreadCandidate,
    ThreadChoice,
)
from correspond.testing.synthetic import make_account_with_folders

MARKER = "REFUSE-THIS-ROW"


def _new_thread(
    data: MessageData, related: Sequence[ThreadCandidate], same: Sequence[ThreadCandidate]
) -> ThreadChoice:
    return ThreadChoice(None)


def _account_and_folder(engine: Engine) -> tuple[int, int]:
    account_id, folders = make_account_with_folders(engine, f"bench-{secrets.token_hex(4)}")
    return account_id, folders["inbox"]


def _refuse_marked_rows(engine: Engine) -> None:
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.execute(
                text(
                    "CREATE TRIGGER bench_refuse BEFORE INSERT ON messages WHEN NEW.text_body "
                    f"LIKE '%{MARKER}%' BEGIN SELECT RAISE(ABORT, 'refused'); END"
                )
            )
            return
        conn.execute(
            text(
                "CREATE OR REPLACE FUNCTION bench_refuse() RETURNS trigger AS $$ BEGIN "
                f"IF NEW.text_body LIKE '%{MARKER}%' THEN RAISE EXCEPTION 'refused' "
                "USING ERRCODE = '23514'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
            )
        )
        conn.execute(
            text(
                "CREATE TRIGGER bench_refuse BEFORE INSERT ON messages "
                "FOR EACH ROW EXECUTE FUNCTION bench_refuse()"
            )
        )


def _batch(n: int, start: int, poison: bool) -> list[IncomingMessage]:
    when = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    out = []
    for i in range(n):
        uid = start + i
        body = MARKER if poison and i == n // 2 else f"Body of message {uid}."
        data = MessageData(
            dedupe_key=f"mid:bench-{uid}@example.test",
            message_id=f"bench-{uid}@example.test",
            subject=f"Bench {uid}",
            normalized_subject=f"bench {uid}",
            from_=AddressData("Ann", "ann@customer.test"),
            to=(AddressData(None, "bob@example.test"),),
            date=when,
            snippet=body[:40],
            text=body,
        )
        out.append(IncomingMessage(uid, frozenset(), data))
    return out


def _run(engine: Engine, messages: int, batches: int, poison: bool) -> float:
    account_id, folder_id = _account_and_folder(engine)
    store = MessageStore(engine)
    times = []
    for b in range(batches):
        items = _batch(messages, 1 + b * messages, poison)
        started = time.perf_counter()
        store.ingest_batch(
            account_id, folder_id, items, FolderCheckpointUpdate(), chooser=_new_thread
        )
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--database-url")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_store_engine(args.database_url or f"sqlite:///{tmp}/bench.db")
        try:
            migrate(engine)
            _refuse_marked_rows(engine)
            clean = _run(engine, args.messages, args.batches, poison=False)
            refused = _run(engine, args.messages, args.batches, poison=True)
        finally:
            engine.dispose()
    print(
        json.dumps(
            {
                "backend": "postgresql" if args.database_url else "sqlite",
                "messages_per_batch": args.messages,
                "clean_ms": round(clean * 1000, 1),
                "one_refused_ms": round(refused * 1000, 1),
                "ratio": round(refused / clean, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
