"""The JSON API through FastAPI's TestClient, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from correspond.api import create_app
from correspond.rules.two_way import TOGGLE_DEFAULTS
from correspond.settings import Settings
from correspond.store import Store
from helpers import authed_client, folder_spec

PASSWORD = "api-Pa55word!"


@pytest.fixture
def client(store: Store, store_settings: Settings) -> Iterator[TestClient]:
    with authed_client(create_app(store_settings, store=store)) as c:
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


def messages_of(r: Any) -> dict[str, str]:
    """A 422 body as ``{"field.path": message}``."""
    assert r.status_code == 422, r.text
    return {".".join(map(str, e["loc"][1:])) or "body": e["msg"] for e in r.json()["detail"]}


def test_errors_are_clear(client: TestClient) -> None:
    assert client.post("/accounts", json=new_account()).status_code == 201
    dup = client.post("/accounts", json=new_account())
    assert dup.status_code == 409
    assert dup.json() == {
        "detail": "an account named 'work' already exists",
        "error": "Conflict",
        "transient": False,
    }

    unknown_field = client.post("/accounts", json=new_account(name="y", secret_key="z"))
    assert "secret_key" in messages_of(unknown_field)
    assert "name" in messages_of(client.post("/accounts", json=new_account(name="has space")))
    not_found = client.get("/accounts/nope")
    assert not_found.status_code == 404
    assert not_found.json() == {
        "detail": "no account named 'nope'",
        "error": "NotFound",
        "transient": False,
    }


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"imap_host": None}, "body", "missing: imap_host"),
        ({"imap_security": "plain"}, "body", "allow_plaintext"),
        ({"preset": "yahoo"}, "preset", "google"),
        ({"imap_security": "ssl"}, "imap_security", "starttls"),
        ({"imap_port": 70000}, "imap_port", "65535"),
        ({"email": "not-an-address"}, "email", "not an e-mail address"),
        ({"imap_host": "imap.example.test:993"}, "imap_host", "imap_port"),
        ({"imap_host": "imaps://imap.example.test"}, "imap_host", "not a URL"),
        ({"smtp_host": "smtp example"}, "smtp_host", "spaces"),
        ({"trusted_cert_pem": "not a certificate"}, "trusted_cert_pem", "PEM"),
        ({"window_days": 0}, "window_days", "greater than or equal to 1"),
        ({"password": ""}, "password", "at least 1"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(
    client: TestClient, overrides: dict[str, Any], field: str, words: str
) -> None:
    r = client.post("/accounts", json=new_account(**overrides))
    messages = messages_of(r)
    assert words in messages[field], messages
    assert PASSWORD not in r.text
    assert client.get("/accounts").json() == []  # nothing stored


def test_validation_errors_never_echo_the_password(client: TestClient) -> None:
    # A missing field or a cross-field rule makes pydantic quote the whole body as "input";
    # the API must not send the password back.
    body = new_account()
    del body["email"]
    for r in (
        client.post("/accounts", json=body),
        client.post("/accounts", json=new_account(imap_host=None)),
        client.post("/accounts", json=new_account(imap_security="plain")),
    ):
        assert r.status_code == 422
        assert PASSWORD not in r.text
        assert all(set(e) == {"type", "loc", "msg"} for e in r.json()["detail"])


def test_presets_through_the_api(client: TestClient) -> None:
    google = client.post("/accounts", json=new_account(name="g", preset="google", imap_host=None))
    assert google.status_code == 201, google.text
    assert google.json()["imap"] == {"host": "imap.gmail.com", "port": 993, "security": "tls"}
    other_tls = client.post("/accounts", json=new_account(name="o", imap_security="tls"))
    assert other_tls.json()["smtp"]["port"] == 465
    assert other_tls.json()["smtp"]["security"] == "tls"


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
    assert "patch" in schema["paths"]["/accounts/{name}"]
    assert "password" in components["AccountUpdate"]["properties"]
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
    # The answer has the same shape as GET (each folder with its counts), and the same content.
    assert r.json() == client.get("/accounts/work/folders").json()
    assert all(set(f["counts"]) >= {"messages", "unread"} for f in r.json())
    assert {f["id"] for f in r.json() if f["selected"]} == {folders[0]["id"], twins[0]["id"]}
    account = client.get("/accounts/work").json()
    assert (account["folders_mode"], account["selected_folder_count"]) == ("selected", 2)
    assert account["folder_count"] == 6

    def select(body: dict[str, Any]) -> Any:
        return client.put("/accounts/work/folders/selection", json=body)

    before = client.get("/accounts/work/folders").json()
    assert "choose by id" in messages_of(select({"folders": ["Entwürfe"]}))["folders"]
    assert "\\Noselect" in messages_of(select({"folders": ["INBOX", "[Gmail]"]}))["folders"]
    assert "no folder named 'Nope'" in messages_of(select({"folders": ["Nope"]}))["folders"]
    assert "no folder with id 999" in messages_of(select({"folders": [999]}))["folders"]
    assert "at least one folder" in messages_of(select({}))["body"]
    assert "not both" in messages_of(select({"all": True, "folders": ["INBOX"]}))["body"]
    assert client.get("/accounts/work/folders").json() == before  # a bad request changed nothing
    missing_account = client.put("/accounts/nope/folders/selection", json={"folders": ["INBOX"]})
    assert missing_account.status_code == 404

    everything = client.put("/accounts/work/folders/selection", json={"all": True})
    assert sum(f["selected"] for f in everything.json()) == 5
    assert everything.json() == client.get("/accounts/work/folders").json()
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


def test_patch_changes_only_what_is_sent(client: TestClient, store: Store) -> None:
    created = client.post("/accounts", json=new_account()).json()
    assert created["imap"] == {"host": "imap.example.test", "port": 143, "security": "starttls"}
    # The SMTP host of "other" defaults to the IMAP host, as on the command line.
    assert created["smtp"] == {"host": "imap.example.test", "port": 587, "security": "starttls"}

    r = client.patch("/accounts/work", json={"imap_port": 993})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["imap"] == {"host": "imap.example.test", "port": 993, "security": "tls"}
    assert body["smtp"] == created["smtp"]
    unchanged = {"email", "username", "window_days", "toggles", "has_trusted_cert", "created_at"}
    assert {k: body[k] for k in unchanged} == {k: created[k] for k in unchanged}
    assert client.get("/accounts/work").json() == body

    r = client.patch(
        "/accounts/work",
        json={
            "email": "new@example.test",
            "username": "me",
            "password": "n3w-Pa55word",
            "imap_host": "mail.example.test",
            "imap_security": "starttls",
            "imap_port": 10143,
            "smtp_host": "smtp.example.test",
            "smtp_port": 465,
            "trusted_cert_pem": PEM,
            "window_days": 7,
            "toggles": {"delete_remote_on_crm_delete": True},
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["email"], body["username"], body["window_days"]) == ("new@example.test", "me", 7)
    assert body["imap"] == {"host": "mail.example.test", "port": 10143, "security": "starttls"}
    assert body["smtp"] == {"host": "smtp.example.test", "port": 465, "security": "tls"}
    assert body["has_trusted_cert"] is True
    assert body["toggles"] == {**created["toggles"], "delete_remote_on_crm_delete": True}
    assert "password" not in body and "n3w-Pa55word" not in r.text
    assert store.account_secret("work") == "n3w-Pa55word"

    forgot = client.patch("/accounts/work", json={"trusted_cert_pem": None})
    assert forgot.json()["has_trusted_cert"] is False
    assert client.patch("/accounts/work", json={}).json() == forgot.json()


def test_toggles_default_and_patch_alone(client: TestClient, store: Store) -> None:
    created = client.post("/accounts", json=new_account()).json()
    assert created["toggles"] == TOGGLE_DEFAULTS
    store.set_account_state("work", "live", "Up to date")
    r = client.patch("/accounts/work", json={"toggles": {"delete_in_crm_on_remote_delete": True}})
    assert r.status_code == 200, r.text
    assert r.json()["toggles"] == {**TOGGLE_DEFAULTS, "delete_in_crm_on_remote_delete": True}
    # A toggle is no connection setting: the password and the state stay.
    assert store.get_account("work").state == "live"
    assert store.account_secret("work") == PASSWORD
    bad = client.patch("/accounts/work", json={"toggles": {"delete_in_crm_on_remote_delete": 3}})
    assert bad.status_code == 422


PEM = "-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n"


@pytest.mark.parametrize(
    ("patch", "field", "words"),
    [
        ({"imap_security": "plain"}, "body", "allow_plaintext"),
        ({"imap_host": "imap.example.test:993"}, "imap_host", "imap_port"),
        ({"imap_host": None}, "imap_host", "cannot be null"),
        ({"imap_port": 0}, "imap_port", "greater than or equal to 1"),
        ({"imap_security": "ssl"}, "imap_security", "starttls"),
        ({"email": "nobody"}, "email", "not an e-mail address"),
        ({"username": "   "}, "username", "user name is empty"),
        ({"trusted_cert_pem": "hello"}, "trusted_cert_pem", "PEM"),
        ({"window_days": 0}, "window_days", "greater than or equal to 1"),
        ({"toggles": {"nuke": True}}, "toggles", "unknown toggles: nuke"),
        ({"name": "renamed"}, "name", "Extra inputs"),
        ({"password": ""}, "password", "at least 1"),
    ],
)
def test_patch_refuses_bad_input_and_changes_nothing(
    client: TestClient, store: Store, patch: dict[str, Any], field: str, words: str
) -> None:
    assert client.post("/accounts", json=new_account()).status_code == 201
    before = client.get("/accounts/work").json()
    r = client.patch("/accounts/work", json={"password": "n3w-Pa55word", **patch})
    messages = messages_of(r)
    assert words in messages[field], messages
    assert "n3w-Pa55word" not in r.text  # never echoed, even for a cross-field rule
    assert all(set(e) == {"type", "loc", "msg"} for e in r.json()["detail"])
    assert client.get("/accounts/work").json() == before
    assert store.account_secret("work") == PASSWORD


def test_patch_unknown_account_is_404(client: TestClient) -> None:
    r = client.patch("/accounts/nope", json={"imap_port": 993})
    assert r.status_code == 404
    assert r.json() == {
        "detail": "no account named 'nope'",
        "error": "NotFound",
        "transient": False,
    }


@pytest.mark.parametrize("state", ["auth_failed", "error", "disconnected"])
def test_patch_of_connection_settings_retries_a_failed_account(
    client: TestClient, store: Store, state: str
) -> None:
    assert client.post("/accounts", json=new_account()).status_code == 201
    store.sync_folders("work", [folder_spec("INBOX", "inbox")])
    store.set_account_state("work", state, "LOGIN refused")
    window = client.patch("/accounts/work", json={"window_days": 30}).json()
    assert window["state"] == state  # not a connection setting
    fixed = client.patch("/accounts/work", json={"password": "n3w-Pa55word"}).json()
    assert fixed["state"] == "connecting"
    assert fixed["folder_count"] == 1  # synced data is kept
    store.set_account_state("work", "paused", "Paused by the user.")
    paused = client.patch("/accounts/work", json={"imap_security": "tls"}).json()
    assert paused["state"] == "paused" and paused["imap"]["port"] == 993


def test_docs_serve_their_assets_locally(client: TestClient) -> None:
    from correspond.api.app import DOCS_ASSETS_URL, docs_assets_dir

    pages = {path: client.get(path) for path in ("/docs", "/redoc")}
    for path, page in pages.items():
        assert page.status_code == 200, path
    # fastapi-offline is a dependency: its files must be found, or /docs needs the internet.
    assert docs_assets_dir() is not None
    for path, page in pages.items():
        refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert refs, page.text
        assert all(ref.startswith(DOCS_ASSETS_URL + "/") for ref in refs), (path, refs)
        assert "http://" not in page.text and "https://" not in page.text, path
        for ref in refs:
            asset = client.get(ref)
            assert asset.status_code == 200 and asset.content, ref
