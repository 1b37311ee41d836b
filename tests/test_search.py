"""Full-text search end to end, on SQLite (FTS5) and PostgreSQL (tsvector + GIN).

Mail goes in through the real ingest (``MessageStore.ingest_batch``), the index is filled by
the indexer (``SearchIndex``, as the background thread runs it), and searches go through the
API signed in (``authed_client`` / ``user_client``) or the CLI.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, event, select, text, update

from correspond.api import create_app
from correspond.errors import StoreError
from correspond.rules.search_query import parse_query
from correspond.search import OPERATOR, BackgroundIndexer, SearchService
from correspond.settings import Settings
from correspond.store import Store
from correspond.store.message_data import AddressData, AttachmentData
from correspond.store.message_tables import MessageRow
from correspond.store.messages import (
    FolderCheckpointUpdate,
    IncomingMessage,
    MessageData,
    MessageStore,
)
from correspond.store.search import SearchIndex, SearchQueries
from correspond.sync.engine import default_thread_chooser
from correspond.testing.synthetic import make_account_with_folders
from helpers import StoreCli, authed_client, user_client

BASE = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
ANN = AddressData("Ann Lee", "ann@x.com")
BOB = AddressData("Bob Stone", "bob@y.org")
CAROL = AddressData(None, "carol@z.net")
ME = AddressData("Mia", "mia@example.test")


def _pdf(name: str) -> AttachmentData:
    return AttachmentData(filename=name, content_type="application/pdf", size=1000)


@dataclass(frozen=True)
class Mail:
    key: str
    subject: str
    from_: AddressData
    to: tuple[AddressData, ...] = (ME,)
    cc: tuple[AddressData, ...] = ()
    text: str | None = None
    html: str | None = None
    attachments: tuple[AttachmentData, ...] = ()
    hours: int = 0
    seen: bool = True
    starred: bool = False


MIA_MAIL = [
    Mail("a1", "Invoice March", ANN, text="Please find the invoice attached.", hours=1,
         attachments=(_pdf("invoice-march.pdf"),)),
    Mail("a2", "Invoice April", ANN, text="The April invoice, no attachment this time.",
         hours=2, seen=False),
    Mail("a3", "Quarterly review", BOB, cc=(CAROL,), text="Agenda for the quarterly review.",
         hours=3, starred=True),
    Mail("a4", "Review quarterly numbers", BOB, text="Numbers look fine.", hours=4),
    Mail("a5", "Café menu", CAROL, html="<p>Le <b>café</b> du jour</p><script>x()</script>",
         hours=5, attachments=(_pdf("menu.pdf"),)),
    Mail("a6", "Draft invoice", ANN, text="A draft, do not pay.", hours=6),
]  # fmt: skip
OTTO_MAIL = [
    Mail("o1", "Otto's secret invoice", ANN, text="Confidential pricing for Otto.", hours=7),
]


def _ingest(store: Store, folder_id: int, account_id: int, mails: list[Mail], uid0: int) -> None:
    items = [
        IncomingMessage(
            uid=uid0 + i,
            flags=frozenset(
                {*(["\\Seen"] if m.seen else []), *(["\\Flagged"] if m.starred else [])}
            ),
            data=MessageData(
                dedupe_key=f"mid:{m.key}@t",
                message_id=f"{m.key}@t",
                subject=m.subject,
                normalized_subject=m.subject.lower(),
                from_=m.from_,
                to=m.to,
                cc=m.cc,
                date=BASE + timedelta(hours=m.hours),
                text=m.text,
                html=m.html,
                snippet=(m.text or "")[:50],
                attachments=m.attachments,
            ),
        )
        for i, m in enumerate(mails)
    ]
    MessageStore(store.engine).ingest_batch(
        account_id, folder_id, items, FolderCheckpointUpdate(), chooser=default_thread_chooser
    )


@dataclass
class World:
    app: FastAPI
    admin: TestClient
    mia: TestClient
    otto: TestClient
    store: Store
    ids: dict[str, int]


@pytest.fixture
def world(store: Store, store_settings: Settings) -> Iterator[World]:
    app = create_app(store_settings, store=store)
    with authed_client(app) as admin:
        mia = user_client(app, "mia@example.test")
        otto = user_client(app, "otto@example.test")
        users = app.state.auth.users
        for name, owner, mails, uid0 in (
            ("mia-mail", "mia@example.test", MIA_MAIL, 1),
            ("otto-mail", "otto@example.test", OTTO_MAIL, 1),
        ):
            account_id, folders = make_account_with_folders(store.engine, name)
            users.set_account_owner(name, users.get_user(owner).id)
            _ingest(store, folders["inbox"], account_id, mails, uid0)
        app.state.search.index.index_all()
        with store.engine.connect() as conn:
            ids = {
                key.removesuffix("@t"): int(mid)
                for mid, key in conn.execute(select(MessageRow.id, MessageRow.message_id_header))
            }
        yield World(app, admin, mia, otto, store, ids)


def _keys(world: World, client: TestClient, q: str, **params: Any) -> list[str]:
    answer = client.get("/search", params={"q": q, **params})
    assert answer.status_code == 200, answer.text
    by_id = {v: k for k, v in world.ids.items()}
    return [by_id[m["id"]] for m in answer.json()["messages"]]


# (query, what mia finds, newest first): one world per backend serves the whole table.
FINDS: list[tuple[str, list[str]]] = [
    ("invoice", ["a6", "a2", "a1"]),  # newest first
    ("from:ann@x.com has:attachment invoice", ["a1"]),
    ("from:ann@x.com", ["a6", "a2", "a1"]),
    ("from:ann", ["a6", "a2", "a1"]),
    ("from:lee", ["a6", "a2", "a1"]),  # the sender's name
    ("ann@x.com", ["a6", "a2", "a1"]),  # a participant, anywhere
    ("to:mia", ["a6", "a5", "a4", "a3", "a2", "a1"]),
    ("cc:carol@z.net", ["a3"]),
    ("carol", ["a5", "a3"]),  # sender of a5, cc of a3
    ('"quarterly review"', ["a3"]),  # a phrase: in this order
    ("quarterly review", ["a4", "a3"]),  # words: any order
    ("subject:numbers", ["a4"]),
    ("numbers", ["a4"]),  # subject and body
    ("fine", ["a4"]),  # body only
    ("invoice -draft", ["a2", "a1"]),
    ("-invoice", ["a5", "a4", "a3"]),
    ("filename:menu.pdf", ["a5"]),
    ("filename:pdf", ["a5", "a1"]),
    ("cafe", ["a5"]),  # accents folded, HTML words
    ("CAFÉ", ["a5"]),
    ("x", ["a6", "a2", "a1"]),  # ann@x.com's "x", never a script's "x()"
    ("invo*", ["a6", "a2", "a1"]),
    ("has:attachment", ["a5", "a1"]),
    ("-has:attachment invoice", ["a6", "a2"]),
    ("is:unread", ["a2"]),
    ("is:read invoice", ["a6", "a1"]),
    ("is:starred", ["a3"]),
    ("in:inbox invoice", ["a6", "a2", "a1"]),
    ("in:INBOX", ["a6", "a5", "a4", "a3", "a2", "a1"]),
    ("in:sent", []),
    ("-in:sent invoice", ["a6", "a2", "a1"]),
    ("after:2026-03-01 before:2026-03-02", ["a6", "a5", "a4", "a3", "a2", "a1"]),
    ("before:2026-03-01", []),
    ("after:2026-03-02", []),
    ("nothing-like-this", []),
    ("x:invoice", []),  # an unknown operator is a word (the phrase "x invoice")
    ("", ["a6", "a5", "a4", "a3", "a2", "a1"]),  # no criteria: everything visible
]


def test_search_through_the_api(world: World) -> None:
    found = {q: _keys(world, world.mia, q) for q, _ in FINDS}
    assert found == dict(FINDS)


def test_results_page_by_cursor_newest_first_with_the_list_summaries(world: World) -> None:
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"q": "to:mia", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = world.mia.get("/search", params=params).json()
        seen.extend(page["messages"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(page["messages"]) == 2
    listed = world.mia.get("/accounts/mia-mail/messages").json()["messages"]
    assert seen == listed  # the same items, fields and order as the message list
    assert len(seen) == 6


def test_another_member_sees_nothing_of_yours(world: World) -> None:
    # Otto's only mail matches "invoice" too; each member finds only their own.
    assert _keys(world, world.otto, "invoice") == ["o1"]
    assert _keys(world, world.mia, "confidential") == []
    assert _keys(world, world.otto, "quarterly") == []
    assert _keys(world, world.otto, "") == ["o1"]
    # Naming the other's account is the 404 of an account that does not exist.
    hidden = world.otto.get("/search", params={"q": "invoice", "account": "mia-mail"})
    ghost = world.otto.get("/search", params={"q": "invoice", "account": "no-such"})
    assert hidden.status_code == ghost.status_code == 404
    assert hidden.json()["detail"].replace("mia-mail", "X") == ghost.json()["detail"].replace(
        "no-such", "X"
    )
    # The admin sees both, and can narrow to one account.
    assert _keys(world, world.admin, "invoice") == ["o1", "a6", "a2", "a1"]
    assert _keys(world, world.admin, "invoice", account="mia-mail") == ["a6", "a2", "a1"]


def test_search_narrowed_to_a_set_of_accounts(world: World) -> None:
    # A team's page narrows the search to the team's inboxes: the service's account_ids,
    # never more than the viewer may see (mia narrowed to otto's account finds nothing).
    from correspond.search import viewer_of

    search = world.app.state.search
    users = world.app.state.auth.users
    admin = viewer_of(users.get_user("admin@example.test"))
    mia = viewer_of(users.get_user("mia@example.test"))
    mia_id = search.queries.account_id("mia-mail")
    otto_id = search.queries.account_id("otto-mail")
    by_id = {v: k for k, v in world.ids.items()}

    def keys(viewer: Any, q: str, **narrow: Any) -> list[str]:
        return [by_id[m.id] for m in search.search(q, viewer, **narrow).items]

    everything = keys(admin, "")
    only_mia = keys(admin, "", account_ids=[mia_id])
    only_otto = keys(admin, "", account_ids=[otto_id])
    assert only_mia == keys(mia, "") and only_mia and only_otto
    assert sorted(only_mia + only_otto) == sorted(everything)
    assert keys(admin, "invoice", account_ids=[mia_id, otto_id]) == keys(admin, "invoice")
    assert keys(mia, "", account_ids=[otto_id]) == []
    assert keys(admin, "", account_ids=[]) == []
    # Both given: their intersection.
    assert keys(admin, "", account="mia-mail", account_ids=[mia_id, otto_id]) == only_mia
    assert keys(admin, "", account="mia-mail", account_ids=[otto_id]) == []


def test_search_needs_credentials(world: World) -> None:
    anonymous = TestClient(world.app, base_url="http://localhost")
    answer = anonymous.get("/search", params={"q": "invoice"})
    assert answer.status_code == 401
    assert "invoice" not in answer.text.lower().replace("q=invoice", "")


def test_deleted_messages_drop_out(world: World) -> None:
    with world.store.engine.begin() as conn:
        conn.execute(
            update(MessageRow).where(MessageRow.id == world.ids["a1"]).values(state="deleted")
        )
        conn.execute(delete(MessageRow).where(MessageRow.id == world.ids["a2"]))
    assert _keys(world, world.mia, "invoice") == ["a6"]
    # A deleted row leaves no index entry behind (cascade / trigger), so no id can match it.
    world.app.state.search.index.index_all()
    assert _index_ids(world.store) == set(world.ids.values()) - {world.ids["a2"]}


REFUSED = [
    "word " * 10_000,  # 10,000 terms: past the length bound
    " ".join(f"w{i}" for i in range(200)),  # under the length bound, past the term bound
    "before:2026-02-30",
    "after:tomorrow",
]


def test_a_query_that_cannot_be_searched_is_a_422_naming_q(world: World) -> None:
    for q in REFUSED:
        answer = world.mia.get("/search", params={"q": q})
        assert answer.status_code == 422, (q[:40], answer.text)
        (error,) = answer.json()["detail"]
        assert error["loc"] == ["query", "q"]
        assert "word" not in error["msg"]  # the query is not echoed back


HOSTILE = [
    "invoice\x00",
    "\x00\x00\x00",
    "NEAR(invoice draft, 2)",
    'invoice" OR "x',
    '"',
    '""""',
    "*",
    "invoice*",
    "^invoice",
    "{f_body}: invoice",
    "f_subject : invoice",
    "invoice AND NOT draft",
    "' & ! | <-> :* \\ ()",
    "in:\x00inbox",
    "from:\x00",
    "-",
    "--invoice",
    "ａｂｃ",  # noqa: RUF001 - full-width letters on purpose
]


