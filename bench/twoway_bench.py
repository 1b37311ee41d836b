"""Two-way sync latency and outbox drain, against a private Dovecot (issue 9's benchmark).

    .venv/bin/python bench/twoway_bench.py [--count 200] [--drain 1000] [--url URL]
        [--gap-ms 300] [--poll-ms 5] [--wake serve|worker] [--poll-seconds 5]

One account, live in a real :class:`~correspond.sync.runner.SyncRunner` (the worker's lease
rounds, the live session's IDLE on INBOX, the outbox applier) on a thread of its own, over a
fresh store (SQLite in a temporary folder, or ``--url`` for PostgreSQL: a fresh database there
is the caller's to give) and a private Dovecot (``correspond.testing.dovecot``, STARTTLS on
loopback). The mailbox holds ``2 * count + drain`` small messages, backfilled first.

1. **CRM → mailbox** (``count`` times): ``OutboxStore.record(message, "read")``, as the API does;
   latency until another IMAP client (stdlib imaplib, polling ``UID FETCH uid (FLAGS)`` every
   ``--poll-ms``) sees ``\\Seen`` on that message. ``--wake serve`` (default) wakes the session
   as ``correspond serve`` does (the API and the engine in one process:
   ``OutboxStore(on_recorded=runner.wake)``); ``--wake worker`` as an API in another process
   than the worker does: PostgreSQL's NOTIFY (``store.wakeups``), and on SQLite the runner's
   next lease round (``--poll-seconds``).
2. **mailbox → CRM** (``count`` times): another client sets ``\\Flagged`` (``UID STORE``);
   latency until the CRM row has it (a separate database connection polling every
   ``--poll-ms``).
3. **The bare-IDLE floor** for 2, on the same server and gaps, after the engine stopped: a
   client in one continuous IDLE on INBOX; latency from the other client's ``UID STORE`` to
   the ``* n FETCH`` it is told of (Dovecot holds IDLE notifications back by about 0.5 s).
4. **Drain**: the engine stopped (an account paused, or no worker running), ``drain`` CRM
   actions (``read``) queued in one bulk request (``OutboxStore.record_many``); the engine
   started again: seconds until the first row is applied (connect, catch-up) and until every
   row is, and how many each second.

Each delivery waits for the previous one to be seen, plus a random pause uniform in
0..2 * ``--gap-ms`` (seeded), so changes land at random phases of Dovecot's timers. It prints
p50/p90/p99/max per phase, the targets (CRM → mailbox p99 < 1 s; mailbox → CRM p99 ≤ floor p99
+ 50 ms; drain < 10 s) and one JSON line (``"bench": "correspond-twoway"``) with the load
averages before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import imaplib
import json
import os
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.fernet import Fernet
from sqlalchemy import func, select

from correspond.settings import Settings
from correspond.store import open_store
from correspond.store.message_tables import MessageRow
from correspond.store.outbox import OutboxStore
from correspond.store.outbox_tables import OutboxRow
from correspond.store.repository import Store
from correspond.sync.runner import SyncRunner
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.store import add_dovecot_account

SEEN = "\\Seen"
FLAGGED = "\\Flagged"


def message(i: int, when: datetime) -> bytes:
    return (
        f"From: Pusher <pusher@lab.test>\r\nTo: bench@lab.test\r\n"
        f"Subject: two-way probe {i}\r\nDate: {when.strftime('%a, %d %b %Y %H:%M:%S +0000')}\r\n"
        f"Message-ID: <twoway-{i}@lab.test>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"probe {i}\r\n" + "x" * 2000 + "\r\n"
    ).encode()


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def summary(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    return {
        "n": len(xs),
        "p50_ms": round(pct(xs, 50) * 1000, 1),
        "p90_ms": round(pct(xs, 90) * 1000, 1),
        "p99_ms": round(pct(xs, 99) * 1000, 1),
        "max_ms": round(max(xs) * 1000, 1),
        "mean_ms": round(statistics.fmean(xs) * 1000, 1),
    }


def wait_for(predicate: Callable[[], bool], timeout: float, poll: float, what: str) -> float:
    """Poll until ``predicate``; the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


class Engine:
    """A SyncRunner on its own thread and event loop (what ``correspond worker`` runs)."""

    def __init__(self, store: Store, settings: Settings, poll_seconds: float) -> None:
        self.runner = SyncRunner(
            store, settings, poll_seconds=poll_seconds, lease_seconds=max(60.0, 3 * poll_seconds)
        )
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop: asyncio.Event | None = None
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name="twoway-engine", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.stop = asyncio.Event()
            self.ready.set()
            await self.runner.run(self.stop)

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by the main thread
            self.error = exc
            self.ready.set()

    def start(self) -> Engine:
        self.thread.start()
        self.ready.wait()
        return self

    def shutdown(self) -> None:
        if self.loop is not None and self.stop is not None:
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(timeout=60)


