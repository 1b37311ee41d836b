"""The backfill's commit stage alone: ``MessageStore.ingest_batch`` over real messages.

    .venv/bin/python bench/commit_bench.py MAILDIR [--limit 2000] [--batch 200] \\
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/a_fresh_db]

Messages are read from MAILDIR (e.g. the bench lab's ``$LAB/mail/bench/Maildir``), parsed and
built into rows beforehand (the parse workers' part, not timed; no blobs are written), then
stored in batches as the engine stores them, each batch with its folder checkpoint in one
transaction. Prints the commit seconds, messages per second, and the SQL statements and
``COMMIT``s per batch (each statement is at least one round trip to the server). On PostgreSQL
every round trip waits for two processes to be scheduled, which on a loaded machine costs far
more than the statement; see bench/README.md.
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from sqlalchemy import event, text

from correspond.imap.types import FetchResponse
from correspond.settings import Settings
from correspond.store import open_store
from correspond.store.messages import FolderCheckpointUpdate, IncomingMessage, MessageStore
from correspond.sync.engine import default_thread_chooser
from correspond.sync.prepare import FolderRef, MessageBuilder, default_dedupe, parse_raw
from correspond.testing.synthetic import make_account_with_folders


def _items(root: Path, limit: int, account_id: int, folder_id: int) -> list[IncomingMessage]:
    paths = sorted(p for sub in ("cur", "new") for p in (root / sub).glob("*") if p.is_file())
    builder = MessageBuilder()
    folder = FolderRef(folder_id, account_id, b"INBOX", "inbox")
    out = []
    for uid, path in enumerate(paths[:limit] if limit else paths, start=1):
        raw = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        parsed = parse_raw(raw)
        fetch = FetchResponse(
            seq=uid, uid=uid, flags=(), internaldate=datetime.now(UTC), size=len(raw)
        )
        data = builder.build(
            parsed,
            dedupe_key=default_dedupe(parsed, None),
            fetch=fetch,
            folder=folder,
            raw_blob_key=f"{uid:064x}",
            attachments=(),
            truncated=False,
        )
        out.append(IncomingMessage(uid=uid, flags=frozenset({"\\Seen"}), data=data))
    return out


def _server_cpu(engine: Any) -> float:
    """CPU seconds used so far by this database's PostgreSQL backends (from /proc: the server
    runs on this machine in the lab), which a loaded machine does not inflate as it does wall
    time. 0 on SQLite."""
    if engine.dialect.name != "postgresql":
        return 0.0
    with engine.connect() as conn:
        pids = conn.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        ).scalars()
        total = 0.0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("maildir", type=Path)
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--database-url", help="a fresh PostgreSQL database; default SQLite")
    ap.add_argument("--out", help="append the JSON line here")
    args = ap.parse_args(argv)

    data_dir = Path(tempfile.mkdtemp(prefix="correspond-commit-bench-"))
    settings = Settings(
        data_dir=data_dir,
        database_url=args.database_url,
        secret_key=Fernet.generate_key().decode("ascii"),
    )
    store = open_store(settings)
    try:
        account_id, folders = make_account_with_folders(store.engine, "commit-bench")
        items = _items(args.maildir, args.limit, account_id, folders["inbox"])
        messages = MessageStore(store.engine)
        counts = {"statements": 0, "commits": 0}

        def count(*_: Any) -> None:
            counts["statements"] += 1

        def commit(*_: Any) -> None:
            counts["commits"] += 1

        event.listen(store.engine, "before_cursor_execute", count)
        event.listen(store.engine, "commit", commit)
        per_batch: list[float] = []
        server0 = _server_cpu(store.engine)
        load_before = [round(x, 2) for x in os.getloadavg()]
        cpu0, t0 = time.process_time(), time.perf_counter()
        for start in range(0, len(items), args.batch):
            batch = items[start : start + args.batch]
            b0 = time.perf_counter()
            messages.ingest_batch(
                account_id,
                folders["inbox"],
                batch,
                FolderCheckpointUpdate(backfill_done_increment=len(batch)),
                chooser=default_thread_chooser,
            )
            per_batch.append(time.perf_counter() - b0)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        server = _server_cpu(store.engine) - server0
        batches = len(per_batch)
        record = {
            "bench": "correspond-commit",
            "backend": store.engine.dialect.name,
            "messages": len(items),
            "batch": args.batch,
            "commit_s": round(wall, 2),
            "msgs_per_s": round(len(items) / wall, 1),
            "client_cpu_s": round(cpu, 2),
            "server_cpu_s": round(server, 2) if store.engine.dialect.name != "sqlite" else None,
            "batch_p50_ms": round(statistics.median(per_batch) * 1000, 1),
            "statements_per_batch": round(counts["statements"] / batches, 1),
            "load_before": load_before,
            "load_after": [round(x, 2) for x in os.getloadavg()],
        }
    finally:
        store.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    line = json.dumps(record)
    print(line)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
