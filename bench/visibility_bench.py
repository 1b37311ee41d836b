"""What the one visibility rule costs per request: the lookups ``authorize`` makes for every
path parameter (account, message, thread) and the account list, through
``store.visibility.visible_accounts``, beside the owner-only lookup it replaced (the peer: a
plain ``accounts.owner_id`` read joined to the message or thread), in the same run.

    .venv/bin/python bench/visibility_bench.py                 # SQLite, temp dir
    .venv/bin/python bench/visibility_bench.py --postgres      # a temporary PostgreSQL database
                                                               # (CORRESPOND_TEST_POSTGRES_URL)

The world: ``--users`` members (plus one admin) in ``--teams`` teams of ten, a second team for
every tenth user; one account per user with sharing private/team/metadata in turn, every tenth
a team inbox; ``--messages`` synthetic messages in the account the timed member reads through
a teammate's metadata sharing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from sqlalchemy import select, text

from correspond.settings import Settings
from correspond.store import Store, open_store
from correspond.store.message_tables import MessageRow, ThreadRow
from correspond.store.tables import AccountRow, TeamMemberRow, TeamRow, UserRow
from correspond.store.teams import TeamStore
from correspond.store.users import User, UserStore
from correspond.testing.synthetic import fill_messages, make_account_with_folders


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"p50_ms": round(statistics.median(ordered) * 1000, 3), "p99_ms": round(p99 * 1000, 3)}


def _time(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return _ms(samples)


@contextmanager
def _database(postgres: bool) -> Iterator[str]:
    if not postgres:
        with tempfile.TemporaryDirectory(prefix="correspond-vis-bench-") as tmp:
            yield f"sqlite:///{Path(tmp) / 'store.db'}"
        return
    from correspond.testing.postgres import postgres_server, temporary_database

    with postgres_server() as server, temporary_database(server, "correspond_vis") as url:
        yield url


def _world(store: Store, users_n: int, messages: int) -> tuple[User, User, str, int, int]:
    """The admin, the timed member, the account they read, a message id and a thread id."""
    engine = store.engine
    with engine.begin() as conn:
        conn.execute(
            UserRow.__table__.insert(),  # type: ignore[attr-defined]
            [
                {
                    "email": f"u{i}@example.test",
                    "email_key": f"u{i}@example.test",
                    "display_name": "",
                    "role": "admin" if i == 0 else "member",
                    "disabled": False,
                    "thread_order": "oldest_first",
                    "created_at": time_now(),
                }
                for i in range(users_n + 1)
            ],
        )
        ids = [r[0] for r in conn.execute(select(UserRow.id).order_by(UserRow.id))]
        teams_n = max(1, users_n // 10)
        conn.execute(
            TeamRow.__table__.insert(),  # type: ignore[attr-defined]
            [
                {"name": f"T{t}", "name_key": f"t{t}", "created_at": time_now()}
                for t in range(teams_n)
            ],
        )
        team_ids = [r[0] for r in conn.execute(select(TeamRow.id).order_by(TeamRow.id))]
        members = {(team_ids[(i - 1) // 10 % teams_n], ids[i]) for i in range(1, users_n + 1)}
        members |= {(team_ids[(i // 10 + 1) % teams_n], ids[i]) for i in range(10, users_n, 10)}
        conn.execute(
            TeamMemberRow.__table__.insert(),  # type: ignore[attr-defined]
            [{"team_id": t, "user_id": u, "created_at": time_now()} for t, u in members],
        )
    read_account = "acct-2"  # owned by u2, shared as metadata with u1's team
    for i in range(1, users_n + 1):
        account_id, folders = make_account_with_folders(engine, f"acct-{i}")
        sharing = ("private", "team", "metadata")[i % 3]
        with engine.begin() as conn:
            conn.execute(
                AccountRow.__table__.update()  # type: ignore[attr-defined]
                .where(AccountRow.id == account_id)
                .values(
                    owner_id=ids[i],
                    sharing=sharing,
                    team_id=team_ids[i % teams_n] if i % 10 == 0 else None,
                )
            )
        if f"acct-{i}" == read_account:
            fill_messages(engine, account_id, folders, messages)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("ANALYZE"))
        message_id = conn.scalar(select(MessageRow.id).order_by(MessageRow.id.desc()).limit(1))
        thread_id = conn.scalar(select(ThreadRow.id).order_by(ThreadRow.id.desc()).limit(1))
    users = UserStore(engine)
    return (
        users.get_user("u0@example.test"),
        users.get_user("u1@example.test"),
        read_account,
        int(message_id or 0),
        int(thread_id or 0),
    )


def time_now() -> Any:
    from correspond.store.tables import utcnow

    return utcnow()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--postgres", action="store_true")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=500)
    args = ap.parse_args(argv)
    with _database(args.postgres) as url:
        data = Path(tempfile.mkdtemp(prefix="correspond-vis-bench-data-"))
        settings = Settings(
            data_dir=data, secret_key=Fernet.generate_key().decode(), database_url=url
        )
        store = open_store(settings)
        try:
            admin, member, account, message_id, thread_id = _world(store, args.users, args.messages)
            assert TeamStore(store.engine).count() >= 1
            users = UserStore(store.engine)
            level = users.access_to_account(member, account).level
            assert level == "metadata", level

            def peer_message() -> None:
                with store.engine.connect() as conn:
                    conn.execute(
                        select(AccountRow.owner_id)
                        .join(MessageRow, MessageRow.account_id == AccountRow.id)
                        .where(MessageRow.id == message_id)
                    ).one()

            def peer_account() -> None:
                with store.engine.connect() as conn:
                    conn.execute(
                        select(AccountRow.owner_id).where(AccountRow.name == account)
                    ).one()

            cases = {
                "peer_owner_of_account": peer_account,
                "account_member": lambda: users.access_to_account(member, account),
                "account_admin": lambda: users.access_to_account(admin, account),
                "peer_owner_of_message": peer_message,
                "message_member": lambda: users.access_to_message(member, message_id),
                "message_admin": lambda: users.access_to_message(admin, message_id),
                "thread_member": lambda: users.access_to_thread(member, thread_id),
                "list_accounts_member": lambda: store.list_accounts(viewer=member),
            }
            results = {name: _time(fn, args.repeat) for name, fn in cases.items()}
            results["list_accounts_admin"] = _time(
                lambda: store.list_accounts(viewer=admin), max(10, args.repeat // 20)
            )
            visible = len(store.list_accounts(viewer=member))
        finally:
            store.close()
    out = {
        "backend": "postgresql" if args.postgres else "sqlite",
        "users": args.users,
        "messages": args.messages,
        "member_sees_accounts": visible,
        "loadavg": os.getloadavg(),
        **results,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
