"""Accounts against a real (private) Dovecot: connection test, folder refresh, selection.

Uses the ``dovecot`` / ``imap_user`` fixtures from tests/conftest.py and the store fixtures from
tests/conftest_store.py (so the store side runs on SQLite and PostgreSQL).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from correspond.accounts import AccountService, describe_state
from correspond.api import create_app
from correspond.cli import base as cli_base
from correspond.cli import main
from correspond.errors import AuthenticationFailed
from correspond.rules.presets import AccountChanges, draft_from_preset
from correspond.settings import Settings
from correspond.store import Store
from helpers import authed_client

pytestmark = pytest.mark.dovecot


def add_imap_account(
    service: AccountService,
    dovecot: Any,
    user: Any,
    *,
    name: str = "dove",
    password: str | None = None,
    tls: bool = False,
) -> None:
    draft = draft_from_preset(
        "other",
        name=name,
        email=f"{user.username}@example.test",
        username=user.username,
        imap_host=dovecot.host,
        imap_port=dovecot.tls_port if tls else dovecot.port,
        imap_security="tls" if tls else "starttls",
        trusted_cert_pem=dovecot.cert_pem,
    )
    service.add_account(draft, password if password is not None else user.password)


@pytest.fixture
def service(store: Store, store_settings: Settings) -> AccountService:
    return AccountService(store, store_settings.clone(imap_connect_timeout=10.0))


async def test_connection_test_passes(
    service: AccountService, dovecot: Any, imap_user: Any
) -> None:
    add_imap_account(service, dovecot, imap_user)
    report = await service.test_account("dove")
    assert report.ok, report.message
    assert "IMAP4REV1" in {c.upper() for c in report.capabilities}
    account = service.get_account("dove").account
    assert account.state == "connecting"
    assert account.state_detail == "Connection test passed."
    assert account.connected_at is not None


async def test_connection_test_over_implicit_tls(
    service: AccountService, dovecot: Any, imap_user: Any
) -> None:
    add_imap_account(service, dovecot, imap_user, tls=True)
    report = await service.test_account("dove")
    assert report.ok, report.message


@pytest.fixture
def sqlite_service(store_settings: Settings) -> Any:
    """A service on SQLite only, for tests whose store side needs no second backend."""
    from correspond.store import open_store

    store = open_store(store_settings)
    try:
        yield AccountService(store, store_settings.clone(imap_connect_timeout=10.0))
    finally:
        store.close()


async def test_wrong_password_marks_auth_failed(
    sqlite_service: AccountService, dovecot: Any, imap_user: Any
) -> None:
    service = sqlite_service
    add_imap_account(service, dovecot, imap_user, password="wrong-password")
    report = await service.test_account("dove")
    assert not report.ok
    assert report.problem == "auth_failed"
    account = service.get_account("dove").account
    assert account.state == "auth_failed"
    assert account.state_detail == report.message
    assert describe_state(account.state).startswith("Sign-in failed")
    with pytest.raises(AuthenticationFailed):
        await service.refresh_folders("dove")
    assert service.get_account("dove").account.state == "auth_failed"


async def test_refresh_assigns_roles_and_tracks_removals(
    service: AccountService, dovecot: Any, imap_user: Any
) -> None:
    add_imap_account(service, dovecot, imap_user)
    first = await service.refresh_folders("dove")
    roles = {f.role: f.name for f in first.folders if f.role}
    assert roles["inbox"] == "INBOX"
    assert {"sent", "drafts", "trash"} <= set(roles)
    assert first.added == len(first.folders) and first.removed == 0
    assert all(
        f.selected == (f.role not in ("junk", "trash", "drafts"))
        for f in first.folders
        if f.selectable
    )
    sent_name = roles["sent"]

    # A user folder merely named like the Sent folder, one level down, keeps no role.
    dovecot.create_mailbox(imap_user, "Clients")
    dovecot.create_mailbox(imap_user, f"Clients/{sent_name}")
    dovecot.create_mailbox(imap_user, "Projekte")
    second = await service.refresh_folders("dove")
    by_name = {f.name: f for f in second.folders}
    nested = [f for f in second.folders if f.name.endswith(sent_name) and f.name != sent_name]
    assert len(nested) == 1 and nested[0].role is None
    assert by_name[sent_name].role == "sent"
    assert second.added == 3
    projekte_id = by_name["Projekte"].id

    # Deleted on the server: marked removed, not deleted, and revived by the same raw name.
    conn = dovecot.imaplib_client(imap_user)
    try:
        typ, _ = conn.delete('"Projekte"')
        assert typ == "OK"
    finally:
        with contextlib.suppress(Exception):
            conn.logout()
    third = await service.refresh_folders("dove")
    assert third.removed == 1
    assert "Projekte" not in {f.name for f in third.folders}
    removed = [f for f in service.list_folders("dove", include_removed=True) if f.removed]
    assert [(f.name, f.id) for f in removed] == [("Projekte", projekte_id)]
    dovecot.create_mailbox(imap_user, "Projekte")
    fourth = await service.refresh_folders("dove")
    again = {f.name: f for f in fourth.folders}["Projekte"]
    assert again.id == projekte_id and again.removed is False

    summary = service.get_account("dove")
    assert summary.folder_count == len(fourth.folders)
    chosen = service.select_folders("dove", refs=["INBOX", sent_name])
    assert {f.name for f in chosen if f.selected} == {"INBOX", sent_name}


def test_cli_test_and_folders_refresh(
    dovecot: Any, imap_user: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("CORRESPOND_DATA_DIR", "CORRESPOND_DATABASE_URL", "CORRESPOND_SECRET_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cli_base, "_stdin_is_tty", lambda: False)
    cert = tmp_path / "dovecot.pem"
    cert.write_text(dovecot.cert_pem)
    data = str(tmp_path / "data")
    runner = CliRunner()
    added = runner.invoke(
        main,
        [
            "--data-dir",
            data,
            "account",
            "add",
            "dove",
            "--email",
            f"{imap_user.username}@example.test",
            "--username",
            imap_user.username,
            "--imap-host",
            dovecot.host,
            "--imap-port",
            str(dovecot.port),
            "--imap-security",
            "starttls",
            "--trust-cert",
            str(cert),
            "--password-stdin",
        ],
        input=imap_user.password + "\n",
    )
    assert added.exit_code == 0, added.output
    tested = runner.invoke(main, ["--data-dir", data, "account", "test", "dove"])
    assert tested.exit_code == 0, tested.output
    assert tested.output.startswith("OK:")
    assert imap_user.password not in tested.output
    refreshed = runner.invoke(
        main, ["--data-dir", data, "account", "folders", "dove", "--refresh", "--json"]
    )
    assert refreshed.exit_code == 0, refreshed.output
    folders = json.loads(refreshed.output)
    assert {"inbox", "sent"} <= {f["role"] for f in folders}
    table = runner.invoke(main, ["--data-dir", data, "account", "folders", "dove", "--refresh"])
    assert table.exit_code == 0 and "Refreshed: 0 new" in table.output and "INBOX" in table.output


def test_api_test_and_refresh(
    dovecot: Any, imap_user: Any, store: Store, store_settings: Settings
) -> None:
    with authed_client(create_app(store_settings, store=store)) as client:
        body = {
            "name": "dove",
            "email": f"{imap_user.username}@example.test",
            "username": imap_user.username,
            "password": imap_user.password,
            "imap_host": dovecot.host,
            "imap_port": dovecot.tls_port,
            "imap_security": "tls",
            "trusted_cert_pem": dovecot.cert_pem,
        }
        assert client.post("/accounts", json=body).status_code == 201
        report = client.post("/accounts/dove/test").json()
        assert report["ok"] is True, report
        refreshed = client.post("/accounts/dove/folders/refresh")
        assert refreshed.status_code == 200, refreshed.text
        result = refreshed.json()
        assert result["added"] == len(result["folders"]) > 0
        assert "inbox" in {f["role"] for f in result["folders"]}
        assert imap_user.password not in refreshed.text + client.get("/accounts").text


def test_cli_folder_selection_on_a_real_server(
    dovecot: Any, imap_user: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a newcomer does by hand: refresh, pick folders, try a parent-only folder."""
    for var in ("CORRESPOND_DATA_DIR", "CORRESPOND_DATABASE_URL", "CORRESPOND_SECRET_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cli_base, "_stdin_is_tty", lambda: False)
    # "Projects" exists only as the parent of "Projects/Sent": Dovecot lists it \NonExistent.
    # "Gesendet" is a user folder beside the real \Sent one: an ordinary folder of that name.
    for mailbox in ("Projects/Sent", "Gesendet"):
        dovecot.create_mailbox(imap_user, mailbox)
    cert = tmp_path / "dovecot.pem"
    cert.write_text(dovecot.cert_pem)
    base = ["--data-dir", str(tmp_path / "data")]
    runner = CliRunner()
    add = [
        *base, "account", "add", "dove", "--email", f"{imap_user.username}@example.test",
        "--username", imap_user.username, "--imap-host", dovecot.host,
        "--imap-port", str(dovecot.tls_port), "--imap-security", "tls",
        "--trust-cert", str(cert), "--password-stdin",
    ]  # fmt: skip
    assert runner.invoke(main, add, input=imap_user.password + "\n").exit_code == 0

    def folders(*extra: str) -> Any:
        result = runner.invoke(main, [*base, "account", "folders", "dove", *extra, "--json"])
        assert result.exit_code == 0, result.output
        return {f["name"]: f for f in json.loads(result.output)}

    listed = folders("--refresh")
    assert listed["Sent"]["role"] == "sent"
    assert listed["Gesendet"]["role"] is None and listed["Projects/Sent"]["role"] is None
    assert listed["Projects"]["selectable"] is False and listed["Projects"]["selected"] is False
    # By default: INBOX, Sent, Archive and the user's own folders; not Junk, Trash, Drafts.
    assert {n for n, f in listed.items() if f["selected"]} == {
        "INBOX", "Sent", "Archive", "Gesendet", "Projects/Sent"
    }  # fmt: skip
    for name in ("Junk", "Trash", "Drafts"):
        assert listed[name]["selectable"] and not listed[name]["selected"]
    # One flag away, added to the selection; the output says what the selection is now.
    added = runner.invoke(main, [*base, "account", "folders", "dove", "--select", "Junk"])
    assert added.exit_code == 0, added.output
    assert "Now syncing 6 folder(s): INBOX, Sent, Archive, " in added.output
    assert "Junk" in added.output.split("; not synced")[0]
    assert "not synced: " in added.output and "Trash" in added.output.split("not synced")[1]
    removed = runner.invoke(main, [*base, "account", "folders", "dove", "--unselect", "Junk"])
    assert removed.exit_code == 0, removed.output
    assert {n for n, f in folders().items() if f["selected"]} == {
        n for n, f in listed.items() if f["selected"]
    }

    refused = runner.invoke(main, [*base, "account", "folders", "dove", "--select", "Projects"])
    assert refused.exit_code == 2 and "\\NonExistent" in refused.output
    assert folders() == listed  # nothing changed

    picked = folders("--select", "INBOX", "--select", "Projects/Sent", "--only")
    assert {n for n, f in picked.items() if f["selected"]} == {"INBOX", "Projects/Sent"}
    listed_account = runner.invoke(main, [*base, "account", "list", "--json"])
    account = json.loads(listed_account.output)[0]
    assert (account["folders_mode"], account["selected_folder_count"]) == ("selected", 2)
    assert account["folder_count"] == len(listed)
    everything = folders("--all")
    assert {n for n, f in everything.items() if f["selected"]} == {
        n for n, f in listed.items() if f["selectable"]
    }
    assert imap_user.password not in listed_account.output


def test_cli_update_of_security_and_port_fixes_a_failing_account(
    dovecot: Any, imap_user: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the reviewer met: STARTTLS stored for a TLS-only port. The test fails; correcting
    the security and port with ``account update`` (no remove and re-add) makes it pass."""
    for var in ("CORRESPOND_DATA_DIR", "CORRESPOND_DATABASE_URL", "CORRESPOND_SECRET_KEY"):
        monkeypatch.delenv(var, raising=False)
    # STARTTLS on a TLS port waits for a greeting that never comes: do not wait long.
    monkeypatch.setenv("CORRESPOND_IMAP_CONNECT_TIMEOUT", "3")
    monkeypatch.setattr(cli_base, "_stdin_is_tty", lambda: False)
    cert = tmp_path / "dovecot.pem"
    cert.write_text(dovecot.cert_pem)
    base = ["--data-dir", str(tmp_path / "data")]
    runner = CliRunner()
    add = [
        *base, "account", "add", "dove", "--email", f"{imap_user.username}@example.test",
        "--username", imap_user.username, "--imap-host", dovecot.host,
        "--imap-port", str(dovecot.tls_port), "--imap-security", "starttls",
        "--trust-cert", str(cert), "--password-stdin",
    ]  # fmt: skip
    assert runner.invoke(main, add, input=imap_user.password + "\n").exit_code == 0
    failed = runner.invoke(main, [*base, "account", "test", "dove", "--json"])
    assert failed.exit_code == 1, failed.output
    assert json.loads(failed.stdout)["ok"] is False
    listed = json.loads(runner.invoke(main, [*base, "account", "list", "--json"]).stdout)
    assert listed[0]["state"] in ("error", "disconnected")

    update = [
        *base, "account", "update", "dove",
        "--imap-security", "tls", "--imap-port", str(dovecot.tls_port), "--json",
    ]  # fmt: skip
    # Without a password, a change of how the account connects drops the stored one.
    dropped = runner.invoke(main, update)
    assert dropped.exit_code == 0, dropped.output
    assert json.loads(dropped.stdout)["has_password"] is False
    assert "--password-stdin" in dropped.stderr
    untested = runner.invoke(main, [*base, "account", "test", "dove", "--json"])
    assert json.loads(untested.stdout)["problem"] == "no_password"
    updated = runner.invoke(main, [*update, "--password-stdin"], input=imap_user.password + "\n")
    assert updated.exit_code == 0, updated.output
    account = json.loads(updated.stdout)
    assert account["imap"]["security"] == "tls" and account["state"] == "connecting"
    passed = runner.invoke(main, [*base, "account", "test", "dove", "--json"])
    assert passed.exit_code == 0, passed.output
    assert json.loads(passed.stdout)["ok"] is True
    assert imap_user.password not in updated.output + passed.output


async def test_service_update_keeps_folders_and_retries(
    service: AccountService, dovecot: Any, imap_user: Any
) -> None:
    """An update through the service: a refused sign-in is retried once the password is
    fixed, and folders synced before survive a change of server settings."""
    add_imap_account(service, dovecot, imap_user, password="wrong-password")
    assert (await service.test_account("dove")).problem == "auth_failed"
    fixed = service.update_account("dove", AccountChanges(), password=imap_user.password)
    assert fixed.state == "connecting"
    refreshed = await service.refresh_folders("dove")
    count = len(refreshed.folders)
    assert count > 0
    moved = service.update_account(
        "dove",
        AccountChanges(imap_security="tls", imap_port=dovecot.tls_port),
        password=imap_user.password,
    )
    assert (moved.imap_security, moved.imap_port) == ("tls", dovecot.tls_port)
    assert len(service.list_folders("dove")) == count
    assert (await service.test_account("dove")).ok
