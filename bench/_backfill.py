"""The implementation of ``bench/backfill.py``: run that file (its docstring says how)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import imaplib
import json
import os
import random
import resource
import shutil
import smtplib
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import date
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

from sqlalchemy import text

from correspond.rules.presets import draft_from_preset
from correspond.rules.sync_plan import imap_date, window_start
from correspond.settings import Settings
from correspond.store import Folder, Store, open_store
from correspond.store.blobs import BlobStore
from correspond.store.engine import create_store_engine
from correspond.store.messages import MessageStore
from correspond.sync.engine import AccountSyncer, AccountSyncReport
from correspond.sync.runner import default_parse_processes, make_parse_executor

__all__ = ["main", "run_backfill", "run_latency"]

LAB = Path(os.environ.get("LAB", "/tmp/correspond-bench"))
LAB_CERT = LAB / "ssl" / "cert.pem"
ACCOUNT = "bench-account"


def shared_dir() -> Path:
    """../shared beside the checkout, or ``CORRESPOND_SHARED_DIR``."""
    env = os.environ.get("CORRESPOND_SHARED_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def emit(record: dict[str, Any], out: str | None) -> None:
    line = json.dumps(record, sort_keys=True)
    print(line, flush=True)
    if out:
        with open(out, "a") as fh:
            fh.write(line + "\n")


def pct(xs: Sequence[float], p: float) -> float:
    """Nearest-rank percentile, computed exactly as idle_latency.py does (comparable figures)."""
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


# --- store and account -------------------------------------------------------------------------


@dataclass
class Bench:
    settings: Settings
    store: Store
    data_dir: Path
    keep: bool

    def close(self) -> None:
        self.store.close()
        if not self.keep:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def fresh_store(a: argparse.Namespace) -> Bench:
    """A fresh data directory and store; on PostgreSQL the schema must be empty (a fresh db)."""
    data_dir = Path(tempfile.mkdtemp(prefix="correspond-bench-", dir=a.tmp_dir))
    settings = Settings(data_dir=data_dir, database_url=a.database_url, window_days=a.window_days)
    store = open_store(settings)
    with store.engine.connect() as conn:
        existing = conn.execute(text("SELECT count(*) FROM accounts")).scalar_one()
    if existing:
        store.close()
        raise SystemExit(
            f"the database at {settings.resolved_database_url} already holds {existing} "
            "account(s): give a freshly created database"
        )
    return Bench(settings, store, data_dir, keep=a.keep)


def add_account(b: Bench, a: argparse.Namespace) -> None:
    cert = Path(a.cert).read_text() if a.cert and a.security != "plain" else None
    draft = draft_from_preset(
        "other",
        name=ACCOUNT,
        email=f"{a.user}@lab.test" if "@" not in a.user else a.user,
        username=a.user,
        imap_host=a.host,
        imap_port=a.port,
        imap_security=a.security,
        smtp_host=a.host,
        allow_plaintext=a.allow_plaintext,
        trusted_cert_pem=cert,
        window_days=a.window_days,
    )
    b.store.add_account(draft, a.password)


def choose_folders(b: Bench, folders: list[Folder], wanted: str | None) -> list[Folder]:
    if not wanted:
        return folders
    refs = [w.strip() for w in wanted.split(",") if w.strip()]
    return b.store.select_folders(ACCOUNT, refs=refs)


# --- server-side counts (stdlib imaplib, independent of Correspond's client) ------------------


@contextlib.contextmanager
def imaplib_session(a: argparse.Namespace) -> Iterator[imaplib.IMAP4]:
    ctx = ssl.create_default_context(cafile=a.cert) if a.cert else ssl.create_default_context()
    conn: imaplib.IMAP4
    if a.security == "tls":
        conn = imaplib.IMAP4_SSL(a.host, a.port, ssl_context=ctx)
    else:
        conn = imaplib.IMAP4(a.host, a.port)
        if a.security == "starttls":
            conn.starttls(ssl_context=ctx)
    try:
        conn.login(a.user, a.password)
        yield conn
    finally:
        with contextlib.suppress(Exception):
            conn.logout()


def imap_quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def server_counts(a: argparse.Namespace, names_raw: Sequence[bytes], since: str) -> dict[str, int]:
    """Messages per folder with INTERNALDATE on or after ``since`` (RFC 3501 §6.4.4 SINCE)."""
    out: dict[str, int] = {}
    with imaplib_session(a) as conn:
        for raw in names_raw:
            name = raw.decode("ascii", "replace")
            typ, _ = conn.select(imap_quote(name), readonly=True)
            if typ != "OK":
                out[name] = -1
                continue
            typ, data = conn.uid("SEARCH", "SINCE", since)
            out[name] = len(data[0].split()) if typ == "OK" and data and data[0] else 0
    return out


# --- backfill ----------------------------------------------------------------------------------


def worker_peak_rss_mb(executor: Executor | None) -> list[float]:
    """Each pool process's own peak RSS (``VmHWM`` in /proc), read before the pool shuts down.

    ``RUSAGE_CHILDREN``'s ``ru_maxrss`` is no measure of a spawned worker: Linux carries the
    peak of the forked copy of this process over the ``exec``, so it reports this process's
    size at the time the worker started, not the worker's own."""
    processes = getattr(executor, "_processes", None) or {}
    out: list[float] = []
    for pid in list(processes):
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out.append(round(int(line.split()[1]) / 1024, 1))
    return sorted(out)


