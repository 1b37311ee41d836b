"""Cost of the notification fan-out over a burst of new messages (a backfill's or a busy
mailbox's), on SQLite or PostgreSQL.

Fills N synthetic messages (``testing.synthetic``: no IMAP, no blobs) into an account whose
owner is a user, half of them "new" (arrived after the account was added, so notified), then
runs fan-out passes of 500 as the API's hub does and reports messages per second, and the cost
of an idle pass (nothing new, the seen list full: what every wake-up costs while ids settle).
With ``--team N`` the account is shared with a team of N more users (the teams rule: each
new message notifies N + 1 users, in one INSERT ... SELECT per pass).

    .venv/bin/python bench/fanout_bench.py --count 20000 [--team 20] [--url postgresql://...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.fernet import Fernet

from correspond.auth import AuthService
from correspond.settings import Settings
from correspond.store import open_store
from correspond.store.notifications import NotificationStore
from correspond.store.teams import TeamStore
from correspond.testing.postgres import postgres_server, temporary_database
from correspond.testing.synthetic import fill_messages, make_account_with_folders


def run(url: str, count: int, data_dir: Path, team: int = 0) -> None:
    settings = Settings(
        data_dir=data_dir,
        secret_key=Fernet.generate_key().decode(),
        database_url=url,
        password_hash_time_cost=1,
        password_hash_memory_kib=1024,
    )
    store = open_store(settings)
    try:
        auth = AuthService(store, settings)
        user, _ = auth.create_user("owner@example.test", None, admin=False)
        account_id, folders = make_account_with_folders(store.engine, "bench")
        auth.users.set_account_owner("bench", user.id)
        if team:
            teams = TeamStore(store.engine)
            sales = teams.create("sales")
            teams.add_member(sales.id, user.id)
            for n in range(team):
                mate, _ = auth.create_user(f"mate{n}@example.test", None, admin=False)
                teams.add_member(sales.id, mate.id)
            teams.set_account_sharing("bench", sharing="team")
        # Half before the account was added (a backfill: looked at, not told), half after.
        fill_messages(
            store.engine,
            account_id,
            folders,
            count,
            newest=datetime.now(UTC) + timedelta(minutes=count // 2),
        )
        notes = NotificationStore(store.engine)
        started = time.perf_counter()
        passes = told = 0
        while True:
            result = notes.fan_out(rescan=False)
            passes += 1
            told += result.notified
            if not result.more:
                break
        took = time.perf_counter() - started
        idle: list[float] = []
        for rescan in (False, True):
            for _ in range(20):
                t = time.perf_counter()
                notes.fan_out(rescan=rescan)
                idle.append((time.perf_counter() - t) * 1000)
            print(
                f"  idle pass ({'rescan' if rescan else 'cheap'}) median "
                f"{statistics.median(idle):.1f} ms"
            )
            idle.clear()
        print(
            f"{store.dialect}: {count} messages in {passes} passes, {took:.2f} s "
            f"({count / took:,.0f} msgs/s), {told} notified ({team + 1} users per message, "
            f"{told / took:,.0f} notifications/s)"
        )
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--team", type=int, default=0, help="teammates the account is shared with")
    parser.add_argument("--url", default=None, help="PostgreSQL server URL (default: SQLite)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.url:
            with postgres_server() as server, temporary_database(server) as db:
                run(db, args.count, Path(tmp), args.team)
        else:
            run(f"sqlite:///{tmp}/bench.db", args.count, Path(tmp), args.team)
    print(f"load average: {Path('/proc/loadavg').read_text().split()[:3]}")


if __name__ == "__main__":
    main()
