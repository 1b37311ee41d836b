"""The message list is served by indexes in its order, on SQLite and PostgreSQL.

Before migration 0006 every list read and sorted all messages of the account (170 ms for
``limit=1`` at 23,000 messages). These tests read the query plans of the statements the list
actually issues, and check pages against a brute-force reading of the same rows.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, inspect, select, text
from sqlalchemy.orm import Session

from correspond.errors import NotFound
from correspond.settings import Settings
from correspond.store import Store
from correspond.store.engine import create_store_engine, migrate
from correspond.store.message_queries import MessageQueries
from correspond.store.message_tables import MessageLocationRow, MessageRow
from correspond.store.messages import (
    FolderCheckpointUpdate,
    IncomingMessage,
    MessageData,
    MessageStore,
)
from correspond.sync.engine import default_thread_chooser
from correspond.testing.postgres import PostgresServer, temporary_database
from correspond.testing.synthetic import fill_messages, make_account_with_folders

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
NEWEST = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _fill(store: Store, count: int) -> tuple[int, dict[str, int]]:
    account_id, folders = make_account_with_folders(store.engine, "synthetic")
    fill_messages(store.engine, account_id, folders, count, newest=NEWEST, chunk=1000)
    return account_id, folders


def _analyze(engine: Engine) -> None:
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    else:
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))


@contextlib.contextmanager
def _recorded(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """Every SELECT on the message tables run meanwhile, with its parameters."""
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        reads = statement.lstrip().upper().startswith("SELECT")
        if reads and ("FROM messages" in statement or "message_locations" in statement):
            seen.append((statement, params))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _plan(engine: Engine, statement: str, params: Any) -> tuple[set[str], set[str], str]:
    """(indexes used, node kinds, the plan as text) of one recorded statement."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params).all()
            details = [str(r[-1]) for r in rows]
            used = {w for d in details for w in d.replace("(", " ").split() if w.startswith("ix_")}
            kinds = {"Sort" for d in details if "TEMP B-TREE" in d}
            kinds |= {"Seq Scan" for d in details if d.startswith("SCAN ")}
            return used, kinds, "\n".join(details)
        raw = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, params).scalar()
    plan = raw if isinstance(raw, list) else json.loads(raw)
    used, kinds = set(), set()
    stack = [plan[0]["Plan"]]
    while stack:
        node = stack.pop()
        if node.get("Subplan Name", "").startswith("hashed"):
            # A hashed subplan reads its whole table, whatever the LIMIT above it (an EXISTS
            # for has_attachments did: 95 ms at 1,000,000 messages).
            kinds.add("Seq Scan")
        if node["Node Type"] == "Seq Scan" and node.get("Relation Name") == "attachments":
            # The per-row has_attachments lookup (LIMIT 1): on a table this small PostgreSQL
            # rightly scans it; at scale it uses ix_attachments_message (bench/list_bench.py).
            kinds.add("per-row scan of attachments")
        else:
            kinds.add(node["Node Type"])
        if "Index Name" in node:
            used.add(node["Index Name"])
        stack.extend(node.get("Plans", ()))
    return used, kinds, json.dumps(plan, indent=1)


def _assert_served_by(
    engine: Engine, recorded: list[tuple[str, Any]], index: str, *, bounded: bool
) -> None:
    """Each list statement reads ``index``, never a whole table; and never sorts, unless it is a
    search, whose range the index bounds to ``search_scan_rows`` entries (PostgreSQL may then
    prefer a bitmap scan of the range and a sort of at most that many rows)."""
    lists = recorded
    assert lists, "no list statement was recorded"
    for statement, params in lists:
        used, kinds, plan = _plan(engine, statement, params)
        assert index in used, f"{index} not used:\n{statement}\n{plan}"
        assert "Seq Scan" not in kinds, f"a table scan:\n{plan}"
        if not bounded:
            assert "Sort" not in kinds, f"a sort:\n{plan}"


CALLS = ("account", "account_deep", "folder", "folder_deep", "thread", "search", "folder_in_thread")