def run_backfill(a: argparse.Namespace) -> int:
    """One from-scratch backfill; returns the process exit status (1 on MISMATCH)."""
    b = fresh_store(a)
    executor: Executor | None = make_parse_executor(a.workers)
    try:
        add_account(b, a)
        today = date.today()
        syncer = AccountSyncer(
            b.store,
            MessageStore(b.store.engine),
            BlobStore.from_settings(b.settings),
            b.settings,
            parse_executor=executor,
            batch_size=a.batch_size,
            today=today,
        )
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        load0 = load_avg()
        cpu0 = os.times()
        profiler = None
        if a.profile:
            import cProfile

            profiler = cProfile.Profile()

        async def go() -> tuple[AccountSyncReport, list[Folder], float]:
            account = b.store.get_account(ACCOUNT)
            started = time.perf_counter()
            client = await syncer.connect(account)
            try:
                folders = await syncer.refresh_folders(client, account)
                folders = choose_folders(b, folders, a.folders)
                report = await syncer.sync_once(client, account, folders=folders)
            finally:
                with contextlib.suppress(Exception):
                    await client.logout()
            return report, folders, time.perf_counter() - started

        if profiler is not None:
            profiler.enable()
        report, folders, wall = asyncio.run(go())
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(a.profile)
        worker_hwm = worker_peak_rss_mb(executor)
        if executor is not None:
            executor.shutdown(wait=True)  # children reaped: their peak RSS is now counted
            executor = None
        cpu1 = os.times()
        load1 = load_avg()
        rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

        account = b.store.get_account(ACCOUNT)
        ms = MessageStore(b.store.engine)
        stored = ms.count_messages(account.id)
        chosen = [f for f in folders if f.selected and f.selectable and not f.removed]
        since = imap_date(window_start(today, a.window_days))
        remote = server_counts(a, [f.name_raw for f in chosen], since)
        per_folder: dict[str, dict[str, int]] = {}
        ok = True
        for f in chosen:
            name = f.name_raw.decode("ascii", "replace")
            local = ms.count_locations(f.id)
            per_folder[f.name] = {"server": remote[name], "store": local}
            ok = ok and local == remote[name]
        errors = [r.error for r in report.folders if r.error]
        ok = ok and not errors
        locations = sum(v["store"] for v in per_folder.values())
        fetched = sum(r.bytes_fetched for r in report.folders)
        stages = {
            k: round(sum(getattr(r, f"seconds_{k}") for r in report.folders), 2)
            for k in ("fetch", "parse", "blobs", "store")
        }
        record = {
            "bench": "correspond-backfill",
            "database": b.store.dialect,
            "folders": list(per_folder),
            "window_days": a.window_days,
            "workers": a.workers,
            "batch_size": a.batch_size,
            "messages": stored,
            "locations": locations,
            "created": report.created,
            "linked": report.linked,
            "wall_s": round(wall, 2),
            "msgs_per_s": round(locations / wall, 1) if wall else None,
            "stored_msgs_per_s": round(stored / wall, 1) if wall else None,
            "MB_fetched": round(fetched / 1e6, 1),
            "MB_per_s": round(fetched / 1e6 / wall, 1) if wall else None,
            "peak_rss_MB_self": round(rss_self, 1),
            "peak_rss_MB_before_sync": round(rss_before / 1024, 1),
            "peak_rss_MB_children": round(rss_children, 1),
            "peak_rss_MB_workers": worker_hwm,
            "peak_rss_MB_total": round(rss_self + sum(worker_hwm), 1),
            "cpu_user_s": round(cpu1.user - cpu0.user, 1),
            "cpu_sys_s": round(cpu1.system - cpu0.system, 1),
            "cpu_children_s": round(
                (cpu1.children_user - cpu0.children_user)
                + (cpu1.children_system - cpu0.children_system),
                1,
            ),
            "stage_s": stages,
            "per_folder": per_folder,
            "verify": "OK" if ok else "MISMATCH",
            "errors": errors,
            "load_before": load0,
            "load_after": load1,
        }
        print(
            f"correspond backfill ({record['database']}, folders {','.join(per_folder)}, "
            f"window {a.window_days} d): messages={stored} locations={locations} "
            f"wall_s={wall:.2f} msgs_per_s={record['msgs_per_s']} "
            f"MB_per_s={record['MB_per_s']} ({record['MB_fetched']} MB fetched)"
        )
        print(
            f"  peak RSS: self {rss_self:.0f} MB (before sync {rss_before / 1024:.0f} MB), "
            f"children {rss_children:.0f} MB; cpu user {record['cpu_user_s']} s "
            f"sys {record['cpu_sys_s']} s children {record['cpu_children_s']} s"
        )
        print(
            f"  parse workers' own peak RSS (VmHWM): {worker_hwm} MB; this process plus "
            f"workers: {record['peak_rss_MB_total']} MB"
        )
        print(f"  stages (overlapping, summed over batches): {stages}")
        for name, v in per_folder.items():
            mark = "ok" if v["server"] == v["store"] else "DIFFERS"
            print(f"  {name}: server SINCE {since} = {v['server']}, store = {v['store']} {mark}")
        print(f"  verify: {record['verify']}  load {load0} -> {load1}")
        emit(record, a.out)
        return 0 if ok else 1
    finally:
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        b.close()


