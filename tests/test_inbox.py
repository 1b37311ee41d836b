"""The inbox views (``GET /inbox``, ``GET /teams/{team_id}/inbox``) on SQLite and PostgreSQL:
thread counts, unread, participants, snippets, chips, every filter, cursor paging (also with
inserts between pages and with the scan bound), team membership and sharing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from correspond.api import create_app
from correspond.settings import Settings
from correspond.store import Store
from correspond.store.inbox import InboxFilters, InboxQueries
from correspond.store.linker import LinkerStore, LinkPolicy
from correspond.store.message_tables import (
    AttachmentRow,
    MessageLocationRow,
    MessageRow,
    ThreadRow,
)
from correspond.store.teams import TeamStore
from correspond.testing.synthetic import fill_messages, make_account_with_folders
from helpers import authed_client, user_client

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
OWNER = "owner@example.test"


@pytest.fixture
def app(store: Store, store_settings: Settings) -> FastAPI:
    return create_app(store_settings, store=store)


@pytest.fixture
def admin(app: FastAPI) -> Iterator[TestClient]:
    with authed_client(app) as client:
        yield client


class Mailbox:
    """An account with INBOX, Sent and Archive, and a way to put messages in it."""

    def __init__(self, app: FastAPI, name: str, owner: str) -> None:
        self.engine = app.state.crm.engine
        self.name = name
        self.id, self.folders = make_account_with_folders(self.engine, name)
        auth = app.state.auth
        auth.users.set_account_owner(name, auth.users.get_user(owner).id)
        self._uid = 10_000_000  # above the synthetic fill's UIDs

    def thread(self, subject: str) -> int:
        with Session(self.engine) as s, s.begin():
            row = ThreadRow(account_id=self.id, subject=subject)
            s.add(row)
            s.flush()
            return row.id

    def message(
        self,
        thread: int,
        minutes: int,
        *folders: str,
        sender: str = "ann@client.test",
        flags: tuple[str, ...] = ("\\Seen",),
        attachment: bool = False,
        state: str = "active",
        gone: bool = False,
    ) -> int:
        when = T0 + timedelta(minutes=minutes)
        with Session(self.engine) as s, s.begin():
            row = MessageRow(
                account_id=self.id,
                thread_id=thread,
                dedupe_key=f"k{self.id}.{thread}.{minutes}",
                subject=f"subject {minutes}",
                from_name=sender.split("@")[0].title(),
                from_email=sender,
                to_addrs=[{"name": "Owner", "email": f"{self.name}@example.test"}],
                participants=[sender, f"{self.name}@example.test"],
                date=when,
                snippet=f"snippet of {minutes}",
                flags=sorted(flags),
                state=state,
                gone_from_mailbox_at=when if gone else None,
                sort_at=when,
            )
            s.add(row)
            s.flush()
            for folder in folders:
                self._uid += 1
                s.add(
                    MessageLocationRow(
                        message_id=row.id,
                        folder_id=self.folders[folder],
                        uid=self._uid,
                        flags=sorted(flags),
                        sort_at=when,
                    )
                )
            if attachment:
                s.add(AttachmentRow(message_id=row.id, filename="plan.pdf", size=10))
            return row.id


def _threads(client: TestClient, url: str = "/inbox", **params: Any) -> list[int]:
    answer = client.get(url, params=params)
    assert answer.status_code == 200, answer.text
    return [t["thread_id"] for t in answer.json()["threads"]]


def test_threads_counts_unread_participants_and_filters(app: FastAPI, admin: TestClient) -> None:
    owner = user_client(app, OWNER)
    box = Mailbox(app, "mine", OWNER)
    t1, t2, t3, t4, t5, t6 = (box.thread(f"thread {n}") for n in range(1, 7))
    m1 = box.message(t1, 10, "inbox")
    box.message(t1, 20, "sent", sender="mine@example.test")
    m3 = box.message(
        t1, 30, "inbox", sender="bob@client.test", flags=("\\Flagged",), attachment=True
    )
    m4 = box.message(t2, 40, "inbox", sender="cat@partner.test")
    box.message(t3, 50, "sent", sender="mine@example.test")  # never in the inbox
    box.message(t4, 60, "inbox", state="deleted")
    box.message(t4, 5, "archive")
    box.message(t5, 70, "inbox", gone=True)
    box.message(t6, 2, "inbox")
    m10 = box.message(t6, 80, "inbox", flags=())

    page = owner.get("/inbox").json()
    assert page["next_cursor"] is None
    assert [t["thread_id"] for t in page["threads"]] == [t6, t2, t1]
    first = {t["thread_id"]: t for t in page["threads"]}
    assert first[t1] | {"participants": None} == {
        "thread_id": t1,
        "account": "mine",
        "account_id": box.id,
        "subject": "thread 1",
        "message_count": 3,
        "unread_count": 1,
        "starred": True,
        "participants": None,
        "latest_message_id": m3,
        "latest_at": "2026-03-01T09:30:00Z",
        "date": "2026-03-01T09:30:00Z",
        "snippet": "snippet of 30",
        "has_attachments": True,
        "contacts": [],
        "deals": [],
    }
    # Newest message first, each address once (From, then To), with names.
    assert first[t1]["participants"] == [
        {"name": "Bob", "email": "bob@client.test"},
        {"name": "Owner", "email": "mine@example.test"},
        {"name": "Ann", "email": "ann@client.test"},
    ]
    assert (first[t6]["latest_message_id"], first[t6]["unread_count"]) == (m10, 1)
    assert (first[t2]["starred"], first[t2]["has_attachments"]) == (False, False)

    assert _threads(owner, unread=True) == [t6, t1]
    assert _threads(owner, unread=False) == [t2, t1, t6]  # placed by their latest read message
    assert _threads(owner, starred=True) == [t1]
    assert _threads(owner, starred=False) == [t6, t2, t1]
    assert _threads(owner, has_attachment=True) == [t1]
    assert _threads(owner, has_attachment=False) == [t6, t2, t1]
    assert _threads(owner, folder="sent") == [t3, t1]
    assert _threads(owner, folder="archive") == [t4]  # the deleted inbox copy is not there
    assert _threads(owner, folder=str(box.folders["archive"])) == [t4]
    assert _threads(owner, folder="junk") == []  # no such folder: an empty view
    assert owner.get("/inbox", params={"folder": "nonsense"}).status_code == 400
    assert owner.get("/inbox", params={"folder": "987654321"}).status_code == 404
    assert owner.get("/inbox", params={"cursor": "not-a-cursor"}).status_code == 400
    assert owner.get("/inbox", params={"limit": 101}).status_code == 422
    assert _threads(owner, account="mine") == [t6, t2, t1]

    # Contacts and deals: chips on the threads their mail is linked to, and filters.
    cat = admin.post("/contacts", json={"name": "Cat", "emails": ["cat@partner.test"]}).json()
    bob = admin.post("/contacts", json={"emails": ["bob@client.test"]}).json()
    deal = admin.post("/deals", json={"name": "Renewal", "contact_ids": [cat["id"]]}).json()
    LinkerStore(app.state.crm.engine, LinkPolicy()).run_until_idle()
    linked = {t["thread_id"]: t for t in owner.get("/inbox").json()["threads"]}
    assert linked[t2]["contacts"] == [{"id": cat["id"], "name": "Cat"}]
    assert linked[t2]["deals"] == [{"id": deal["id"], "name": "Renewal"}]
    # A contact without a name shows as its address.
    assert linked[t1]["contacts"] == [{"id": bob["id"], "name": "bob@client.test"}]
    assert _threads(owner, contact_id=cat["id"]) == [t2]
    # A thread is placed by its newest message linked to the contact, whatever came after.
    ann = admin.post("/contacts", json={"name": "Ann", "emails": ["ann@client.test"]}).json()
    LinkerStore(app.state.crm.engine, LinkPolicy()).run_until_idle()
    anns = owner.get("/inbox", params={"contact_id": ann["id"]}).json()["threads"]
    assert [(t["thread_id"], t["latest_message_id"]) for t in anns] == [(t6, m10), (t1, m1)]
    assert _threads(owner, contact_id=ann["id"], folder="archive") == [t4]
    assert _threads(owner, deal_id=deal["id"]) == [t2]
    assert _threads(owner, contact_id=bob["id"], unread=False) == []  # m3 is unread
    assert _threads(owner, contact_id=bob["id"], folder="inbox") == [t1]
    assert _threads(owner, contact_id=cat["id"], deal_id=deal["id"]) == [t2]
    assert _threads(owner, contact_id=987654) == []
    assert m4 in [t["latest_message_id"] for t in owner.get("/inbox").json()["threads"]]


def test_archived_in_the_crm_leaves_the_inbox_view(app: FastAPI, admin: TestClient) -> None:
    """Toggle 4 off: a message archived in the CRM keeps its copy in the mailbox's INBOX, but
    the inbox view leaves it out (and shows it again once unarchived); other folders' views
    still show archived mail."""
    owner = user_client(app, OWNER)
    box = Mailbox(app, "mine", OWNER)
    answer = admin.patch(
        "/accounts/mine", json={"toggles": {"archive_remote_on_crm_archive": False}}
    )
    assert answer.status_code == 200, answer.text
    t1, t2, t3 = (box.thread(f"thread {n}") for n in range(1, 4))
    m1 = box.message(t1, 10, "inbox")
    m2_old = box.message(t2, 5, "inbox")
    m2 = box.message(t2, 20, "inbox")
    box.message(t3, 30, "archive", state="archived")
    assert _threads(owner) == [t2, t1]

    archived = owner.post(f"/messages/{m1}/archive")
    assert archived.status_code == 200, archived.text
    assert (archived.json()["state"], archived.json()["pending_actions"]) == ("archived", [])
    assert _threads(owner) == [t2]
    assert _threads(owner, folder=str(box.folders["inbox"])) == [t2]
    assert _threads(owner, unread=False) == [t2]
    # A thread is placed by its latest message that is still in the inbox.
    assert owner.post(f"/messages/{m2}/archive").status_code == 200
    [latest] = owner.get("/inbox").json()["threads"]
    assert (latest["thread_id"], latest["latest_message_id"]) == (t2, m2_old)
    # The Archive folder's view still shows archived mail.
    assert _threads(owner, folder="archive") == [t3]

    assert owner.post(f"/messages/{m1}/unarchive").status_code == 200
    assert owner.post(f"/messages/{m2}/unarchive").status_code == 200
    assert _threads(owner) == [t2, t1]
    [first, _] = owner.get("/inbox").json()["threads"]
    assert first["latest_message_id"] == m2


def _expected_order(engine: Any, account_id: int, inbox: int) -> list[int]:
    """Threads with a live message in INBOX, by their newest one there (computed apart)."""
    with Session(engine) as s:
        rows = s.execute(
            select(MessageRow.thread_id, MessageRow.sort_at, MessageRow.id)
            .join(MessageLocationRow, MessageLocationRow.message_id == MessageRow.id)
            .where(MessageLocationRow.folder_id == inbox, MessageRow.account_id == account_id)
        ).all()
    best: dict[int, tuple[datetime, int]] = {}
    for tid, at, mid in rows:
        best[tid] = max(best.get(tid, (at, mid)), (at, mid))
    return sorted(best, key=lambda t: best[t], reverse=True)


def test_cursor_paging_is_complete_stable_and_bounded(app: FastAPI) -> None:
    owner = user_client(app, OWNER)
    box = Mailbox(app, "paged", OWNER)
    fill_messages(box.engine, box.id, box.folders, 300, newest=T0)
    expected = _expected_order(box.engine, box.id, box.folders["inbox"])
    assert len(expected) == 60

    def walk(limit: int, **params: Any) -> list[int]:
        seen: list[int] = []
        cursor = None
        for _ in range(100):
            at = {"cursor": cursor} if cursor else {}
            page = owner.get("/inbox", params={"limit": limit, **at, **params}).json()
            seen += [t["thread_id"] for t in page["threads"]]
            cursor = page["next_cursor"]
            if cursor is None:
                return seen
        raise AssertionError("paging did not end")

    assert walk(7) == expected
    assert walk(100) == expected
    counts = owner.get("/inbox", params={"limit": 1}).json()["threads"][0]
    assert counts["message_count"] == 5 and counts["unread_count"] in (1, 2, 3)

    # A new message between pages moves its thread to the top: later pages neither repeat
    # it nor skip any other thread.
    page = owner.get("/inbox", params={"limit": 10}).json()
    moved = expected[25]
    box.message(moved, 60 * 24, "inbox")
    rest: list[int] = []
    cursor = page["next_cursor"]
    while cursor is not None:
        later = owner.get("/inbox", params={"limit": 10, "cursor": cursor}).json()
        rest += [t["thread_id"] for t in later["threads"]]
        cursor = later["next_cursor"]
    assert rest == [t for t in expected[10:] if t != moved]
    assert _threads(owner, limit=1) == [moved]

    # A scan bound far below the mailbox: pages may be short, the walk is the same.
    tight = InboxQueries(box.engine, scan_rows=7)
    scope = tight.scope(app.state.auth.users.get_user(OWNER))
    for filters in (InboxFilters(), InboxFilters(unread=True), InboxFilters(starred=True)):
        full = InboxQueries(box.engine).page(scope, filters, limit=100)
        assert full.next_cursor is None
        got: list[int] = []
        cursor = None
        pages = 0
        while True:
            part = tight.page(scope, filters, limit=5, cursor=cursor)
            assert len(part.threads) <= 5
            got += [t.thread_id for t in part.threads]
            pages += 1
            cursor = part.next_cursor
            if cursor is None:
                break
        assert got == [t.thread_id for t in full.threads], filters
        assert pages > len(got) // 5


def test_team_inbox_membership_sharing_and_metadata_viewers(
    app: FastAPI, admin: TestClient
) -> None:
    teams = TeamStore(app.state.crm.engine)
    people = {
        who: user_client(app, f"{who}@example.test")
        for who in ("owner", "mate", "support", "stranger")
    }
    users = app.state.auth.users
    uid = {who: users.get_user(f"{who}@example.test").id for who in people}
    sales, support = teams.create("Sales"), teams.create("Support")
    for team, who in ((sales, "owner"), (sales, "mate"), (support, "support")):
        teams.add_member(team.id, uid[who])
    own = Mailbox(app, "own", OWNER)
    desk = Mailbox(app, "desk", OWNER)
    teams.set_account_sharing("desk", team_id=support.id)
    t_own, t_desk = own.thread("own thread"), desk.thread("desk thread")
    own.message(t_own, 1, "inbox", attachment=True)
    desk.message(t_desk, 2, "inbox", flags=())

    # The team inbox is the team's: not in its owner's personal inbox.
    assert _threads(people["owner"]) == [t_own]
    assert _threads(people["support"], f"/teams/{support.id}/inbox") == [t_desk]
    assert _threads(people["support"]) == []
    assert _threads(admin, f"/teams/{support.id}/inbox", unread=True) == [t_desk]
    assert _threads(people["support"], account="desk") == [t_desk]
    for who in ("mate", "stranger", "owner"):  # not in Support
        refused = people[who].get(f"/teams/{support.id}/inbox")
        assert refused.status_code == 404 and "desk" not in refused.text, who
    assert _threads(people["mate"], f"/teams/{sales.id}/inbox") == []  # Sales has none
    wrong = people["support"].get(f"/teams/{support.id}/inbox", params={"account": "own"})
    assert wrong.status_code == 404

    # Shared with the team: a teammate opens it by name, it stays out of their own inbox.
    teams.set_account_sharing("own", sharing="team")
    assert _threads(people["mate"]) == []
    shared = people["mate"].get("/inbox", params={"account": "own"}).json()["threads"]
    assert [(t["thread_id"], t["snippet"], t["has_attachments"]) for t in shared] == [
        (t_own, "snippet of 1", True)
    ]
    # Metadata only: the threads, counts and participants, never a snippet or attachment mark.
    teams.set_account_sharing("own", sharing="metadata")
    meta = people["mate"].get("/inbox", params={"account": "own"})
    assert meta.status_code == 200
    (item,) = meta.json()["threads"]
    assert item["thread_id"] == t_own and item["message_count"] == 1
    assert not {"snippet", "has_attachments"} & set(item)
    assert "snippet of" not in meta.text
    for probe in ({"has_attachment": True}, {"contact_id": 1}, {"deal_id": 1}):
        answer = people["mate"].get("/inbox", params={"account": "own", **probe})
        assert answer.status_code == 403, probe
    assert (
        people["mate"].get("/inbox", params={"account": "own", "unread": False}).status_code == 200
    )
    # Someone of another team: as for an account that does not exist.
    hidden = people["stranger"].get("/inbox", params={"account": "own"})
    ghost = people["stranger"].get("/inbox", params={"account": "ghost"})
    assert hidden.status_code == ghost.status_code == 404
    assert hidden.json()["detail"].replace("own", "ghost") == ghost.json()["detail"]
    assert _threads(people["stranger"]) == []
