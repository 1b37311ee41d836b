"""What one ``GET /accounts/{name}/messages`` costs: statements, round trips, dead connections.

A list request used to read the token and its user in one ORM session, the account's owner in
another, then the page (three statements, each in a BEGIN ... COMMIT on PostgreSQL, after a
pre-ping of the pooled connection). Now the caller and the owner of what the path names are one
statement, the page another; on PostgreSQL both run in autocommit, with no pre-ping, and a
pooled connection the server dropped is read again on a new one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, event, text, update
from sqlalchemy.pool import NullPool
from tests.helpers import authed_client, user_client

from correspond.api import create_app
from correspond.api.security import ViewAccess
from correspond.settings import Settings
from correspond.store import Store
from correspond.store.tables import ApiTokenRow, utcnow
from correspond.testing.synthetic import fill_messages, make_account_with_folders


@pytest.fixture
def app(store: Store, store_settings: Settings) -> FastAPI:
    account_id, folders = make_account_with_folders(store.engine, "synthetic")
    fill_messages(store.engine, account_id, folders, 200, chunk=200)
    return create_app(store_settings, store=store)


@contextlib.contextmanager
def _statements(engine: Engine) -> Iterator[list[tuple[str, bool | None]]]:
    """Each statement run meanwhile, and whether its connection was in autocommit (psycopg's
    flag; None on SQLite)."""
    seen: list[tuple[str, bool | None]] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        dbapi = conn.connection.dbapi_connection
        autocommit = getattr(dbapi, "autocommit", None) if conn.dialect.name != "sqlite" else None
        seen.append((" ".join(statement.split()), autocommit))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_a_list_request_is_two_statements_sign_in_with_visibility_then_the_page(
    app: FastAPI, store: Store
) -> None:
    admin = authed_client(app)
    member = user_client(app, "member@example.test")
    for client in (admin, member):
        client.get("/accounts/synthetic/messages")  # first use: last_used_at is written
    with _statements(store.engine) as seen:
        reply = admin.get("/accounts/synthetic/messages", params={"limit": 20})
    assert reply.status_code == 200 and len(reply.json()["messages"]) == 20
    assert len(seen) == 2, seen
    caller, page = (statement for statement, _ in seen)
    assert "api_tokens" in caller and "accounts" in caller and "FROM messages" not in caller
    assert "FROM messages" in page and "api_tokens" not in page
    if store.engine.dialect.name == "postgresql":
        # Autocommit: no BEGIN before each read and no ROLLBACK after it (round trips).
        assert all(autocommit for _, autocommit in seen), seen
    # No such account: refused after the one statement.
    with _statements(store.engine) as seen:
        missing = admin.get("/accounts/no-such/messages")
    assert missing.status_code == 404
    assert len(seen) == 1 and "api_tokens" in seen[0][0], seen
    # Another user's private account: not theirs, so the teams rule is asked (one more
    # statement, never the page), and it answers as if the account did not exist.
    with _statements(store.engine) as seen:
        hidden = member.get("/accounts/synthetic/messages")
    assert hidden.status_code == 404
    assert hidden.json() == missing.json() | {"detail": "no account named 'synthetic'"}
    assert len(seen) == 2 and "api_tokens" in seen[0][0], seen
    assert all("FROM messages" not in s for s, _ in seen), seen


def test_last_used_at_is_written_once_a_minute_not_per_request(app: FastAPI, store: Store) -> None:
    admin = authed_client(app)
    admin.get("/accounts/synthetic/messages")
    with _statements(store.engine) as seen:
        for _ in range(3):
            assert admin.get("/accounts/synthetic/messages").status_code == 200
    assert not [s for s, _ in seen if s.startswith("UPDATE")], seen
    # A minute later the next request notes the use again (its own short transaction).
    with store.engine.begin() as conn:
        conn.execute(update(ApiTokenRow).values(last_used_at=utcnow() - timedelta(seconds=61)))
    with _statements(store.engine) as seen:
        assert admin.get("/accounts/synthetic/messages").status_code == 200
    assert len([s for s, _ in seen if s.startswith("UPDATE api_tokens")]) == 1, seen
    with store.engine.connect() as conn:
        last = conn.execute(text("SELECT max(last_used_at) FROM api_tokens")).scalar()
    assert last is not None


def test_a_revoked_token_and_a_disabled_user_are_refused_on_the_next_request(
    app: FastAPI, store: Store
) -> None:
    """Nothing about the caller is cached between requests."""
    admin = authed_client(app)
    member = user_client(app, "member@example.test", admin=True)
    assert member.get("/accounts/synthetic/messages").status_code == 200
    app.state.auth.users.set_disabled("member@example.test", True)
    assert member.get("/accounts/synthetic/messages").status_code == 401
    assert admin.get("/accounts/synthetic/messages").status_code == 200
    with store.engine.begin() as conn:
        conn.execute(update(ApiTokenRow).values(revoked_at=utcnow()))
    assert admin.get("/accounts/synthetic/messages").status_code == 401


@pytest.mark.postgres
@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_postgres_reads_use_no_pre_ping_and_survive_a_dropped_connection(
    app: FastAPI, store: Store
) -> None:
    """Without a pre-ping a dead pooled connection fails its first statement: the read is run
    once more on a new connection, and the request still answers."""
    assert not store.engine.pool._pre_ping  # a round trip on every checkout
    admin = authed_client(app)
    assert admin.get("/accounts/synthetic/messages").status_code == 200
    with store.engine.connect() as conn:
        pooled = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    # Every connection in the store's pool killed, from outside the pool.
    outside = create_engine(store.engine.url, poolclass=NullPool)
    with outside.connect() as killer:
        killed = killer.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar()
    outside.dispose()
    assert killed
    with _statements(store.engine) as seen:
        reply = admin.get("/accounts/synthetic/messages")
    assert reply.status_code == 200 and reply.json()["messages"]
    # The caller statement twice (the first on the dead connection), then the page.
    assert len(seen) == 3 and seen[0][0] == seen[1][0], seen
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != pooled


@pytest.mark.postgres
@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_a_postgres_list_request_is_two_round_trips(
    app: FastAPI, store: Store, tmp_path: Path
) -> None:
    """Counted in libpq's own trace of what the client sends: one Sync per statement, and no
    pre-ping (``;``), BEGIN, COMMIT or ROLLBACK. It was twelve: each of three statements
    wrapped in a ping, BEGIN and COMMIT/ROLLBACK."""
    admin = authed_client(app)
    trace_path = tmp_path / "libpq.trace"
    with trace_path.open("w") as trace:
        store.engine.dispose()

        def traced(dbapi: Any, _record: Any) -> None:
            dbapi.pgconn.trace(trace.fileno())
            dbapi.pgconn.set_trace_flags(1 | 2)  # no timestamps, stable output

        event.listen(store.engine, "connect", traced)
        try:
            for _ in range(2):  # the pool filled, the token's first use noted
                assert admin.get("/accounts/synthetic/messages").status_code == 200
            trace.flush()
            start = trace_path.stat().st_size
            assert admin.get("/accounts/synthetic/messages").status_code == 200
            trace.flush()
        finally:
            event.remove(store.engine, "connect", traced)
            store.engine.dispose()  # no traced connection outlives the file
    sent = [
        line.split("\t")
        for line in trace_path.read_text()[start:].splitlines()
        if line.startswith("F\t")
    ]
    kinds = [fields[2].split(" ")[0] for fields in sent]
    assert kinds.count("Sync") == 2 and "Query" not in kinds, sent


def test_the_list_route_is_tried_first_and_the_docs_keep_their_order(app: FastAPI) -> None:
    """The router tries routes in turn: the list, the request clients repeat, is the first
    API route (not the ~20 others' patterns first); /docs still shows its sections in the
    order of the routers in create_app."""
    spec = app.openapi()  # its paths in the order the router tries them
    assert next(iter(spec["paths"])) == "/accounts/{name}/messages"
    tags = [tag["name"] for tag in spec["tags"]]
    assert tags[:7] == ["health", "session", "tokens", "accounts", "sync", "folders", "messages"]


def test_view_access_without_authorize_fails_closed() -> None:
    """view_access reads what authorize left (it no longer depends on it, which made FastAPI
    solve authorize's tree twice): a route where authorize did not run gets an error, never
    access."""
    router = APIRouter()

    @router.get("/accounts/{name}/peek")
    async def peek(name: str, access: ViewAccess) -> dict[str, str]:
        return {"level": access.level}

    bare = FastAPI()
    bare.include_router(router)  # no Depends(authorize)
    with TestClient(bare, raise_server_exceptions=False) as client:
        reply = client.get("/accounts/anything/peek")
    assert reply.status_code == 500 and "level" not in reply.text