def test_list_queries_are_served_by_the_list_order_indexes(store: Store) -> None:
    account_id, folders = _fill(store, 3000)
    _analyze(store.engine)
    queries = MessageQueries(store.engine, search_scan_rows=500)
    first = queries.list_messages(account_id, limit=50)
    assert first.next_cursor is not None and len(first.items) == 50
    thread_id = first.items[10].thread_id
    assert thread_id is not None
    inbox = folders["inbox"]
    for call in CALLS:
        cursor = first.next_cursor
        with _recorded(store.engine) as recorded:
            if call == "account":
                page = queries.list_messages(account_id, limit=50)
                index = "ix_messages_account_sort"
            elif call == "account_deep":
                for _ in range(3):
                    page = queries.list_messages(account_id, limit=50, before=cursor)
                    cursor = page.next_cursor
                index = "ix_messages_account_sort"
            elif call in ("folder", "folder_deep"):
                page = queries.list_messages(account_id, folder_id=inbox, limit=50)
                if call == "folder_deep":
                    page = queries.list_messages(
                        account_id, folder_id=inbox, limit=50, before=page.next_cursor
                    )
                index = "ix_message_locations_folder_sort"
            elif call == "thread":
                page = queries.list_messages(account_id, thread_id=thread_id, limit=50)
                index = "ix_messages_thread_sort"
            elif call == "search":
                page = queries.list_messages(account_id, q="invoice", limit=50, before=cursor)
                index = "ix_messages_account_sort"
            else:
                page = queries.list_messages(
                    account_id, thread_id=thread_id, folder_id=inbox, limit=50
                )
                index = "ix_messages_thread_sort"
        assert page.items, call
        _assert_served_by(
            store.engine, recorded, index, bounded=call in ("search", "folder_in_thread")
        )


# --- pages against a brute-force reading ------------------------------------------------------


def _everything(engine: Engine, account_id: int) -> list[MessageRow]:
    with Session(engine) as s:
        rows = list(s.scalars(select(MessageRow).where(MessageRow.account_id == account_id)))
    return sorted(rows, key=lambda r: (r.sort_at, r.id), reverse=True)


def _walk(queries: MessageQueries, account_id: int, **kw: Any) -> tuple[list[int], int]:
    """Every id of a paged list, and the number of pages it took."""
    ids: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = queries.list_messages(account_id, before=cursor, **kw)
        pages += 1
        assert len(page.items) <= kw.get("limit", 50)
        ids.extend(m.id for m in page.items)
        cursor = page.next_cursor
        if cursor is None:
            return ids, pages
        assert pages < 10_000


def _matches(row: MessageRow, q: str) -> bool:
    fields = (row.subject, row.from_email, row.from_name, row.snippet)
    return any(q.lower() in (f or "").lower() for f in fields)


def test_search_examines_a_bounded_number_of_messages_per_page(store: Store) -> None:
    account_id, _ = _fill(store, 1000)
    everything = _everything(store.engine, account_id)
    assert [m.sort_at for m in everything] == sorted((m.sort_at for m in everything), reverse=True)
    queries = MessageQueries(store.engine, search_scan_rows=100)
    # One match, near the oldest end: the first pages find nothing, yet say where to go on.
    only = next(m for m in everything if m.subject.endswith("#998"))
    first = queries.list_messages(account_id, q="#998", limit=20)
    assert first.items == [] and first.next_cursor is not None
    ids, pages = _walk(queries, account_id, q="#998", limit=20)
    assert ids == [only.id]
    assert pages >= len(everything) // 100
    # Many matches: each page is the matches among the next 100 messages, in list order.
    for q in ("sender1", "INVOICE", "%", "_"):
        expected = [m.id for m in everything if _matches(m, q)]
        got, _ = _walk(queries, account_id, q=q, limit=7)
        assert got == expected, q
    # Without a search, pages are full up to the last one, whatever the bound.
    got, pages = _walk(queries, account_id, limit=300)
    assert got == [m.id for m in everything] and pages == 4


