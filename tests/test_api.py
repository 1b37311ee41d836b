"""The JSON API through FastAPI's TestClient, on SQLite and PostgreSQL."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from correspond.api import create_app
from correspond.settings import Settings
from correspond.store import Store
from helpers import folder_spec

PASSWORD = "api-Pa55word!"


@pytest.fixture
def client(store: Store, store_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(store_settings, store=store)) as c:
        yield c


def new_account(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "work",
        "email": "me@example.test",
        "imap_host": "imap.example.test",
        "password": PASSWORD,
    }
    body.update(overrides)
    return body


def test_health(client: TestClient, store: Store) -> None:
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "database": store.dialect}


def test_create_get_list_delete(client: TestClient) -> None:
    created = client.post("/accounts", json=new_account(imap_security="tls"))
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["name"] == "work"
    assert body["imap"] == {"host": "imap.example.test", "port": 993, "security": "tls"}
    assert body["has_password"] is True
    assert "password" not in body
    assert PASSWORD not in created.text

    got = client.get("/accounts/work")
    assert got.status_code == 200 and got.json() == body
    listed = client.get("/accounts")
    assert [a["name"] for a in listed.json()] == ["work"]
    assert PASSWORD not in listed.text

    assert client.delete("/accounts/work").status_code == 204
    assert client.get("/accounts/work").status_code == 404
    assert client.delete("/accounts/work").status_code == 404
    assert client.get("/accounts").json() == []


def test_errors_are_clear(client: TestClient) -> None:
    assert client.post("/accounts", json=new_account()).status_code == 201
    dup = client.post("/accounts", json=new_account())
    assert dup.status_code == 400
    assert dup.json()["error"] == "ConfigError" and "already exists" in dup.json()["detail"]

    missing = client.post("/accounts", json=new_account(name="x", imap_host=None))
    assert missing.status_code == 400 and "imap_host" in missing.json()["detail"]

    unknown_field = client.post("/accounts", json=new_account(name="y", secret_key="z"))
    assert unknown_field.status_code == 422
    bad_name = client.post("/accounts", json=new_account(name="has space"))
    assert bad_name.status_code == 422
    plain = client.post("/accounts", json=new_account(name="p", imap_security="plain"))
    assert plain.status_code == 400 and "plaintext" in plain.json()["detail"]
    not_found = client.get("/accounts/nope")
    assert not_found.status_code == 404
    assert not_found.json() == {
        "detail": "no account named 'nope'",
        "error": "NotFound",
        "transient": False,
    }


def test_password_is_write_only_in_openapi(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    assert "password" in components["AccountCreate"]["properties"]
    assert "password" not in components["AccountPublic"]["properties"]
    paths = set(schema["paths"])
    assert {
        "/health",
        "/accounts",
        "/accounts/{name}",
        "/accounts/{name}/test",
        "/accounts/{name}/folders",
        "/accounts/{name}/folders/refresh",
        "/accounts/{name}/folders/selection",
    } <= paths
    assert client.get("/docs").status_code == 200


def test_folders_and_selection(client: TestClient, store: Store) -> None:
    assert client.post("/accounts", json=new_account()).status_code == 201
    assert client.get("/accounts/work/folders").json() == []
    store.sync_folders(
        "work",
        [
            folder_spec("INBOX", "inbox"),
            folder_spec("Sent", "sent"),
            folder_spec("Archive/2024"),
            folder_spec("Entwürfe", raw=b"Entw&APw-rfe"),
            folder_spec("Entwürfe", raw="Entwürfe".encode()),
            folder_spec("[Gmail]", selectable=False),
        ],
    )
    folders = client.get("/accounts/work/folders").json()
    assert [f["name"] for f in folders][:2] == ["INBOX", "Sent"]
    assert all(f["selected"] == f["selectable"] for f in folders)
    twins = [f for f in folders if f["name"] == "Entwürfe"]
    assert {t["remote_name"] for t in twins} == {"Entw&APw-rfe", "Entw\\xc3\\xbcrfe"}

    r = client.put("/accounts/work/folders/selection", json={"folders": ["INBOX", twins[0]["id"]]})
    assert r.status_code == 200, r.text
    assert {f["id"] for f in r.json() if f["selected"]} == {folders[0]["id"], twins[0]["id"]}
    account = client.get("/accounts/work").json()
    assert (account["folders_mode"], account["selected_folder_count"]) == ("selected", 2)
    assert account["folder_count"] == 6

    ambiguous = client.put("/accounts/work/folders/selection", json={"folders": ["Entwürfe"]})
    assert ambiguous.status_code == 400 and "choose by id" in ambiguous.json()["detail"]
    noselect = client.put("/accounts/work/folders/selection", json={"folders": ["[Gmail]"]})
    assert noselect.status_code == 400
    unknown = client.put("/accounts/work/folders/selection", json={"folders": ["Nope"]})
    assert unknown.status_code == 404
    empty = client.put("/accounts/work/folders/selection", json={})
    assert empty.status_code == 400

    everything = client.put("/accounts/work/folders/selection", json={"all": True})
    assert sum(f["selected"] for f in everything.json()) == 5
    assert client.get("/accounts/work").json()["folders_mode"] == "all"
    assert client.get("/accounts/nope/folders").status_code == 404


def test_connection_test_failure_is_a_normal_answer(client: TestClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    body = new_account(imap_host="127.0.0.1", imap_port=port)
    assert client.post("/accounts", json=body).status_code == 201
    r = client.post("/accounts/work/test")
    assert r.status_code == 200
    report = r.json()
    assert report["ok"] is False and report["problem"] == "refused"
    assert str(port) in report["message"]
    account = client.get("/accounts/work").json()
    assert account["state"] == "disconnected"
    assert account["state_message"].startswith("Disconnected")


def test_refresh_against_unreachable_server_is_502(client: TestClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    body = new_account(imap_host="127.0.0.1", imap_port=port)
    assert client.post("/accounts", json=body).status_code == 201
    r = client.post("/accounts/work/folders/refresh")
    assert r.status_code == 502
    assert r.json()["error"] == "ConnectionRefused" and r.json()["transient"] is True