# --- latency -----------------------------------------------------------------------------------


def probe(i: int, user: str) -> tuple[str, bytes]:
    """A small message like idle_latency.py's (2 KB body), with a Message-ID to look for."""
    mid = make_msgid(domain="lab.test")
    raw = (
        f"From: Pusher <pusher@lab.test>\r\nTo: {user}@lab.test\r\n"
        f"Subject: correspond latency probe {i}\r\nDate: {formatdate()}\r\n"
        f"Message-ID: {mid}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"probe {i}\r\n" + "x" * 2000 + "\r\n"
    ).encode()
    return mid.strip("<>"), raw


def pass_seconds(report: AccountSyncReport) -> float:
    """A pass's duration: its own clock, else (the live watchers' one-folder reports carry
    none) the sum of its folders' fetch, parse, blob and store seconds."""
    if report.seconds:
        return report.seconds
    return sum(
        getattr(f, name, 0.0)
        for f in report.folders
        for name in ("seconds_fetch", "seconds_parse", "seconds_blobs", "seconds_store")
    )


class LiveEngine:
    """The account's live loop (:meth:`AccountSyncer.run_account`) on its own thread and loop."""

    def __init__(self, syncer: AccountSyncer) -> None:
        self.syncer = syncer
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop: asyncio.Event | None = None
        self.passes: list[float] = []
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name="correspond-live", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.stop = asyncio.Event()
            self.ready.set()
            await self.syncer.run_account(
                ACCOUNT,
                stop=self.stop,
                poll_seconds=3600.0,
                on_synced=lambda r: self.passes.append(pass_seconds(r)),
            )

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by the main thread
            self.error = exc
            self.ready.set()

    def start(self) -> None:
        self.thread.start()
        self.ready.wait()

    def shutdown(self) -> None:
        if self.loop is not None and self.stop is not None:
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(timeout=30)


