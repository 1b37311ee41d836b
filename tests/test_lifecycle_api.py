"""Disconnect, reconnect and removal through the API (SQLite and PostgreSQL): each says what it
removes before it does it (``?dry_run=true``), a disconnect keeps the account and its history,
a reconnect needs the password, and the states that clash are 409s."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from correspond.api import create_app
from correspond.settings import Settings
from correspond.store import Store
from correspond.store.tables import AccountRow
from helpers import authed_client, folder_spec

PASSWORD = "api-Pa55word!"


@pytest.fixture
def client(store: Store, store_settings: Settings) -> Iterator[TestClient]:
    with authed_client(create_app(store_settings, store=store)) as c:
        yield c


def add(client: TestClient, store: Store) -> None:
    body: dict[str, Any] = {
        "name": "work",
        "email": "me@example.test",
        "imap_host": "imap.example.test",
        "password": PASSWORD,
    }
    assert client.post("/accounts", json=body).status_code == 201
    store.sync_folders("work", [folder_spec("INBOX", "inbox"), folder_spec("Sent", "sent")])


def stored_secret(store: Store) -> bytes | None:
    with Session(store.engine) as s:
        return s.scalar(select(AccountRow.secret_encrypted).where(AccountRow.name == "work"))


def test_disconnect_previews_then_removes_credentials_and_folders(
    client: TestClient, store: Store
) -> None:
    add(client, store)
    preview = client.post("/accounts/work/disconnect", params={"dry_run": "true"})
    assert preview.status_code == 200, preview.text
    plan = preview.json()
    assert plan["dry_run"] is True and plan["action"] == "disconnect"
    assert plan["removed"] == {
        "credentials": True,
        "folders": 2,
        "locations": 0,
        "pending_actions": 0,
    }
    assert plan["kept"] == {"messages": 0, "threads": 0, "messages_on_timelines": 0}
    assert "would remove the stored password, 2 folder(s)" in plan["summary"]
    assert plan["result"] is None
    # The preview changed nothing.
    assert stored_secret(store) is not None
    assert len(client.get("/accounts/work/folders").json()) == 2

    done = client.post("/accounts/work/disconnect")
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["dry_run"] is False and body["removed"]["folders"] == 2
    account = body["result"]
    assert account["disconnected_at"] is not None
    assert account["has_password"] is False and account["state"] == "paused"
    assert account["folder_count"] == 0
    assert "Disconnected on" in account["state_detail"]
    assert stored_secret(store) is None
    assert client.get("/accounts/work/folders").json() == []
    # Still there, to reconnect or remove.
    assert client.get("/accounts/work").json()["disconnected_at"] is not None

    # What clashes with a disconnected account is a 409 saying what to do.
    again = client.post("/accounts/work/disconnect")
    assert again.status_code == 409 and "already disconnected" in again.json()["detail"]
    for verb in ("pause", "resume"):
        r = client.post(f"/accounts/work/{verb}")
        assert r.status_code == 409 and "reconnect" in r.json()["detail"], verb

    # A password alone does not bring it back; the connection test contacts nothing.
    patched = client.patch("/accounts/work", json={"password": PASSWORD})
    assert patched.status_code == 409 and "reconnect" in patched.json()["detail"]
    tested = client.post("/accounts/work/test").json()
    assert tested["ok"] is False and "disconnected" in tested["message"]

    # The same address under a new name would mirror it all again: refused.
    other = {"name": "work2", "email": "ME@example.test", "imap_host": "imap.example.test"}
    clash = client.post("/accounts", json={**other, "password": PASSWORD})
    assert clash.status_code == 409 and "reconnect it" in clash.json()["detail"]

    # Reconnect: needs the password; the account waits for a worker to backfill it.
    assert client.post("/accounts/work/reconnect", json={}).status_code == 422
    back = client.post("/accounts/work/reconnect", json={"password": PASSWORD})
    assert back.status_code == 200, back.text
    assert PASSWORD not in back.text
    account = back.json()
    assert account["disconnected_at"] is None and account["has_password"] is True
    assert account["state"] == "connecting"
    assert stored_secret(store) is not None
    twice = client.post("/accounts/work/reconnect", json={"password": PASSWORD})
    assert twice.status_code == 409 and "not disconnected" in twice.json()["detail"]


def test_delete_dry_run_says_what_goes_and_changes_nothing(
    client: TestClient, store: Store
) -> None:
    add(client, store)
    preview = client.delete("/accounts/work", params={"dry_run": "true"})
    assert preview.status_code == 200, preview.text
    plan = preview.json()
    assert plan["action"] == "remove" and plan["dry_run"] is True
    assert plan["removed"]["folders"] == 2 and plan["removed"]["credentials"] is True
    assert plan["kept"] == {"messages": 0, "threads": 0, "messages_on_timelines": 0}
    assert plan["summary"].startswith("Removing work would remove everything")
    assert client.get("/accounts/work").status_code == 200
    assert client.delete("/accounts/work").status_code == 204
    assert client.get("/accounts/work").status_code == 404
    assert client.delete("/accounts/work", params={"dry_run": "true"}).status_code == 404
    assert client.post("/accounts/work/disconnect").status_code == 404


def test_lifecycle_routes_in_openapi(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "post" in paths["/accounts/{name}/disconnect"]
    assert "post" in paths["/accounts/{name}/reconnect"]
    params = {p["name"] for p in paths["/accounts/{name}"]["delete"].get("parameters", [])}
    assert "dry_run" in params
