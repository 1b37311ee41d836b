"""Notifications on SQLite and PostgreSQL: the fan-out (who is told, what counts as new mail,
crash-safety, late commits, racing passes) and the API (pages, unread, read, read-all, another
member's view), with ``authed_client``."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import correspond.store.notifications as notifications_module
from correspond.api import create_app
from correspond.auth import AuthService
from correspond.errors import StoreError
from correspond.notify import NotificationHub, TooManyStreams
from correspond.settings import Settings
from correspond.store import Store
from correspond.store.message_tables import MessageRow
from correspond.store.notifications import Notification, NotificationStore
from correspond.store.notify_tables import FanoutSeenRow, FanoutStateRow, NotificationRow
from correspond.store.teams import TeamStore
from correspond.store.users import User
from correspond.store.visibility import (
    account_audience,
    audience_params,
    viewer_params,
    visible_accounts,
)
from correspond.store.webhooks import WebhookStore
from correspond.testing.synthetic import make_account_with_folders
from helpers import authed_client, user_client

pytest_plugins = ["tests.conftest_store"]

NOW = datetime.now(UTC).replace(microsecond=0)


def add_user(store: Store, email: str, *, admin: bool = False) -> User:
    auth = AuthService(store, Settings(password_hash_time_cost=1, password_hash_memory_kib=1024))
    user, _ = auth.create_user(email, None, admin=admin)
    return user


def add_account(store: Store, name: str, owner: User) -> int:
    account_id, _ = make_account_with_folders(store.engine, name)
    AuthService(store, Settings()).users.set_account_owner(name, owner.id)
    return account_id


def add_message(
    store: Store,
    account_id: int,
    key: str,
    *,
    arrived: datetime | None = None,
    direction: str = "inbound",
    message_id: int | None = None,
) -> int:
    """A stored message as ingest leaves it (only what the fan-out reads matters here)."""
    arrived = arrived or datetime.now(UTC)
    with Session(store.engine) as s, s.begin():
        row = MessageRow(
            account_id=account_id,
            dedupe_key=key,
            subject=f"subject {key}",
            from_email="someone@example.com",
            internaldate=arrived,
            date=arrived,
            sort_at=arrived,
            direction=direction,
            snippet=f"snippet {key}",
        )
        if message_id is not None:
            row.id = message_id
        s.add(row)
        s.flush()
        return row.id


def notified(store: Store) -> list[tuple[int, int]]:
    with Session(store.engine) as s:
        rows = s.execute(
            select(NotificationRow.user_id, NotificationRow.message_id).order_by(NotificationRow.id)
        ).all()
        return [(r[0], r[1]) for r in rows]


@pytest.fixture
def notes(store: Store) -> NotificationStore:
    return NotificationStore(store.engine)


def test_owner_is_told_of_new_received_mail_only(store: Store, notes: NotificationStore) -> None:
    ann, bob = add_user(store, "ann@example.test"), add_user(store, "bob@example.test")
    add_user(store, "root@example.test", admin=True)
    ann_box = add_account(store, "ann-box", ann)
    bob_box = add_account(store, "bob-box", bob)
    new = add_message(store, ann_box, "new")
    sent = add_message(store, ann_box, "sent", direction="outbound")
    old = add_message(store, ann_box, "old", arrived=NOW - timedelta(days=30))  # a backfill
    bobs = add_message(store, bob_box, "bobs")
    result = notes.fan_out()
    assert result.examined == 4 and result.notified == 2
    # Ann hears of her new received mail only; Bob of his; the admin of neither.
    assert notified(store) == [(ann.id, new), (bob.id, bobs)]
    assert sent and old
    assert notes.fan_out().examined == 0  # nothing is looked at twice


def test_upgrade_announces_nothing_already_stored(store: Store) -> None:
    with Session(store.engine) as s:
        watermark = s.execute(select(FanoutStateRow.watermark)).scalar_one()
    assert watermark == 0  # an empty store: the migration started at the newest id there was


def test_a_crash_mid_pass_repeats_it_without_duplicates(
    store: Store, notes: NotificationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ann = add_user(store, "ann@example.test")
    box = add_account(store, "ann-box", ann)
    ids = [add_message(store, box, f"m{i}") for i in range(5)]
    real = notifications_module.insert_ignoring_duplicates
    calls: list[Any] = []

    def crash_after_notifications(s: Session, table: Any, rows: list[dict[str, Any]]) -> int:
        if table.name == "notify_fanout_seen":
            written = s.execute(select(func.count()).select_from(NotificationRow)).scalar_one()
            calls.append(written)
            raise OSError("the process died here")  # after the notifications were written
        return real(s, table, rows)

    monkeypatch.setattr(
        notifications_module, "insert_ignoring_duplicates", crash_after_notifications
    )
    with pytest.raises(OSError):
        notes.fan_out()
    assert calls == [5]
    assert notified(store) == []  # the whole pass rolled back with the crash
    monkeypatch.setattr(notifications_module, "insert_ignoring_duplicates", real)
    assert notes.fan_out().notified == 5
    assert notes.fan_out().notified == 0
    assert notified(store) == [(ann.id, i) for i in ids]


def test_a_batch_committed_late_with_lower_ids_is_still_told(
    store: Store, notes: NotificationStore
) -> None:
    ann = add_user(store, "ann@example.test")
    box = add_account(store, "ann-box", ann)
    # PostgreSQL: a batch drew ids 1000-1001 but commits after one that drew 1002.
    later = add_message(store, box, "later", message_id=1002)
    notes.fan_out()
    early = add_message(store, box, "early", message_id=1000)
    assert notes.fan_out(rescan=False).notified == 0  # the cheap pass looks above 1002 only
    assert notes.fan_out().notified == 1
    assert sorted(m for _, m in notified(store)) == [early, later]
    # Once the grace period is over the watermark moves past them, and the seen list empties.
    notes.fan_out(now=datetime.now(UTC) + timedelta(seconds=120))
    with Session(store.engine) as s:
        assert s.execute(select(FanoutStateRow.watermark)).scalar_one() == later
        assert s.execute(select(func.count()).select_from(FanoutSeenRow)).scalar_one() == 0
    assert not notes.fanout_pending()
    add_message(store, box, "next", message_id=1003)
    assert notes.fan_out().notified == 1


def test_racing_passes_tell_each_message_once(store: Store) -> None:
    ann = add_user(store, "ann@example.test")
    box = add_account(store, "ann-box", ann)
    for i in range(40):
        add_message(store, box, f"m{i}")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            NotificationStore(store.engine).fan_out(limit=7)
            NotificationStore(store.engine).fan_out(limit=50)
        except StoreError as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    told = notified(store)
    assert len(told) == 40 and len(set(told)) == 40


# --- the API ----------------------------------------------------------------------------------


@pytest.fixture
def app(store: Store, store_settings: Settings) -> FastAPI:
    settings = store_settings.clone(password_hash_time_cost=1, password_hash_memory_kib=1024)
    return create_app(settings, store=store)


@pytest.fixture
def admin(app: FastAPI) -> Iterator[TestClient]:
    with authed_client(app) as client:
        yield client


def test_api_pages_counts_and_marks_read(
    app: FastAPI, admin: TestClient, store: Store, notes: NotificationStore
) -> None:
    me = admin.get("/session").json()
    owner = app.state.auth.users.get_user(me["email"])
    box = add_account(store, "mine", owner)
    ids = [add_message(store, box, f"m{i}") for i in range(5)]
    notes.fan_out()
    page = admin.get("/notifications", params={"limit": 2}).json()
    assert page["unread_count"] == 5
    assert [n["message_id"] for n in page["notifications"]] == ids[::-1][:2]
    first = page["notifications"][0]
    assert first["account"] == "mine" and first["subject"] == "subject m4"
    assert first["sender"]["email"] == "someone@example.com" and first["read_at"] is None
    seen = [n["message_id"] for n in page["notifications"]]
    while page["next_cursor"]:
        page = admin.get(
            "/notifications", params={"limit": 2, "cursor": page["next_cursor"]}
        ).json()
        seen += [n["message_id"] for n in page["notifications"]]
    assert seen == ids[::-1]
    read = admin.post(f"/notifications/{first['id']}/read")
    assert read.status_code == 200 and read.json()["read_at"] is not None
    assert admin.get("/notifications/unread-count").json() == {"unread_count": 4}
    unread = admin.get("/notifications", params={"unread": True}).json()
    assert first["id"] not in [n["id"] for n in unread["notifications"]]
    assert len(unread["notifications"]) == 4
    # "Mark all read" up to what the person saw: a later one stays unread.
    newest_seen = unread["notifications"][0]["id"]
    add_message(store, box, "later")
    notes.fan_out()
    marked = admin.post("/notifications/read-all", json={"up_to": newest_seen}).json()
    assert marked == {"marked": 4, "unread_count": 1}
    assert admin.post("/notifications/read-all").json() == {"marked": 1, "unread_count": 0}
    assert admin.get("/notifications", params={"cursor": "x1"}).status_code == 422


def test_another_member_gets_nothing_of_yours(
    app: FastAPI, admin: TestClient, store: Store, notes: NotificationStore
) -> None:
    with user_client(app, "ann@example.test") as ann, user_client(app, "bob@example.test") as bob:
        ann_user = app.state.auth.users.get_user("ann@example.test")
        box = add_account(store, "ann-box", ann_user)
        add_message(store, box, "private")
        notes.fan_out()
        mine = ann.get("/notifications").json()
        assert mine["unread_count"] == 1
        note_id = mine["notifications"][0]["id"]
        theirs = bob.get("/notifications").json()
        assert theirs == {"notifications": [], "next_cursor": None, "unread_count": 0}
        assert bob.post(f"/notifications/{note_id}/read").status_code == 404
        assert bob.post("/notifications/read-all").json()["marked"] == 0
        assert admin.get("/notifications").json()["notifications"] == []  # not the admin's mail
        assert ann.get("/notifications/unread-count").json() == {"unread_count": 1}


# --- streams: bounds and slow clients --------------------------------------------------------


def _note(note_id: int, user_id: int) -> Notification:
    return Notification(
        id=note_id,
        user_id=user_id,
        message_id=note_id,
        account="box",
        thread_id=None,
        subject="s",
        from_name=None,
        from_email=None,
        snippet="",
        message_date=None,
        created_at=NOW,
        read_at=None,
    )


def test_streams_are_bounded_and_a_slow_one_is_dropped(store: Store) -> None:
    settings = Settings(notify_max_streams_per_user=2, notify_max_streams=3, notify_stream_queue=4)
    hub = NotificationHub(
        NotificationStore(store.engine),
        WebhookStore(store.engine, store.secrets),
        settings,
        postgres=False,
    )

    async def scenario() -> None:
        first = hub.open(1, False, 0)
        hub.open(1, False, 0)
        with pytest.raises(TooManyStreams, match="this user"):
            hub.open(1, False, 0)
        other = hub.open(2, False, 0)
        with pytest.raises(TooManyStreams, match="this server"):
            hub.open(3, False, 0)
        hub.close(other)
        third = hub.open(3, False, 0)  # room again
        hub.close(third)
        # A client that reads nothing: four events wait, the fifth drops it.
        for n in range(1, 5):
            first.offer(_note(n, 1))
        assert not first.dropped and first.queue.qsize() == 4
        first.offer(_note(5, 1))
        assert first.dropped
        first.offer(_note(6, 1))
        assert first.queue.qsize() == 4  # nothing more is kept for it
        # Another user's notification is not pushed (the query that reads them applies the
        # visibility rule: test_recipients_follow_the_teams_rule).
        fresh = hub.open(2, False, 0)
        fresh.offer(_note(7, 1))
        assert fresh.queue.qsize() == 0

    asyncio.run(scenario())


def test_too_many_streams_is_a_429(app: FastAPI, admin: TestClient) -> None:
    hub: NotificationHub = app.state.hub
    user_id = admin.get("/session").json()["id"]

    async def fill() -> None:
        for _ in range(app.state.settings.notify_max_streams_per_user):
            hub.open(user_id, True, 0)

    asyncio.run(fill())
    answer = admin.get("/notifications/stream")
    assert answer.status_code == 429 and answer.headers["retry-after"] == "5"
    assert answer.json()["error"] == "TooManyStreams"


def test_ids_freed_by_a_removed_account_are_told_when_reused(
    store: Store, notes: NotificationStore
) -> None:
    ann = add_user(store, "ann@example.test")
    old_box = add_account(store, "old-box", ann)
    first = add_message(store, old_box, "a")
    add_message(store, old_box, "b")
    notes.fan_out()
    notes.fan_out(now=datetime.now(UTC) + timedelta(seconds=120))  # the watermark moves past b
    store.remove_account("old-box")
    new_box = add_account(store, "new-box", ann)
    reused = add_message(store, new_box, "c")  # SQLite hands out b's id again, or a's
    assert store.dialect != "sqlite" or reused <= first + 1
    assert notes.fan_out().notified == 1
    assert notified(store) == [(ann.id, reused)]


# --- who is told: the teams rule ----------------------------------------------------------------


@dataclass(frozen=True)
class _AsMember:
    """A user asked of the rule's member form (an admin's own paths, without the admin power)."""

    id: int
    is_admin: bool = False
    disabled: bool = False


def _teams_world(store: Store) -> dict[str, Any]:
    """Ann shares her box with her team in full, Bob his as metadata only; Root is an admin in
    their team, Eve an admin in no team who owns the support team's inbox; Frank is in the
    team but disabled; Carol is in the support team; Olga in no team."""
    users = {
        name: add_user(store, f"{name}@example.test", admin=name in ("root", "eve"))
        for name in ("ann", "bob", "carol", "frank", "olga", "root", "eve")
    }
    teams = TeamStore(store.engine)
    sales, support = teams.create("sales"), teams.create("support")
    for name in ("ann", "bob", "frank", "root"):
        teams.add_member(sales.id, users[name].id)
    teams.add_member(support.id, users["carol"].id)
    boxes = {
        "ann-box": add_account(store, "ann-box", users["ann"]),
        "bob-box": add_account(store, "bob-box", users["bob"]),
        "support-box": add_account(store, "support-box", users["eve"]),
        "olga-box": add_account(store, "olga-box", users["olga"]),
    }
    teams.set_account_sharing("ann-box", sharing="team")
    teams.set_account_sharing("bob-box", sharing="metadata")
    teams.set_account_sharing("support-box", team_id=support.id)
    AuthService(store, Settings()).users.set_disabled("frank@example.test", True)
    return {"users": users, "boxes": boxes, "teams": teams}


def test_recipients_follow_the_teams_rule(store: Store, notes: NotificationStore) -> None:
    world = _teams_world(store)
    users, boxes = world["users"], world["boxes"]
    ids = {user.id: name for name, user in users.items()}
    sent = {box: add_message(store, account_id, box) for box, account_id in boxes.items()}
    assert notes.fan_out().notified == 9
    told: dict[str, set[str]] = {}
    for user_id, message_id in notified(store):
        box = next(b for b, m in sent.items() if m == message_id)
        told.setdefault(box, set()).add(ids[user_id])
    assert told == {
        # owner, a teammate it is shared with, an admin who is a teammate; not Frank (disabled)
        "ann-box": {"ann", "bob", "root"},
        "bob-box": {"bob", "ann", "root"},  # Ann sees it as metadata only
        "support-box": {"eve", "carol"},  # its owner and the inbox's team
        "olga-box": {"olga"},
    }
    # Metadata-only: told, but without the snippet; the others see it.
    ann = users["ann"]
    page = notes.page(ann.id, is_admin=False)
    by_box = {n.account: n for n in page.items}
    assert by_box["bob-box"].access == "metadata" and by_box["bob-box"].snippet == ""
    assert by_box["ann-box"].access == "full" and by_box["ann-box"].snippet == "snippet ann-box"
    root_page = notes.page(users["root"].id, is_admin=True)
    assert {n.snippet for n in root_page.items} == {"snippet ann-box", "snippet bob-box"}
    # The live read applies the rule per row too; once Ann stops sharing, Bob no longer sees
    # her notification (stored, hidden), live or stored.
    live = notes.after({ann.id, users["bob"].id}, 0)
    assert {(ids[n.user_id], n.account, n.snippet) for n in live} == {
        ("ann", "ann-box", "snippet ann-box"),
        ("ann", "bob-box", ""),
        ("bob", "ann-box", "snippet ann-box"),
        ("bob", "bob-box", "snippet bob-box"),
    }
    world["teams"].set_account_sharing("ann-box", sharing="private")
    bob = users["bob"]
    assert [n.account for n in notes.after({bob.id}, 0)] == ["bob-box"]
    assert [n.account for n in notes.page(bob.id, is_admin=False).items] == ["bob-box"]


def test_the_audience_is_the_rule_asked_per_viewer(store: Store) -> None:
    world = _teams_world(store)
    users, boxes = world["users"], world["boxes"]
    with Session(store.engine) as s:
        got = {
            tuple(r) for r in s.execute(account_audience(), audience_params(boxes.values())).all()
        }
        expected: set[tuple[int, int, str]] = set()
        for name, user in users.items():
            if name == "frank":  # disabled: sees nothing
                continue
            viewer = _AsMember(user.id)
            visible = visible_accounts(viewer)
            for account_id, access, _manage in s.execute(
                select(visible), viewer_params(viewer)
            ).all():
                expected.add((account_id, user.id, "full" if user.is_admin else str(access)))
    assert got == expected
    assert (boxes["bob-box"], users["ann"].id, "metadata") in got


def test_a_deleted_message_leaves_the_notifications_until_restored(
    store: Store, notes: NotificationStore
) -> None:
    from correspond.store.outbox import OutboxStore

    ann = add_user(store, "ann@example.test")
    box = add_account(store, "ann-box", ann)
    kept, gone = add_message(store, box, "kept"), add_message(store, box, "gone")
    notes.fan_out()
    page = notes.page(ann.id, is_admin=False)
    assert {n.message_id for n in page.items} == {kept, gone} and page.unread == 2
    outbox = OutboxStore(store.engine)
    outbox.record(gone, "delete", user_id=ann.id)
    page = notes.page(ann.id, is_admin=False)
    assert {n.message_id for n in page.items} == {kept} and page.unread == 1
    assert notes.unread_count(ann.id, is_admin=False) == 1
    assert [n.message_id for n in notes.after([ann.id], 0)] == [kept]
    outbox.record(gone, "restore", user_id=ann.id)
    assert notes.page(ann.id, is_admin=False).unread == 2