def test_hostile_queries_get_a_clean_answer(world: World) -> None:
    for q in HOSTILE:
        answer = world.mia.get("/search", params={"q": q})
        assert answer.status_code == 200, (q, answer.text)
        assert set(answer.json()) == {"messages", "next_cursor"}


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.text(max_size=120))
def test_any_text_parses_and_runs_or_is_refused_as_a_query_error(world: World, q: str) -> None:
    queries = SearchQueries(world.store.engine)
    try:
        query = parse_query(q)
    except Exception as exc:
        assert type(exc).__name__ == "SearchQueryError"
        return
    queries.search(query, OPERATOR, limit=5)


def _index_ids(store: Store) -> set[int]:
    table = "message_search" if store.dialect == "postgresql" else "message_fts"
    column = "message_id" if store.dialect == "postgresql" else "rowid"
    with store.engine.connect() as conn:
        return {int(v) for v in conn.scalars(text(f"SELECT {column} FROM {table}"))}


def _state(store: Store) -> tuple[int, int]:
    with store.engine.connect() as conn:
        row = conn.execute(text("SELECT last_indexed, settled FROM search_index_state")).one()
    return int(row[0]), int(row[1])


def _mia_inbox(store: Store) -> tuple[int, int]:
    account_id, folders = make_account_with_folders(store.engine, "mia-mail")
    return account_id, folders["inbox"]


