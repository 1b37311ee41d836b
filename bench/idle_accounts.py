#!/usr/bin/env python3
"""What N live accounts cost one worker while nothing happens, and how fast new mail lands.

    bench/idle_accounts.py --accounts 1000 --port 11143 --lmtp-port 11024
    bench/idle_accounts.py --accounts 200 --security plain      # beside idle_many.py's floor

Against the bench lab (``../shared/bench/dovecot-lab.sh start`` and ``users N``: users
u0001..uNNNN, password benchpass): a fresh data directory (SQLite there unless
``--database-url``), the real ``correspond worker`` in a child process, started first with no
account (its base RSS, read once it has settled), then N accounts added (STARTTLS against the
lab certificate by default;
``--security plain`` as idle_many.py's bare client; ``tls`` with ``--port 11993``). It waits
until every account is ``live`` and the worker's connection count has settled, lets
``--warmup`` (70) seconds pass (every account's first poll syncs its polled folders in full;
later polls only ask STATUS), then measures:

- ``idle_cpu_pct``: the worker's CPU (all its threads, user + system, from /proc) over
  ``--idle-seconds`` (60) while nothing is delivered, as % of one core;
- ``rss_kb_per_account``: (worker RSS with N live accounts - RSS with none) / N, and the
  worker's sockets per account;
- ``--deliveries`` (200) messages delivered one at a time over LMTP to random accounts, each
  followed by a random gap (0-2x ``--gap-ms``): delivery → row in ``messages`` latency
  p50/p90/p99/max (this process polls the store every 5 ms on its own connection). Dovecot
  alone holds a notification back ~0.5 s: compare with ``idle_latency.py --via lmtp``.

``--connects-per-host`` sets the worker's ``imap_connects_per_host`` (connection attempts at
once to one server; 10000 takes the turns away, to compare).

The many-account limits: raise ``fs.inotify.max_user_instances`` (Dovecot's IDLE needs one
inotify instance per session; 128 per UID by default) and the open-file limit (this script
raises its soft limit to the hard one; the worker inherits it).
Prints one JSON line (``--out FILE`` appends it too).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shutil
import signal
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

from correspond.rules.presets import AccountDraft
from correspond.settings import Settings, load_secret_key
from correspond.store import open_store
from correspond.store.engine import create_store_engine

LAB = Path(os.environ.get("LAB", "/tmp/correspond-bench"))
TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def proc_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def sockets(pid: int) -> int:
    n = 0
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    n += 1
    return n


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))]


def probe(i: int, user: str) -> tuple[str, bytes]:
    mid = f"idle-bench-{os.getpid()}-{time.time_ns()}-{i}@lab.test"
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
    raw = (
        f"From: Pusher <pusher@lab.test>\r\nTo: {user}@lab.test\r\nSubject: probe {i}\r\n"
        f"Message-ID: <{mid}>\r\nDate: {date}"
        f"\r\n\r\nprobe {i}\r\n"
    ).encode()
    return mid, raw


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--accounts", type=int, default=100)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=11143)
    ap.add_argument("--lmtp-port", type=int, default=11024)
    ap.add_argument("--security", choices=["starttls", "tls", "plain"], default="starttls")
    ap.add_argument("--cert", default=str(LAB / "ssl" / "cert.pem"))
    ap.add_argument("--password", default="benchpass")
    ap.add_argument("--database-url", help="a fresh database (no accounts); default SQLite")
    ap.add_argument("--parse-processes", type=int, default=0, help="the worker's parse pool")
    ap.add_argument(
        "--malloc-arenas", type=int, help="the worker's malloc_arenas setting (0: glibc's)"
    )
    ap.add_argument(
        "--connects-per-host",
        type=int,
        help="the worker's imap_connects_per_host (default: the setting's, 16)",
    )
    ap.add_argument("--idle-seconds", type=float, default=60.0)
    ap.add_argument(
        "--warmup",
        type=float,
        default=70.0,
        help="seconds between settling and the idle window: past every account's first poll "
        "(poll_interval_seconds, 60), which syncs each polled folder once in full",
    )
    ap.add_argument("--deliveries", type=int, default=200)
    ap.add_argument("--gap-ms", type=float, default=300.0)
    ap.add_argument("--live-timeout", type=float, default=900.0)
    ap.add_argument("--timeout", type=float, default=30.0, help="per delivery")
    ap.add_argument("--keep", action="store_true", help="keep the data directory")
    ap.add_argument("--out")
    a = ap.parse_args()

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    data_dir = Path(tempfile.mkdtemp(prefix="correspond-idle-"))
    settings = Settings(data_dir=data_dir, database_url=a.database_url)
    store = open_store(settings)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRESPOND_")}
    env["CORRESPOND_DATA_DIR"] = str(data_dir)
    env["CORRESPOND_DATABASE_URL"] = settings.resolved_database_url
    env["CORRESPOND_SECRET_KEY"] = load_secret_key(settings).decode()
    if a.malloc_arenas is not None:
        env["CORRESPOND_MALLOC_ARENAS"] = str(a.malloc_arenas)
    if a.connects_per_host is not None:
        env["CORRESPOND_IMAP_CONNECTS_PER_HOST"] = str(a.connects_per_host)
    log_path = data_dir / "worker.log"
    cmd = [sys.executable, "-m", "correspond.cli", "worker", "--parse-processes"]
    cmd.append(str(a.parse_processes))
    log = open(log_path, "wb")  # noqa: SIM115 (open for the worker's lifetime)
    worker = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    result: dict[str, Any] = {
        "accounts": a.accounts,
        "security": a.security,
        "malloc_arenas": a.malloc_arenas,
        "connects_per_host": a.connects_per_host,
    }
    poll_engine = create_store_engine(settings.resolved_database_url)
    try:
        time.sleep(5.0)
        if worker.poll() is not None:
            raise SystemExit(f"the worker exited: {log_path.read_text()[-2000:]}")
        # The worker is still starting at 5 s (imports, its first lease round): on a loaded
        # machine its RSS with no account kept growing for another 5-10 s, and that growth was
        # charged to the accounts. The base is read once the RSS has settled.
        result["worker_rss_base_5s_mb"] = round(proc_rss_kb(worker.pid) / 1024, 1)
        base_rss, steady, t_base = proc_rss_kb(worker.pid), 0, time.monotonic()
        while steady < 5 and time.monotonic() - t_base < 60:
            time.sleep(1.0)
            now_rss = proc_rss_kb(worker.pid)
            steady = steady + 1 if abs(now_rss - base_rss) < 256 else 0
            base_rss = now_rss
        result["worker_rss_base_s"] = round(5 + time.monotonic() - t_base, 1)
        cert = Path(a.cert).read_text() if a.security != "plain" else None
        names = [f"u{i:04d}" for i in range(1, a.accounts + 1)]
        t0 = time.monotonic()
        for name in names:
            store.add_account(
                AccountDraft(
                    name=name,
                    preset="generic",
                    email=f"{name}@lab.test",
                    username=name,
                    imap_host=a.host,
                    imap_port=a.port,
                    imap_security=a.security,
                    smtp_host=None,
                    smtp_port=587,
                    smtp_security="starttls",
                    allow_plaintext=a.security == "plain",
                    trusted_cert_pem=cert,
                    window_days=60,
                ),
                a.password,
            )
        result["add_s"] = round(time.monotonic() - t0, 1)
        states: dict[str, int] = {}
        deadline = time.monotonic() + a.live_timeout
        while time.monotonic() < deadline:
            with poll_engine.connect() as conn:
                rows = conn.execute(
                    text("SELECT state, count(*) FROM accounts GROUP BY state")
                ).all()
            states = {str(s): int(n) for s, n in rows}
            if states.get("live", 0) == a.accounts:
                break
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited: {log_path.read_text()[-2000:]}")
            time.sleep(1.0)
        else:
            raise SystemExit(f"not every account went live in time: {states}")
        result["all_live_s"] = round(time.monotonic() - t0, 1)
        # The IDLE connections open as each first pass ends: wait until the count settles.
        last, stable_since = -1, time.monotonic()
        while time.monotonic() - stable_since < 5.0:
            n = sockets(worker.pid)
            if n != last:
                last, stable_since = n, time.monotonic()
            time.sleep(0.5)
        result["worker_sockets_settled"] = last
        time.sleep(a.warmup)

        cpu0, w0 = proc_cpu_seconds(worker.pid), time.monotonic()
        kids0 = sum(proc_cpu_seconds(k) for k in children(worker.pid))
        time.sleep(a.idle_seconds)
        cpu1, w1 = proc_cpu_seconds(worker.pid), time.monotonic()
        kids1 = sum(proc_cpu_seconds(k) for k in children(worker.pid))
        result["idle_cpu_pct"] = round(100 * (cpu1 - cpu0) / (w1 - w0), 2)
        result["idle_cpu_pct_children"] = round(100 * (kids1 - kids0) / (w1 - w0), 2)
        rss = proc_rss_kb(worker.pid)
        # Counted again: helper connections opened during the first passes close when they
        # end (before: spare sync connections, after 60 s without new mail).
        result["worker_sockets"] = sockets(worker.pid)
        result["sockets_per_account"] = round(result["worker_sockets"] / a.accounts, 2)
        result["worker_rss_base_mb"] = round(base_rss / 1024, 1)
        result["worker_rss_mb"] = round(rss / 1024, 1)
        result["rss_kb_per_account"] = round((rss - base_rss) / a.accounts, 1)
        result["rss_kb_per_account_5s_base"] = round(
            (rss - result["worker_rss_base_5s_mb"] * 1024) / a.accounts, 1
        )
        result["loadavg"] = os.getloadavg()

        lat: list[float] = []
        misses = 0
        rnd = random.Random(7)
        lm = smtplib.LMTP(a.host, a.lmtp_port)
        query = text("SELECT 1 FROM messages WHERE message_id_header = :m LIMIT 1")
        cpu2, w2 = proc_cpu_seconds(worker.pid), time.monotonic()
        try:
            with poll_engine.connect() as conn:
                for i in range(a.deliveries):
                    user = rnd.choice(names)
                    mid, raw = probe(i, user)
                    start = time.monotonic()
                    lm.sendmail("pusher@lab.test", [user], raw)
                    while True:
                        seen = conn.execute(query, {"m": mid}).first() is not None
                        conn.rollback()  # a fresh snapshot for the next look
                        if seen:
                            lat.append((time.monotonic() - start) * 1000)
                            break
                        if time.monotonic() - start > a.timeout:
                            misses += 1
                            break
                        time.sleep(0.005)
                    time.sleep(rnd.uniform(0, 2 * a.gap_ms) / 1000)
        finally:
            with contextlib.suppress(Exception):
                lm.quit()
        cpu3, w3 = proc_cpu_seconds(worker.pid), time.monotonic()
        result["deliveries"] = a.deliveries
        result["missed"] = misses
        if lat:
            result["ms_p50"] = round(statistics.median(lat), 1)
            result["ms_p90"] = round(pct(lat, 90), 1)
            result["ms_p99"] = round(pct(lat, 99), 1)
            result["ms_max"] = round(max(lat), 1)
        result["delivery_cpu_pct"] = round(100 * (cpu3 - cpu2) / (w3 - w2), 2)
        result["worker_rss_after_mb"] = round(proc_rss_kb(worker.pid) / 1024, 1)
    finally:
        t = time.monotonic()
        worker.send_signal(signal.SIGINT)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        result["shutdown_s"] = round(time.monotonic() - t, 1)
        log.close()
        poll_engine.dispose()
        store.close()
        if not a.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            result["data_dir"] = str(data_dir)
    line = json.dumps(result)
    print(line)
    if a.out:
        with open(a.out, "a") as fh:
            fh.write(line + "\n")
    return 0 if not result.get("missed") else 1


if __name__ == "__main__":
    sys.exit(main())