def wait_live(store: Store, engine: Engine, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if engine.error is not None:
            raise SystemExit(f"the engine failed: {engine.error!r}")
        account = store.get_account(name)
        if account.state == "live":
            return
        if account.state in ("auth_failed", "error"):
            raise SystemExit(f"account went to {account.state}: {account.state_detail}")
        time.sleep(0.02)
    raise SystemExit("the account did not become live in time")


@contextlib.contextmanager
def imap(server: DovecotServer, user: ImapUser) -> Iterator[imaplib.IMAP4]:
    conn = server.imaplib_client(user)
    try:
        yield conn
    finally:
        with contextlib.suppress(Exception):
            conn.logout()


def uids_by_index(server: DovecotServer, user: ImapUser) -> dict[int, int]:
    """Probe number -> INBOX UID."""
    with imap(server, user) as conn:
        conn.select("INBOX", readonly=True)
        typ, data = conn.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        assert typ == "OK"
        out: dict[int, int] = {}
        for item in data:
            if isinstance(item, tuple):
                uid = re.search(rb"UID (\d+)", item[0])
                probe = re.search(rb"twoway-(\d+)@", item[1])
                if uid and probe:
                    out[int(probe.group(1))] = int(uid.group(1))
        return out


def crm_ids(store: Store, account_id: int) -> dict[int, int]:
    """Probe number -> CRM message id."""
    with store.engine.connect() as c:
        rows = c.execute(
            select(MessageRow.id, MessageRow.message_id_header).where(
                MessageRow.account_id == account_id
            )
        ).all()
    out: dict[int, int] = {}
    for mid, header in rows:
        found = re.match(r"twoway-(\d+)@", header or "")
        if found:
            out[int(found.group(1))] = int(mid)
    return out


def flags_of(conn: imaplib.IMAP4, uid: int) -> str:
    typ, data = conn.uid("FETCH", str(uid), "(FLAGS)")
    assert typ == "OK", data
    return " ".join(d.decode() if isinstance(d, bytes) else d[0].decode() for d in data if d)


def crm_flags(store: Store, message_id: int) -> list[str]:
    with store.engine.connect() as c:
        return list(c.scalar(select(MessageRow.flags).where(MessageRow.id == message_id)) or [])


def pending(store: Store, account_id: int) -> int:
    with store.engine.connect() as c:
        return int(
            c.scalar(
                select(func.count())
                .select_from(OutboxRow)
                .where(OutboxRow.account_id == account_id, OutboxRow.state == "pending")
            )
            or 0
        )


def idle_floor(
    server: DovecotServer,
    user: ImapUser,
    uids: list[int],
    rng: random.Random,
    a: argparse.Namespace,
) -> list[float]:
    """A client in one continuous IDLE on INBOX; another clears ``\\Flagged`` on each UID in
    turn: the time from the STORE to the ``* n FETCH`` the IDLE client reads."""
    latencies: list[float] = []
    with imap(server, user) as idler, imap(server, user) as actor:
        idler.select("INBOX")
        actor.select("INBOX")
        idler.send(b"i1 IDLE\r\n")
        line = idler.readline()
        assert line.startswith(b"+"), line
        for uid in uids:
            t0 = time.monotonic()
            typ, _ = actor.uid("STORE", str(uid), "-FLAGS.SILENT", f"({FLAGGED})")
            assert typ == "OK"
            while True:
                line = idler.readline()
                if not line:
                    raise SystemExit("the IDLE connection closed")
                if b"FETCH" in line:
                    latencies.append(time.monotonic() - t0)
                    break
            time.sleep(rng.uniform(0, 2 * a.gap_ms / 1000))
        idler.send(b"DONE\r\n")
        while not idler.readline().startswith(b"i1 "):
            pass
    return latencies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--count", type=int, default=200, help="changes each way (default 200)")
    ap.add_argument("--drain", type=int, default=1000, help="queued actions (default 1,000)")
    ap.add_argument("--url", help="SQLAlchemy URL of an empty database (default: SQLite)")
    ap.add_argument("--gap-ms", type=float, default=300.0)
    ap.add_argument("--poll-ms", type=float, default=5.0)
    ap.add_argument("--wake", choices=("serve", "worker"), default="serve")
    ap.add_argument("--poll-seconds", type=float, default=5.0, help="lease round (worker's 5)")
    ap.add_argument("--seed", type=int, default=9)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    poll = a.poll_ms / 1000
    load_before = os.getloadavg()
    total = 2 * a.count + a.drain

    with tempfile.TemporaryDirectory(prefix="correspond-twoway-") as tmp, DovecotServer() as server:
        user = server.add_user()
        settings = Settings(
            data_dir=Path(tmp) / "data",
            database_url=a.url or f"sqlite:///{Path(tmp) / 'store.db'}",
            secret_key=Fernet.generate_key().decode("ascii"),
        )
        store = open_store(settings)
        account = add_dovecot_account(store, server, user)
        now = datetime.now(UTC) - timedelta(hours=1)
        with imap(server, user) as conn:
            for i in range(total):
                typ, data = conn.append("INBOX", None, None, message(i, now))
                assert typ == "OK", data
        uids = uids_by_index(server, user)
        print(f"{total} messages in INBOX; backfilling ...", file=sys.stderr)

        engine = Engine(store, settings, a.poll_seconds).start()
        started = time.monotonic()
        wait_live(store, engine, account.name, 600)
        print(f"live after {time.monotonic() - started:.1f} s", file=sys.stderr)
        ids = crm_ids(store, account.id)
        assert len(ids) == total, (len(ids), total)
        outbox = OutboxStore(
            store.engine, on_recorded=engine.runner.wake if a.wake == "serve" else None
        )

        # 1. CRM -> mailbox.
        to_mailbox: list[float] = []
        with imap(server, user) as observer:
            observer.select("INBOX", readonly=True)
            for i in range(a.count):
                t0 = time.monotonic()
                outbox.record(ids[i], "read", user_id=None)
                seen = wait_for(
                    lambda uid=uids[i]: SEEN in flags_of(observer, uid),
                    30 + a.poll_seconds,
                    poll,
                    f"\\Seen on probe {i}",
                )
                to_mailbox.append(seen - t0)
                time.sleep(rng.uniform(0, 2 * a.gap_ms / 1000))

        # 2. mailbox -> CRM.
        to_crm: list[float] = []
        with imap(server, user) as actor:
            actor.select("INBOX")
            for i in range(a.count, 2 * a.count):
                t0 = time.monotonic()
                typ, _ = actor.uid("STORE", str(uids[i]), "+FLAGS.SILENT", f"({FLAGGED})")
                assert typ == "OK"
                seen = wait_for(
                    lambda mid=ids[i]: FLAGGED in crm_flags(store, mid),
                    30,
                    poll,
                    f"\\Flagged in the CRM on probe {i}",
                )
                to_crm.append(seen - t0)
                time.sleep(rng.uniform(0, 2 * a.gap_ms / 1000))
        engine.shutdown()

        # 3. The bare-IDLE floor on the same messages (clearing the flag set in 2).
        floor = idle_floor(server, user, [uids[i] for i in range(a.count, 2 * a.count)], rng, a)

        # 4. Drain: queued while no engine runs, then the engine starts.
        drain_ids = [ids[i] for i in range(2 * a.count, total)]
        queued_at = time.monotonic()
        results = outbox.record_many(drain_ids, "read", user_id=None)
        queue_seconds = time.monotonic() - queued_at
        assert all(not isinstance(r, Exception) for r in results)
        assert pending(store, account.id) == a.drain
        engine = Engine(store, settings, a.poll_seconds).start()
        resumed = time.monotonic()
        first = wait_for(lambda: pending(store, account.id) < a.drain, 600, 0.01, "a first row")
        done = wait_for(lambda: pending(store, account.id) == 0, 600, 0.02, "the drain")
        drain_seconds = done - resumed
        engine.shutdown()
        drain_uids = {uids[i] for i in range(2 * a.count, total)}
        with imap(server, user) as conn:
            conn.select("INBOX", readonly=True)
            typ, data = conn.uid("SEARCH", "UNSEEN")
            unseen = len(drain_uids & {int(u) for u in (data[0] or b"").split()})
        store.engine.dispose()

    report = {
        "bench": "correspond-twoway",
        "backend": "postgresql" if a.url else "sqlite",
        "wake": a.wake,
        "poll_seconds": a.poll_seconds,
        "crm_to_mailbox": summary(to_mailbox),
        "mailbox_to_crm": summary(to_crm),
        "idle_floor": summary(floor),
        "drain": {
            "actions": a.drain,
            "queue_seconds": round(queue_seconds, 3),
            "first_applied_after_resume_seconds": round(first - resumed, 2),
            "drained_after_resume_seconds": round(drain_seconds, 2),
            "rows_per_second": round(a.drain / drain_seconds, 1) if drain_seconds else None,
            "left_unseen_in_mailbox": unseen,
        },
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    for name in ("crm_to_mailbox", "mailbox_to_crm", "idle_floor"):
        s = report[name]
        assert isinstance(s, dict)
        print(
            f"{name:16} n={s.get('n')} p50 {s.get('p50_ms')} ms  p90 {s.get('p90_ms')}  "
            f"p99 {s.get('p99_ms')}  max {s.get('max_ms')}"
        )
    d = report["drain"]
    assert isinstance(d, dict)
    print(
        f"drain            {a.drain} actions: first applied "
        f"{d['first_applied_after_resume_seconds']} s after the resume, all after "
        f"{d['drained_after_resume_seconds']} s ({d['rows_per_second']}/s); drained messages "
        f"still unseen in the mailbox: {d['left_unseen_in_mailbox']}"
    )
    c2m, m2c, fl = (report[k] for k in ("crm_to_mailbox", "mailbox_to_crm", "idle_floor"))
    assert isinstance(c2m, dict) and isinstance(m2c, dict) and isinstance(fl, dict)

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    print(
        f"targets: CRM -> mailbox p99 < 1000 ms: {verdict(c2m['p99_ms'] < 1000)}; "
        f"mailbox -> CRM p99 <= floor p99 + 50 ({fl['p99_ms'] + 50:.1f} ms): "
        f"{verdict(m2c['p99_ms'] <= fl['p99_ms'] + 50)}; "
        f"drain < 10 s: {verdict(d['drained_after_resume_seconds'] < 10)}"
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