def test_a_crash_in_a_round_leaves_index_and_watermark_as_they_were(store: Store) -> None:
    account_id, inbox = _mia_inbox(store)
    _ingest(store, inbox, account_id, MIA_MAIL, 1)
    index = SearchIndex(store.engine, batch_size=4)
    first = index.index_batch()
    assert (first.indexed, first.caught_up) == (4, False)
    done = _index_ids(store)
    state = _state(store)

    # The process dies as the round moves the watermark: nothing of the round stays.
    def die(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE SEARCH_INDEX_STATE"):
            raise RuntimeError("killed")

    event.listen(store.engine, "before_cursor_execute", die)
    try:
        with pytest.raises((StoreError, RuntimeError)):
            index.index_batch()
    finally:
        event.remove(store.engine, "before_cursor_execute", die)
    assert _index_ids(store) == done and _state(store) == state

    # The next run picks up where the committed watermark was, and the result is complete.
    assert index.index_all() == 2
    with store.engine.connect() as conn:
        every = set(conn.scalars(select(MessageRow.id)))
    assert _index_ids(store) == every
    service = SearchService(store.engine, Settings())
    assert len(service.search("invoice", OPERATOR).items) == 3


def test_indexing_again_is_idempotent(store: Store) -> None:
    account_id, inbox = _mia_inbox(store)
    _ingest(store, inbox, account_id, MIA_MAIL, 1)
    index = SearchIndex(store.engine)
    index.index_all()
    service = SearchService(store.engine, Settings())
    before = [m.id for m in service.search("invoice", OPERATOR).items]
    # As after a crash between writing entries and a watermark that was never committed.
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE search_index_state SET last_indexed = 0, settled = 0"))
    assert index.index_all() == len(MIA_MAIL)
    assert [m.id for m in service.search("invoice", OPERATOR).items] == before
    if store.dialect == "postgresql":
        with store.engine.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM message_search")) == len(MIA_MAIL)
    else:
        assert len(_index_ids(store)) == len(MIA_MAIL)


def _unindex_lowest(store: Store) -> int:
    """Take the entry of the lowest indexed id away (as if its transaction had committed
    after a higher id was indexed); that id."""
    late = min(_index_ids(store))
    with store.engine.begin() as conn:
        if store.dialect == "postgresql":
            conn.execute(text("DELETE FROM message_search WHERE message_id = :i"), {"i": late})
        else:
            conn.execute(text("DELETE FROM message_fts WHERE rowid = :i"), {"i": late})
    assert late not in _index_ids(store)
    return late


def test_the_recheck_of_unsettled_ids_is_rate_limited(store: Store) -> None:
    account_id, inbox = _mia_inbox(store)
    _ingest(store, inbox, account_id, MIA_MAIL, 1)
    index = SearchIndex(store.engine, settle_seconds=300, gap_check_seconds=3600)
    index.index_all()
    assert index.index_batch().indexed == 0  # the first re-check: nothing missing
    late = _unindex_lowest(store)
    assert index.index_batch().indexed == 0  # not due yet: a cheap round
    index.gap_check_seconds = 0
    assert index.index_batch().indexed == 1
    assert late in _index_ids(store)


def test_an_id_committed_after_a_higher_one_is_indexed_until_it_settles(store: Store) -> None:
    account_id, inbox = _mia_inbox(store)
    _ingest(store, inbox, account_id, MIA_MAIL, 1)
    index = SearchIndex(store.engine, settle_seconds=300, gap_check_seconds=0)
    index.index_all()
    last, settled = _state(store)
    assert settled < last  # just stored: not settled yet
    # A message below the watermark without an entry: its transaction committed after a
    # higher id was indexed (simulated by taking its entry away).
    late = _unindex_lowest(store)
    assert index.index_batch().indexed == 1
    assert late in _index_ids(store)
    # The re-check runs at most every gap_check_seconds (a tenth of the settle time).
    assert SearchIndex(store.engine, settle_seconds=300).gap_check_seconds == 30
    # Once the ids are older than the settle time the watermark passes them for good.
    index.index_batch(now=datetime.now(UTC) + timedelta(seconds=301))
    assert _state(store) == (last, last)
    assert index.index_batch().indexed == 0


def test_ingest_wakes_the_background_indexer_after_its_commit(store: Store) -> None:
    account_id, inbox = _mia_inbox(store)
    index = SearchIndex(store.engine)
    indexer = BackgroundIndexer(index, poll_seconds=3600)  # only a wake-up can start a round
    messages = MessageStore(store.engine)
    committed: list[bool] = []

    def wake() -> None:
        # Called after the commit: another connection already sees the batch.
        with store.engine.connect() as conn:
            committed.append(bool(conn.scalar(select(MessageRow.id).limit(1))))
        indexer.wake()

    messages.after_ingest.append(wake)
    indexer.start()
    try:
        time.sleep(0.2)  # the first round (nothing to do) is over; now it waits
        rounds = indexer.rounds
        items = [
            IncomingMessage(
                uid=1,
                flags=frozenset(),
                data=MessageData(dedupe_key="mid:w@t", message_id="w@t", subject="Wake word"),
            )
        ]
        messages.ingest_batch(
            account_id, inbox, items, FolderCheckpointUpdate(), chooser=default_thread_chooser
        )
        service = SearchService(store.engine, Settings())
        deadline = time.monotonic() + 10
        while not service.search("wake", OPERATOR).items and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(service.search("wake", OPERATOR).items) == 1
        assert committed == [True] and indexer.rounds > rounds
        # A batch that stores nothing new does not wake it.
        messages.ingest_batch(
            account_id, inbox, items, FolderCheckpointUpdate(), chooser=default_thread_chooser
        )
        assert committed == [True]
    finally:
        indexer.stop()
    assert not any(t.name == "search-indexer" for t in threading.enumerate())


def test_cli_search_indexes_what_is_new_and_finds_it(
    store: Store, store_settings: Settings, store_url: str
) -> None:
    account_id, inbox = _mia_inbox(store)
    _ingest(store, inbox, account_id, MIA_MAIL, 1)
    cli = StoreCli(store_settings, store_url)
    found = cli.json("messages", "search", "from:ann has:attachment invoice")
    assert [m["subject"] for m in found["messages"]] == ["Invoice March"]
    assert cli.json("messages", "search", "invoice", "--account", "mia-mail", "--limit", "2")[
        "next_cursor"
    ]
    result = cli("messages", "search", "before:2026-13-01")
    assert result.exit_code != 0 and "YYYY-MM-DD" in result.output
    result = cli("messages", "search", "quarterly", "--account", "nobody")
    assert result.exit_code != 0
    table = cli("messages", "search", "quarterly")
    assert table.exit_code == 0 and "Quarterly review" in table.output


def test_a_huge_message_is_indexed_within_the_bounds_and_found(store: Store) -> None:
    account_id, inbox = _mia_inbox(store)
    crowd = tuple(AddressData(f"Person {i}", f"u{i}@x.com") for i in range(1000))
    body = "filler " * 30_000 + "needle"  # past the token cap: the end of the body is cut
    items = [
        IncomingMessage(
            uid=1,
            flags=frozenset(),
            data=MessageData(
                dedupe_key="mid:huge@t",
                message_id="huge@t",
                subject="Crowd ' \\ \x7f",
                to=crowd,
                text=body + " " + "z" * 500,
            ),
        )
    ]
    MessageStore(store.engine).ingest_batch(
        account_id, inbox, items, FolderCheckpointUpdate(), chooser=default_thread_chooser
    )
    assert SearchIndex(store.engine).index_all() == 1
    service = SearchService(store.engine, Settings())
    assert len(service.search("to:u999", OPERATOR).items) == 1
    # A phrase matches among the first 255 places of each of its words (PostgreSQL keeps no
    # more per word and message; the SQLite index has no such limit).
    assert len(service.search("to:u200@x.com", OPERATOR).items) == 1
    assert len(service.search("filler crowd", OPERATOR).items) == 1
    assert service.search("needle", OPERATOR).items == []


def test_sqlite_walks_the_list_order_for_common_words_with_the_same_results(world: World) -> None:
    """With the threshold at 1 every text query on SQLite walks each account's list order
    (the plan for words most messages hold): the answers are those of the match-driven
    plan, across accounts (the admin) and pages too."""
    from correspond.search import viewer_of

    walking = SearchQueries(world.store.engine, walk_threshold=1)
    never = SearchQueries(world.store.engine, walk_threshold=10**9)
    mia = viewer_of(world.app.state.auth.users.get_user("mia@example.test"))
    by_id = {v: k for k, v in world.ids.items()}
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(world.store.engine, "before_cursor_execute", record)
    try:
        for q, expected in FINDS:
            found = [by_id[m.id] for m in walking.search(parse_query(q), mia).items]
            assert found == expected, q
    finally:
        event.remove(world.store.engine, "before_cursor_execute", record)
    walked = [s for s in statements if "EXISTS (SELECT" in s and "message_fts MATCH" in s]
    assert bool(walked) == (world.store.dialect == "sqlite")
    for q in ("invoice", "invoice -draft", "from:ann", "review"):
        query = parse_query(q)
        pages: list[list[int]] = [[], []]
        for i, queries in enumerate((walking, never)):
            cursor = None
            while True:
                page = queries.search(query, OPERATOR, limit=1, cursor=cursor)
                pages[i].extend(m.id for m in page.items)
                if (cursor := page.next_cursor) is None:
                    break
        assert pages[0] == pages[1] and pages[0], q
    assert [by_id[m.id] for m in walking.search(parse_query("invoice"), OPERATOR).items] == [
        "o1",
        "a6",
        "a2",
        "a1",
    ]


def test_serve_wakes_its_indexer_from_the_runners_ingest(
    store: Store, store_settings: Settings
) -> None:
    from correspond.sync.runner import SyncRunner

    runner = SyncRunner(store, store_settings)
    app = create_app(store_settings, store=store, runner=runner)
    assert app.state.indexer.wake in runner.messages.after_ingest
    assert app.state.search.index.batch_size == store_settings.search_index_batch


def test_postgresql_reads_the_matches_of_rare_text_first_with_the_same_results(
    world: World,
) -> None:
    """On PostgreSQL a query whose text the statistics call rare reads its matches first
    (a MATERIALIZED set of at most twice the threshold) instead of leaving the planner to
    walk the list order; with more matches than that it falls back to the walk. Either way
    the answers are those of the walk, across pages and viewers."""
    from correspond.search import viewer_of

    reading = SearchQueries(world.store.engine, walk_threshold=10**9)  # always reads matches
    capped = SearchQueries(world.store.engine, walk_threshold=1)  # cap 2: falls back above
    mia = viewer_of(world.app.state.auth.users.get_user("mia@example.test"))
    by_id = {v: k for k, v in world.ids.items()}
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(world.store.engine, "before_cursor_execute", record)
    try:
        for queries in (reading, capped):
            for q, expected in FINDS:
                found = [by_id[m.id] for m in queries.search(parse_query(q), mia).items]
                assert found == expected, q
    finally:
        event.remove(world.store.engine, "before_cursor_execute", record)
    materialized = [s for s in statements if "AS MATERIALIZED" in s]
    assert bool(materialized) == (world.store.dialect == "postgresql")
    for q in ("invoice", "invoice -draft", "from:ann", "invo*", "carol"):
        query = parse_query(q)
        pages: list[list[int]] = [[], []]
        for i, queries in enumerate((reading, capped)):
            cursor = None
            while True:
                page = queries.search(query, OPERATOR, limit=1, cursor=cursor)
                pages[i].extend(m.id for m in page.items)
                if (cursor := page.next_cursor) is None:
                    break
        assert pages[0] == pages[1] and pages[0], q
