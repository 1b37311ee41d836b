"""``POST /messages/bulk``: one action on many messages, each id checked on its own (SQLite and
PostgreSQL, over a real backfilled mirror). A member of another team gets a 404 entry for
every id, word for word as for an id that does not exist, and changes nothing; a teammate
who sees the account as metadata only gets 403 entries; the count is bounded."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from correspond.api import create_app
from correspond.settings import Settings
from correspond.store import Store
from correspond.store.outbox import MAX_BULK
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.mirror import SeededMirror, seed_mirror
from helpers import authed_client, user_client

GHOST = 987654321


@pytest.fixture
def mirror(
    store: Store, store_settings: Settings, dovecot: DovecotServer, imap_user: ImapUser
) -> SeededMirror:
    return seed_mirror(store, store_settings, dovecot, imap_user)


@pytest.fixture
def app(store: Store, store_settings: Settings, mirror: SeededMirror) -> FastAPI:
    return create_app(store_settings, store=store)


@pytest.fixture
def admin(app: FastAPI) -> Iterator[TestClient]:
    with authed_client(app) as c:
        yield c


def message_ids(admin: TestClient, mirror: SeededMirror) -> list[int]:
    page = admin.get(f"/accounts/{mirror.account}/messages", params={"limit": 50}).json()
    ids = [int(m["id"]) for m in page["messages"]]
    assert len(ids) >= 3
    return ids


def entries(answer: Any) -> dict[int, dict[str, Any]]:
    assert answer.status_code == 200, answer.text
    return {int(e["id"]): e for e in answer.json()["results"]}


def test_bulk_acts_on_each_visible_id(admin: TestClient, mirror: SeededMirror) -> None:
    ids = message_ids(admin, mirror)[:3]
    answer = admin.post("/messages/bulk", json={"action": "star", "ids": [*ids, GHOST, ids[0]]})
    body = answer.json()
    assert body["action"] == "star" and body["done"] == 4, body  # ids[0] twice: acted on once
    found = entries(answer)
    for mid in ids:
        entry = found[mid]
        assert entry["status"] == 200 and entry["error"] is None
        assert "\\Flagged" in entry["message"]["flags"]
        assert [a["kind"] for a in entry["message"]["pending_actions"]] == ["star"]
        assert "\\Flagged" in admin.get(f"/messages/{mid}").json()["flags"]
    assert found[GHOST] == {
        "id": GHOST,
        "status": 404,
        "error": f"no message with id {GHOST}",
        "message": None,
    }
    # Results come in the order given, one per id given.
    assert [e["id"] for e in body["results"]] == [*ids, GHOST, ids[0]]

    # Move: needs a folder, of the message's own account.
    assert admin.post("/messages/bulk", json={"action": "move", "ids": ids}).status_code == 422
    folders = admin.get(f"/accounts/{mirror.account}/folders").json()
    target = next(f for f in folders if f["name"] != "INBOX" and f["selectable"])
    moved = entries(
        admin.post(
            "/messages/bulk",
            json={"action": "move", "ids": ids[:1], "folder_id": target["id"]},
        )
    )
    assert moved[ids[0]]["status"] == 200
    assert moved[ids[0]]["message"]["pending_actions"][0]["payload"] == {
        "to_folder_id": target["id"]
    }
    nowhere = entries(
        admin.post("/messages/bulk", json={"action": "move", "ids": ids[:1], "folder_id": GHOST})
    )
    assert nowhere[ids[0]]["status"] == 422 and "no such folder" in nowhere[ids[0]]["error"]


def test_bulk_is_bounded_and_validated(admin: TestClient, mirror: SeededMirror) -> None:
    too_many = admin.post(
        "/messages/bulk", json={"action": "read", "ids": list(range(1, MAX_BULK + 2))}
    )
    assert too_many.status_code == 422
    assert admin.post("/messages/bulk", json={"action": "read", "ids": []}).status_code == 422
    assert admin.post("/messages/bulk", json={"action": "nuke", "ids": [1]}).status_code == 422
    big = admin.post("/messages/bulk", json={"action": "read", "ids": [2**63]})
    assert big.status_code == 422
    # The most allowed is fine (all unknown here: 404 entries, nothing else).
    full = admin.post(
        "/messages/bulk", json={"action": "read", "ids": list(range(1, MAX_BULK + 1))}
    )
    assert full.status_code == 200 and len(full.json()["results"]) == MAX_BULK


def test_another_team_gets_404s_and_a_metadata_viewer_403s(
    app: FastAPI, admin: TestClient, mirror: SeededMirror
) -> None:
    ids = message_ids(admin, mirror)[:3]
    auth = app.state.auth
    owner = user_client(app, "owner@example.test")
    teammate = user_client(app, "teammate@example.test")
    outsider = user_client(app, "outsider@example.test")
    uid = {
        e: auth.users.get_user(f"{e}@example.test").id for e in ("owner", "teammate", "outsider")
    }
    auth.users.set_account_owner(mirror.account, uid["owner"])
    sales = admin.post("/teams", json={"name": "Sales"}).json()["id"]
    support = admin.post("/teams", json={"name": "Support"}).json()["id"]
    for team, who in ((sales, "owner"), (sales, "teammate"), (support, "outsider")):
        assert admin.put(f"/teams/{team}/members/{uid[who]}").status_code == 200
    assert (
        owner.patch(f"/accounts/{mirror.account}", json={"sharing": "metadata"}).status_code == 200
    )
    before = {mid: admin.get(f"/messages/{mid}").json()["flags"] for mid in ids}

    # The outsider (another team): every id is a 404, exactly as an id that does not exist.
    seen = entries(outsider.post("/messages/bulk", json={"action": "star", "ids": [*ids, GHOST]}))
    for mid in ids:
        ghost = {**seen[GHOST], "id": mid, "error": f"no message with id {mid}"}
        assert seen[mid] == ghost
    assert outsider.post("/messages/bulk", json={"action": "star", "ids": ids}).json()["done"] == 0
    # The teammate sees the account as metadata only: 403 per id, nothing changes.
    shared = entries(teammate.post("/messages/bulk", json={"action": "star", "ids": ids}))
    assert {e["status"] for e in shared.values()} == {403}
    assert {mid: admin.get(f"/messages/{mid}").json()["flags"] for mid in ids} == before
    assert all(admin.get(f"/messages/{mid}/actions").json()["pending_actions"] == [] for mid in ids)
    # The owner acts on their own messages.
    mine = entries(owner.post("/messages/bulk", json={"action": "star", "ids": ids}))
    assert {e["status"] for e in mine.values()} == {200}
    # Shared in full, the teammate may act too.
    assert owner.patch(f"/accounts/{mirror.account}", json={"sharing": "team"}).status_code == 200
    theirs = entries(teammate.post("/messages/bulk", json={"action": "unstar", "ids": ids}))
    assert {e["status"] for e in theirs.values()} == {200}