def wait_live(store: Store, engine: LiveEngine, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if engine.error is not None:
            raise SystemExit(f"live loop failed: {engine.error!r}")
        acc = store.get_account(ACCOUNT)
        if acc.state == "live":
            return
        if acc.state in ("auth_failed", "error"):
            raise SystemExit(f"account went to {acc.state}: {acc.state_detail}")
        time.sleep(0.05)
    raise SystemExit("the account did not become live in time")


def inbox_uidnext(a: argparse.Namespace) -> int:
    with imaplib_session(a) as conn:
        typ, data = conn.status("INBOX", "(UIDNEXT)")
        text_ = data[0].decode() if typ == "OK" and data and data[0] else ""
        return int(text_.split("UIDNEXT")[1].strip(" )"))


def expunge_from(a: argparse.Namespace, uidnext: int) -> None:
    """Remove what this run delivered (UIDs >= ``uidnext`` at the start), as idle_latency does."""
    with imaplib_session(a) as conn:
        conn.select("INBOX")
        conn.uid("STORE", f"{uidnext}:*", "+FLAGS.SILENT", "(\\Deleted)")
        conn.uid("EXPUNGE", f"{uidnext}:*")


def measure_correspond(a: argparse.Namespace) -> dict[str, Any]:
    b = fresh_store(a)
    add_account(b, a)
    # The product's parse pool (``--workers``), as ``correspond serve`` runs it.
    executor = make_parse_executor(a.workers)
    syncer = AccountSyncer(
        b.store,
        MessageStore(b.store.engine),
        BlobStore.from_settings(b.settings),
        b.settings,
        parse_executor=executor,
    )
    live = LiveEngine(syncer)
    # The poller's own engine and connection: the engine's pool is never touched from here.
    poll_engine = create_store_engine(b.settings.resolved_database_url)
    lm = smtplib.LMTP(a.host, a.lmtp_port)
    lat: list[float] = []
    misses = 0
    try:
        live.start()
        wait_live(b.store, live, timeout=120)
        passes_before = len(live.passes)
        account_id = b.store.get_account(ACCOUNT).id
        query = text(
            "SELECT 1 FROM messages WHERE account_id = :a AND message_id_header = :m LIMIT 1"
        )
        rnd = random.Random(7)
        poll = a.poll_ms / 1000
        with poll_engine.connect() as conn:
            for i in range(a.count):
                mid, raw = probe(i, a.user)
                t0 = time.monotonic()
                lm.sendmail("pusher@lab.test", [a.user], raw)
                deadline = t0 + a.timeout
                while True:
                    seen = conn.execute(query, {"a": account_id, "m": mid}).first() is not None
                    # End the read transaction: the next poll must see a fresh snapshot.
                    conn.rollback()
                    if seen:
                        lat.append((time.monotonic() - t0) * 1000)
                        break
                    if time.monotonic() > deadline:
                        misses += 1
                        break
                    if live.error is not None:
                        raise SystemExit(f"live loop failed: {live.error!r}")
                    time.sleep(poll)
                time.sleep(rnd.uniform(0, 2 * a.gap_ms) / 1000)
        passes = live.passes[passes_before:]
    finally:
        with contextlib.suppress(Exception):
            lm.quit()
        live.shutdown()
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        poll_engine.dispose()
        b.close()
    if not lat:
        raise SystemExit("no delivery was seen in the store")
    return {
        "count": a.count,
        "seen": len(lat),
        "missed": misses,
        "ms_p50": round(statistics.median(lat), 2),
        "ms_p90": round(pct(lat, 90), 2),
        "ms_p99": round(pct(lat, 99), 2),
        "ms_min": round(min(lat), 2),
        "ms_max": round(max(lat), 2),
        "sync_passes": len(passes),
        "sync_pass_ms_p50": round(statistics.median(passes) * 1000, 2) if passes else None,
        "sync_pass_ms_p99": round(pct(passes, 99) * 1000, 2) if passes else None,
    }


def measure_bare_idle(a: argparse.Namespace) -> dict[str, Any]:
    script = Path(a.idle_script) if a.idle_script else shared_dir() / "bench" / "idle_latency.py"
    if not script.is_file():
        raise SystemExit(f"{script} not found: set CORRESPOND_SHARED_DIR or --idle-script")
    # idle_latency.py speaks plain IMAP (LOGIN in clear): the lab's STARTTLS port accepts it.
    cmd = [
        sys.executable,
        str(script),
        "--via",
        "lmtp",
        "--count",
        str(a.count),
        "--gap-ms",
        str(a.gap_ms),
        "--host",
        a.host,
        "--port",
        str(a.idle_port),
        "--lmtp-port",
        str(a.lmtp_port),
        "--user",
        a.user,
        "--password",
        a.password,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"idle_latency.py failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


class _PlainImap:
    """A bare blocking IMAP connection (plain LOGIN, as idle_latency.py uses): for the floors."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")
        self.n = 0
        self.file.readline()

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\r\n")

    def tag(self) -> str:
        self.n += 1
        return f"t{self.n}"

    def until(self, prefix: bytes) -> bytes:
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            if line.startswith(prefix):
                return line

    def cmd(self, command: str) -> None:
        tag = self.tag()
        self.send(f"{tag} {command}")
        done = self.until(tag.encode() + b" ")
        if not done.startswith(tag.encode() + b" OK"):
            raise RuntimeError(done)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def measure_reidle_floor(a: argparse.Namespace) -> dict[str, Any]:
    """A bare client that leaves IDLE after each change (DONE, EXAMINE, IDLE again), as a sync
    engine must when it syncs on the IDLE connection: delivery -> ``* EXISTS``.

    Dovecot delays IDLE notifications by a fixed ~0.5 s counted from the change for a freshly
    started IDLE, whereas a continuous IDLE sees them at a random phase of that timer (0..0.5 s):
    this floor is what any client that re-enters IDLE per change can reach.
    """
    c = _PlainImap(a.host, a.idle_port)
    lm = smtplib.LMTP(a.host, a.lmtp_port)
    rnd = random.Random(7)
    lat: list[float] = []
    try:
        c.cmd(f"LOGIN {a.user} {a.password}")
        c.cmd("EXAMINE INBOX")
        for i in range(a.count):
            tag = c.tag()
            c.send(f"{tag} IDLE")
            c.until(b"+")
            time.sleep(rnd.uniform(0, 2 * a.gap_ms) / 1000)
            _mid, raw = probe(i, a.user)
            t0 = time.monotonic()
            lm.sendmail("pusher@lab.test", [a.user], raw)
            c.until(b"* ")  # the first untagged line in IDLE here is the EXISTS
            lat.append((time.monotonic() - t0) * 1000)
            c.send("DONE")
            c.until(tag.encode() + b" ")
            c.cmd("EXAMINE INBOX")
        c.cmd("LOGOUT")
    finally:
        with contextlib.suppress(Exception):
            lm.quit()
        c.close()
    return {
        "push_ms_p50": round(statistics.median(lat), 2),
        "push_ms_p90": round(pct(lat, 90), 2),
        "push_ms_p99": round(pct(lat, 99), 2),
        "push_ms_min": round(min(lat), 2),
        "push_ms_max": round(max(lat), 2),
    }


def run_latency(a: argparse.Namespace) -> int:
    """Correspond's delivery → stored-row latency beside the bare-IDLE floor, same run."""
    load0 = load_avg()
    start_uid = inbox_uidnext(a)
    try:
        ours = bare = reidle = None
        for which in a.order.split(","):
            if which == "correspond":
                ours = measure_correspond(a)
            elif which == "idle":
                bare = measure_bare_idle(a)
            elif which == "reidle":
                reidle = measure_reidle_floor(a)
    finally:
        expunge_from(a, start_uid)
    load1 = load_avg()
    if ours is None:
        raise SystemExit("--order must include correspond")
    record: dict[str, Any] = {
        "bench": "correspond-latency",
        "database": "postgresql" if a.database_url else "sqlite",
        "user": a.user,
        "count": a.count,
        "gap_ms": a.gap_ms,
        "poll_ms": a.poll_ms,
        "correspond": ours,
        "load_before": load0,
        "load_after": load1,
    }
    print(
        f"correspond delivery->row ({a.count} via LMTP to {a.user}): "
        f"p50={ours['ms_p50']} p90={ours['ms_p90']} p99={ours['ms_p99']} "
        f"max={ours['ms_max']} ms (missed {ours['missed']}, {ours['sync_passes']} sync passes, "
        f"pass p50 {ours['sync_pass_ms_p50']} ms)  load {load0} -> {load1}"
    )
    for name, floor, label in (
        ("bare_idle", bare, "bare IDLE (idle_latency.py, one continuous IDLE)"),
        ("reidle_floor", reidle, "re-IDLE floor (DONE, EXAMINE, IDLE per change)"),
    ):
        if floor is None:
            continue
        suffix = "" if name == "bare_idle" else "_over_reidle"
        record[name] = {
            k: floor[k]
            for k in ("push_ms_p50", "push_ms_p90", "push_ms_p99", "push_ms_min", "push_ms_max")
        }
        record[f"excess{suffix}_ms_p50"] = round(ours["ms_p50"] - floor["push_ms_p50"], 2)
        record[f"excess{suffix}_ms_p99"] = round(ours["ms_p99"] - floor["push_ms_p99"], 2)
        print(
            f"{label}: p50={floor['push_ms_p50']} p90={floor['push_ms_p90']} "
            f"p99={floor['push_ms_p99']} max={floor['push_ms_max']} ms; Correspond's excess: "
            f"p50 {record[f'excess{suffix}_ms_p50']} ms, p99 {record[f'excess{suffix}_ms_p99']} ms"
        )
    emit(record, a.out)
    return 0 if ours["missed"] == 0 else 1


# --- command line ------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("mode", choices=["backfill", "latency"])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=11143)
    ap.add_argument("--security", choices=["starttls", "tls", "plain"], default="starttls")
    ap.add_argument("--allow-plaintext", action="store_true", help="needed with --security plain")
    ap.add_argument(
        "--cert",
        default=str(LAB_CERT) if LAB_CERT.is_file() else None,
        help="server certificate to trust (default: the dovecot-lab one)",
    )
    ap.add_argument("--user", default=None, help="default bench (backfill), u0005 (latency)")
    ap.add_argument("--password", default="benchpass")
    ap.add_argument("--window-days", type=int, default=60)
    ap.add_argument("--folders", help="comma-separated display names (default: all)")
    ap.add_argument("--database-url", help="e.g. postgresql://postgres@127.0.0.1/fresh_db")
    ap.add_argument("--tmp-dir", help="where the temporary data directory goes")
    ap.add_argument("--keep", action="store_true", help="keep the data directory")
    ap.add_argument(
        "--workers",
        type=int,
        default=default_parse_processes(),
        help="parse and write blobs in a process pool of N, as the product does "
        "(default: the product's, one per CPU up to 4; 0: a thread)",
    )
    ap.add_argument("--batch-size", type=int, default=200)
    ap.add_argument("--profile", help="write a cProfile of the backfill to this file")
    ap.add_argument("--out", help="append the JSON lines to this file")
    lat = ap.add_argument_group("latency")
    lat.add_argument("--count", type=int, default=200)
    lat.add_argument("--gap-ms", type=float, default=300)
    lat.add_argument("--poll-ms", type=float, default=5)
    lat.add_argument("--lmtp-port", type=int, default=11024)
    lat.add_argument("--idle-port", type=int, default=11143, help="plain-LOGIN port for idle")
    lat.add_argument("--idle-script", help="default ../shared/bench/idle_latency.py")
    lat.add_argument("--timeout", type=float, default=120, help="give up on one delivery")
    lat.add_argument(
        "--order",
        default="correspond,idle,reidle",
        help="runs, in order: correspond, idle (idle_latency.py), reidle (re-IDLE floor)",
    )
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if a.user is None:
        a.user = "bench" if a.mode == "backfill" else "u0005"
    if a.mode == "backfill":
        return run_backfill(a)
    return run_latency(a)
