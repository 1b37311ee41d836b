"""Message list latency at scale: fill a store with N synthetic messages, then time pages.

    .venv/bin/python bench/list_bench.py --count 1000000                      # SQLite, temp dir
    .venv/bin/python bench/list_bench.py --count 1000000 \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/a_fresh_db

The fill writes rows straight into the store's tables (``correspond.testing.synthetic``: no
IMAP, no parsing), then ANALYZE. Pages are timed through ``MailboxReader.list_messages``, the
service behind ``GET /accounts/{name}/messages`` and ``correspond messages list``, then the
first page through the HTTP app, signed in as an admin with an API token: in process (FastAPI
TestClient) and as a user sees it (a real uvicorn in another process, an HTTP client with
keep-alive), with the app's own time per request beside the client's. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
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
from correspond.testing.synthetic import (
    fill_messages,
    make_account_with_folders,
    skip_background_indexing,
)

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
    ap.add_argument(
        "--http-repeat", type=int, default=1000, help="timed requests per HTTP case (1,000)"
    )
    ap.add_argument("--only-http", action="store_true", help="skip the store-level cases")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the uvicorn child
    args = ap.parse_args(argv)

    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="correspond-list-bench-"))
    settings = Settings(
        data_dir=data_dir,
        database_url=args.database_url,
        secret_key=os.environ.get("LIST_BENCH_KEY") or Fernet.generate_key().decode("ascii"),
    )
    if args.serve:
        return _serve(settings, args.serve)
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
        # The app's search indexer would otherwise spend the run indexing the whole fill: time
        # the list as in a deployment whose background work has caught up.
        skip_background_indexing(store.engine)
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
            if args.only_http:
                break
            page = fn()
            record[name] = {**_time(fn, args.repeat), "items": len(page.items)}
            print(f"{name:20} {record[name]}", flush=True)
        token = _token(settings, store)
        record["asgi_first_page"] = _asgi(settings, store, token, lim, args.http_repeat)
        print(f"{'asgi_first_page':20} {record['asgi_first_page']}", flush=True)
        record["http_first_page"] = _http(settings, store, token, lim, args.http_repeat)
        print(f"{'http_first_page':20} {record['http_first_page']}", flush=True)
        record["uvicorn_first_page"] = _uvicorn(args, settings, token, lim, args.http_repeat)
        print(f"{'uvicorn_first_page':20} {record['uvicorn_first_page']}", flush=True)
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


def _token(settings: Settings, store: Any) -> str:
    """An API token of the admin ``bench-admin@example.test`` (made when missing)."""
    from correspond.auth import AuthService

    auth = AuthService(store, settings)
    try:
        user = auth.users.get_user("bench-admin@example.test")
    except NotFound:
        user, _ = auth.create_user("bench-admin@example.test", None, admin=True)
    return auth.create_token(user, "list-bench").token


def _http(settings: Settings, store: Any, token: str, limit: int, repeat: int) -> dict[str, Any]:
    """The first page through the app in this process (TestClient on a host name the app
    answers to); CPU is the whole process's: the app's threads and the client's own work."""
    from fastapi.testclient import TestClient

    from correspond.api import create_app

    app = create_app(settings, store=store)
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


def _asgi(settings: Settings, store: Any, token: str, limit: int, repeat: int) -> dict[str, Any]:
    """The first page with the app called as an ASGI callable in this process (its thread
    pool, no server, no HTTP client, no lifespan tasks): the app's own cost, the steadiest
    figure on a busy machine. CPU is the whole process's, wall and CPU timed per request."""
    import asyncio

    from correspond.api import create_app

    app = create_app(settings, store=store)
    path = f"/accounts/{ACCOUNT}/messages"
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": f"limit={limit}".encode(),
        "root_path": "",
        "headers": [(b"host", b"localhost"), (b"authorization", f"Bearer {token}".encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8025),
    }

    async def request() -> bytes:
        sent: list[Any] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Any) -> None:
            sent.append(message)

        await app({**scope, "state": {}}, receive, send)
        if sent[0]["status"] != 200:
            raise RuntimeError(f"status {sent[0]['status']}: {sent[-1].get('body')!r}")
        return b"".join(m.get("body", b"") for m in sent[1:])

    async def run() -> dict[str, Any]:
        items = len(json.loads(await request())["messages"])  # warm
        samples, cpu = [], []
        for _ in range(repeat):
            c0, t0 = time.process_time(), time.perf_counter()
            await request()
            samples.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        return {
            **_ms(samples),
            "cpu_p50_ms": round(statistics.median(cpu) * 1000, 2),
            "items": items,
        }

    return asyncio.run(run())


def _serve(settings: Settings, port: int) -> int:
    """The uvicorn child: the app, each response carrying the app's own wall time for the
    request (``x-app-ms``, from the first byte of the request to the last of the response,
    uvicorn's parsing and socket work excluded)."""
    import uvicorn

    from correspond.api import create_app

    app = create_app(settings)

    async def timed(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        t0 = time.perf_counter()
        start: dict[str, Any] | None = None

        async def send_timed(message: Any) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message  # held back until the body is ready: the header carries its time
                return
            if message["type"] == "http.response.body" and not message.get("more_body"):
                assert start is not None
                ms = f"{(time.perf_counter() - t0) * 1000:.3f}".encode()
                await send({**start, "headers": [*start["headers"], (b"x-app-ms", ms)]})
            await send(message)

        await app(scope, receive, send_timed)

    uvicorn.run(timed, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    return 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _uvicorn(
    args: argparse.Namespace, settings: Settings, token: str, limit: int, repeat: int
) -> dict[str, Any]:
    """The first page as a user sees it: a real uvicorn in another process (one worker,
    the app as ``correspond serve`` builds it), this process an HTTP/1.1 client with
    keep-alive. Client wall time per request, and the app's own (``app_*``, from the
    ``x-app-ms`` header); ``server_cpu_ms`` is the server process's CPU per request."""
    import httpx2

    port = _free_port()
    cmd = [sys.executable, __file__, "--data-dir", str(settings.data_dir), "--serve", str(port)]
    if args.database_url:
        cmd += ["--database-url", args.database_url]
    env = {**os.environ, "LIST_BENCH_KEY": settings.secret_key or ""}
    child = subprocess.Popen(cmd, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {token}", "Host": "localhost"}
        url = f"/accounts/{ACCOUNT}/messages"
        with httpx2.Client(base_url=base, headers=headers, timeout=30) as client:
            for _ in range(300):  # up in a few seconds (migrations are a no-op)
                try:
                    client.get("/health")
                    break
                except httpx2.TransportError:
                    time.sleep(0.1)
            first = client.get(url, params={"limit": limit})
            first.raise_for_status()
            app_ms: list[float] = []

            def get() -> None:
                reply = client.get(url, params={"limit": limit})
                reply.raise_for_status()
                app_ms.append(float(reply.headers["x-app-ms"]) / 1000)

            cpu0 = _child_cpu(child.pid)
            timed = _time(get, repeat)
            server_cpu = (_child_cpu(child.pid) - cpu0) / (repeat + 1)
        return {
            **timed,
            **{f"app_{k}": v for k, v in _ms(app_ms[1:]).items()},
            "server_cpu_ms": round(server_cpu * 1000, 2),
            "items": len(first.json()["messages"]),
        }
    finally:
        child.terminate()
        child.wait(timeout=30)


def _child_cpu(pid: int) -> float:
    """Seconds of CPU (user + system) process ``pid`` has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    sys.exit(main())