def test_folder_and_thread_lists_match_a_brute_force_reading(store: Store) -> None:
    account_id, folders = _fill(store, 600)
    everything = _everything(store.engine, account_id)
    with Session(store.engine) as s:
        homes: dict[int, set[int]] = {}
        for mid, fid in s.execute(
            select(MessageLocationRow.message_id, MessageLocationRow.folder_id)
        ):
            homes.setdefault(fid, set()).add(mid)
    queries = MessageQueries(store.engine, search_scan_rows=100)
    for fid in folders.values():
        expected = [m.id for m in everything if m.id in homes[fid]]
        assert expected
        for limit in (1, 13, 500) if len(expected) < 50 else (13, 500):
            assert _walk(queries, account_id, folder_id=fid, limit=limit)[0] == expected
    thread_id = everything[40].thread_id
    assert thread_id is not None
    in_thread = [m.id for m in everything if m.thread_id == thread_id]
    assert len(in_thread) == 5
    assert _walk(queries, account_id, thread_id=thread_id, limit=2)[0] == in_thread
    for fid in folders.values():
        expected = [m for m in in_thread if m in homes[fid]]
        assert _walk(queries, account_id, thread_id=thread_id, folder_id=fid)[0] == expected


def test_a_message_filed_twice_in_a_folder_is_listed_once(store: Store) -> None:
    account_id, folders = make_account_with_folders(store.engine, "twice")
    inbox = folders["inbox"]
    base = datetime(2026, 3, 1, tzinfo=UTC)

    def item(uid: int, n: int) -> IncomingMessage:
        return IncomingMessage(
            uid=uid,
            flags=frozenset(),
            data=MessageData(
                dedupe_key=f"mid:m{n}@example.test",
                message_id=f"m{n}@example.test",
                subject=f"message {n}",
                normalized_subject=f"message {n}",
                date=base + timedelta(hours=n),
            ),
        )

    # Message 2 is at UIDs 3 and 4 (a client copied it within the folder): one row, two
    # locations with the same list position.
    items = [item(1, 1), item(2, 2), item(3, 2), item(4, 2), item(5, 3), item(6, 4)]
    MessageStore(store.engine).ingest_batch(
        account_id, inbox, items, FolderCheckpointUpdate(), chooser=default_thread_chooser
    )
    queries = MessageQueries(store.engine)
    everything = [m.id for m in queries.list_messages(account_id, limit=50).items]
    assert len(everything) == 4
    for limit in (1, 2, 3, 4, 50):
        assert _walk(queries, account_id, folder_id=inbox, limit=limit)[0] == everything
    first = queries.list_messages(account_id, folder_id=inbox, limit=3)
    assert [m.id for m in first.items] == everything[:3] and first.next_cursor


# --- the migration ----------------------------------------------------------------------------


def _upgrade(engine: Engine, revision: str, *, down: bool = False) -> None:
    from alembic import command
    from alembic.config import Config

    from correspond.store.engine import MIGRATIONS_DIR

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)


