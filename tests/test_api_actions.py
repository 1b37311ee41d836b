"""CRM actions on a message through the API (SQLite and PostgreSQL, over a real backfilled
mirror): the CRM copy changes at once and the answer carries the pending outbox rows. Who may
act is walked in tests/test_auth_api.py (401, 404 for others, 403 for metadata-only viewers);
the mailbox side in tests/test_outbox.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from correspond.api import create_app
from correspond.settings import Settings
from correspond.store import Store
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.mirror import SeededMirror, seed_mirror
from helpers import authed_client


@pytest.fixture
def mirror(
    store: Store, store_settings: Settings, dovecot: DovecotServer, imap_user: ImapUser
) -> SeededMirror:
    return seed_mirror(store, store_settings, dovecot, imap_user)


@pytest.fixture
def client(store: Store, store_settings: Settings, mirror: SeededMirror) -> Iterator[TestClient]:
    with authed_client(create_app(store_settings, store=store)) as c:
        yield c


def _inbox_message(client: TestClient, mirror: SeededMirror) -> dict[str, object]:
    page = client.get(f"/accounts/{mirror.account}/messages", params={"folder": "INBOX"}).json()
    message: dict[str, object] = page["messages"][0]
    return message


def test_actions_change_the_crm_and_queue_the_mailbox(
    client: TestClient, mirror: SeededMirror
) -> None:
    mid = _inbox_message(client, mirror)["id"]
    read = client.post(f"/messages/{mid}/read")
    assert read.status_code == 200, read.text
    body = read.json()
    assert body["id"] == mid and "\\Seen" in body["flags"] and body["state"] == "active"
    [pending] = body["pending_actions"]
    assert (pending["kind"], pending["state"], pending["attempts"]) == ("read", "pending", 0)
    assert "\\Seen" in client.get(f"/messages/{mid}").json()["flags"]

    star = client.post(f"/messages/{mid}/star").json()
    assert "\\Flagged" in star["flags"]
    assert [a["kind"] for a in star["pending_actions"]] == ["star", "read"]  # newest first

    # Archive: on by default both ways, so the INBOX copy is queued to move to Archive.
    archived = client.post(f"/messages/{mid}/archive").json()
    assert archived["state"] == "archived"
    assert archived["pending_actions"][0]["kind"] == "archive"
    # Delete with its toggle off (the default): the CRM state only, nothing queued.
    deleted = client.post(f"/messages/{mid}/delete").json()
    assert deleted["state"] == "deleted"
    assert deleted["pending_actions"][0]["kind"] == "archive"
    restored = client.post(f"/messages/{mid}/restore").json()
    assert restored["state"] == "active"
    assert client.get(f"/messages/{mid}/actions").json() == restored


def test_move_checks_the_folder(client: TestClient, mirror: SeededMirror) -> None:
    mid = _inbox_message(client, mirror)["id"]
    folders = client.get(f"/accounts/{mirror.account}/folders").json()
    target = next(f for f in folders if f["name"] != "INBOX" and f["selectable"])
    moved = client.post(f"/messages/{mid}/move", json={"folder_id": target["id"]})
    assert moved.status_code == 200, moved.text
    assert moved.json()["pending_actions"][0]["payload"] == {"to_folder_id": target["id"]}
    bad = client.post(f"/messages/{mid}/move", json={"folder_id": 987654321})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "folder_id"]
    assert client.post(f"/messages/{mid}/move", json={}).status_code == 422
    assert client.post("/messages/987654321/read").status_code == 404
    # Ids past the signed 64-bit range are a 422, not a database error.
    assert client.post(f"/messages/{2**63}/star").status_code == 422
    assert client.get(f"/messages/{2**63}/actions").status_code == 422