@pytest.mark.parametrize("backend", BACKENDS)
def test_migration_0006_fills_the_list_order_of_existing_mail(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from correspond.store.tables import Base

    if backend == "postgresql":
        server: PostgresServer = request.getfixturevalue("pg_server")
        database: contextlib.AbstractContextManager[str] = temporary_database(server)
    else:
        database = contextlib.nullcontext(f"sqlite:///{tmp_path / 'mig.db'}")
    with database as url:
        engine = create_store_engine(url)
        try:
            _upgrade(engine, "0003")
            date = datetime(2026, 2, 1, 8, 0, tzinfo=UTC)
            internal = datetime(2026, 2, 2, 8, 0, tzinfo=UTC)
            created = datetime(2026, 2, 3, 8, 0, tzinfo=UTC)
            sql = engine.dialect.name == "sqlite"

            def at(value: datetime | None) -> Any:
                if value is None or not sql:
                    return value
                return value.replace(tzinfo=None).isoformat(" ", "microseconds")

            with engine.begin() as conn:
                conn.execute(
                    text(
                        "INSERT INTO accounts (id, name, preset, email, imap_host, imap_port,"
                        " imap_security, smtp_port, smtp_security, username, auth_kind,"
                        " allow_plaintext,"
                        " folders_mode, window_days, state, state_detail,"
                        " delete_in_crm_on_remote_delete, delete_remote_on_crm_delete,"
                        " archive_in_crm_on_remote_archive, archive_remote_on_crm_archive,"
                        " created_at, updated_at) VALUES (1, 'a', 'generic', 'a@x.test', 'h',"
                        " 143, 'starttls', 587, 'starttls', 'a', 'password', false, 'all', 60,"
                        " 'connecting', '', false, false, true, true, :c, :c)"
                    ),
                    {"c": at(created)},
                )
                conn.execute(
                    text(
                        "INSERT INTO folders (id, account_id, remote_name_raw, name, flags,"
                        " selectable, selected, backfill_done, backfill_done_count, removed,"
                        " created_at, updated_at)"
                        " VALUES (1, 1, :raw, 'INBOX', '[]', true, true, false, 0, false, :c, :c)"
                    ),
                    {"raw": b"INBOX", "c": at(created)},
                )
                for mid, d, i in ((1, date, internal), (2, None, internal), (3, None, None)):
                    conn.execute(
                        text(
                            "INSERT INTO messages (id, account_id, dedupe_key, reference_ids,"
                            " subject, normalized_subject, sender, reply_to, to_addrs, cc_addrs,"
                            " bcc_addrs, participants, snippet, flags, state, direction,"
                            " truncated, defects, date, internaldate, created_at, updated_at)"
                            " VALUES (:id, 1, :k, '[]', 's', 's', '[]', '[]', '[]', '[]', '[]',"
                            " '[]', '', '[]', 'active', 'inbound', false, '[]', :d, :i, :c, :c)"
                        ),
                        {"id": mid, "k": f"k{mid}", "d": at(d), "i": at(i), "c": at(created)},
                    )
                    conn.execute(
                        text(
                            "INSERT INTO message_locations (message_id, folder_id, uid, flags,"
                            " created_at) VALUES (:id, 1, :id, '[]', :c)"
                        ),
                        {"id": mid, "c": at(created)},
                    )
            migrate(engine)
            with Session(engine) as s:
                by_id = dict(s.execute(select(MessageRow.id, MessageRow.sort_at)).tuples().all())
                located = dict(
                    s.execute(select(MessageLocationRow.message_id, MessageLocationRow.sort_at))
                    .tuples()
                    .all()
                )
            assert by_id == {1: date, 2: internal, 3: created}
            assert located == by_id
            with engine.connect() as conn:
                ctx = MigrationContext.configure(conn, opts={"compare_type": True})
                diff = [
                    d
                    for d in compare_metadata(ctx, Base.metadata)
                    if ("messages" in repr(d) or "message_locations" in repr(d))
                    # Search's side table (PostgreSQL only, outside Base.metadata) points at
                    # messages but is not one of them.
                    and "message_search" not in repr(d)
                ]
            assert diff == []
            assert _body_compression(engine) in ({"l"}, None)
            _upgrade(engine, "0003", down=True)
            assert _body_compression(engine) in ({""}, None)
            columns = {c["name"] for c in inspect(engine).get_columns("messages")}
            assert "sort_at" not in columns and "date" in columns
            migrate(engine)
            assert "sort_at" in {c["name"] for c in inspect(engine).get_columns("messages")}
        finally:
            engine.dispose()


def _body_compression(engine: Engine) -> set[str] | None:
    """The body columns' compression on PostgreSQL built with lz4 ('l'; '' is the default);
    None where that does not apply."""
    if engine.dialect.name != "postgresql":
        return None
    with engine.connect() as conn:
        values = conn.scalar(
            text("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
        )
        if not values or "lz4" not in values:
            return None
        return set(
            conn.scalars(
                text(
                    "SELECT attcompression FROM pg_attribute WHERE attrelid = 'messages'::regclass"
                    " AND attname IN ('text_body', 'html_body')"
                )
            )
        )


def test_cli_search_says_where_to_go_on_when_a_page_found_nothing(
    store: Store, store_settings: Settings, store_url: str
) -> None:
    from helpers import StoreCli

    _fill(store, 300)
    cli = StoreCli(store_settings, store_url)
    cli.env["CORRESPOND_MESSAGE_SEARCH_SCAN_ROWS"] = "100"
    # Only the oldest message matches: the first 100 examined hold none of it.
    result = cli("messages", "list", "synthetic", "-q", "#299")
    assert result.exit_code == 0, result.output
    assert "No messages." in result.output
    cursor = re.search(r"Search older messages: --before (\S+)", result.output)
    assert cursor is not None, result.output
    subjects: list[str] = []
    before = cursor[1]
    pages = 1
    while before is not None:
        page = cli.json("messages", "list", "synthetic", "-q", "#299", "--before", before)
        subjects += [m["subject"] for m in page["messages"]]
        before = page["next_cursor"]
        pages += 1
    assert [s.rsplit("#", 1)[1] for s in subjects] == ["299"]
    assert 3 <= pages <= 4


# --- what one page costs ------------------------------------------------------------------------


def test_a_page_by_account_name_is_one_connection_reading_ids_names_and_the_page(
    store: Store, store_settings: Settings
) -> None:
    """The reader used to look the account up in a session of its own before every page (and,
    for a folder, every folder as a whole record): a third of a first page's CPU. Now a page is
    one pool checkout and one statement (the account's id a subquery, still served by the list
    index), or, for a folder, the account's id and its folders' ids and names, then the page;
    an unknown account is still NotFound, an empty one an empty page; and the items, decoded a
    page at a time, are what the ORM reads from the same rows."""
    from correspond.mailbox import MailboxReader

    account_id, _ = _fill(store, 120)
    with Session(store.engine) as s, s.begin():
        # Flags out of order and an address without a name: decoded and sorted as before.
        first = s.scalars(
            select(MessageRow)
            .where(MessageRow.account_id == account_id)
            .order_by(MessageRow.sort_at.desc(), MessageRow.id.desc())
            .limit(1)
        ).one()
        first.flags = ["\\Seen", "$Label", "\\Answered"]
        first.to_addrs = [{"email": "a@example.test"}, {"name": "B", "email": "b@example.test"}]
        first_id = first.id
    reader = MailboxReader(store, store_settings.clone(database_url=str(store.engine.url)))
    checkouts: list[object] = []
    statements: list[str] = []

    def checkout(*args: Any) -> None:
        checkouts.append(args)

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(" ".join(statement.split()))

    event.listen(store.engine, "checkout", checkout)
    event.listen(store.engine, "before_cursor_execute", record)
    try:
        with _recorded(store.engine) as recorded:
            page = reader.list_messages("synthetic", limit=50)
        assert len(checkouts) == 1 and len(statements) == 1, statements
        inbox_page = reader.list_messages("synthetic", folder="inbox", limit=50)
        assert len(checkouts) == 2 and len(statements) == 4, statements
    finally:
        event.remove(store.engine, "checkout", checkout)
        event.remove(store.engine, "before_cursor_execute", record)
    _assert_served_by(store.engine, recorded, "ix_messages_account_sort", bounded=False)
    lookups = [st for st in statements if "FROM messages" not in st]
    assert len(lookups) == 2  # the account's id, the folders
    for st in lookups:
        columns = st.split(" FROM ")[0]
        assert "secret" not in columns and "host" not in columns, st
        assert columns.count(",") <= 1, st  # an id, and a folder's name
    assert page.items and inbox_page.items
    assert {m.id for m in inbox_page.items} < {m.id for m in _everything(store.engine, account_id)}
    rows = {r.id: r for r in _everything(store.engine, account_id)}
    for item in page.items:
        row = rows[item.id]
        assert item.sort_at == row.sort_at and item.sort_at.utcoffset() == timedelta(0)
        assert item.date == row.date
        assert item.date is None or item.date.utcoffset() == timedelta(0)
        assert item.flags == tuple(sorted(row.flags))
        assert [(a.name, a.email) for a in item.to] == [
            (a.get("name"), a["email"]) for a in row.to_addrs
        ]
        assert (item.subject, item.snippet, item.state, item.direction, item.thread_id) == (
            row.subject,
            row.snippet,
            row.state,
            row.direction,
            row.thread_id,
        )
    assert page.items[0].id == first_id
    assert page.items[0].flags == ("$Label", "\\Answered", "\\Seen")
    assert [a.name for a in page.items[0].to] == [None, "B"]
    with pytest.raises(NotFound):
        reader.list_messages("no-such-account", limit=50)
    make_account_with_folders(store.engine, "empty")
    assert reader.list_messages("empty", limit=50).items == []
    assert reader.list_messages("empty", q="x", limit=50).items == []
