"""The ``correspond`` command line, through click's runner and one real subprocess."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography.fernet import Fernet
from sqlalchemy import text

from correspond.cli import base as cli_base
from correspond.cli import main
from correspond.rules.folders import FolderSpec
from correspond.rules.two_way import TOGGLE_DEFAULTS
from correspond.settings import Settings
from correspond.store import open_store
from correspond.testing.dovecot import DovecotServer
from helpers import folder_spec

PASSWORD = "s3cret-Pa55word"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    # Each test names its store with --data-dir; make sure nothing leaks in from outside.
    for var in ("CORRESPOND_DATA_DIR", "CORRESPOND_DATABASE_URL", "CORRESPOND_SECRET_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cli_base, "_stdin_is_tty", lambda: False)
    return CliRunner()


def run(runner: CliRunner, data_dir: Path, *args: str, input: str | None = None) -> Result:
    return runner.invoke(main, ["--data-dir", str(data_dir), *args], input=input)


def add_work(runner: CliRunner, data_dir: Path, *extra: str) -> Result:
    result = run(
        runner,
        data_dir,
        "account",
        "add",
        "work",
        "--email",
        "me@example.test",
        "--imap-host",
        "imap.example.test",
        "--password-stdin",
        *extra,
        input=PASSWORD + "\n",
    )
    assert result.exit_code == 0, result.output
    return result


def seed_folders(data_dir: Path, account: str, specs: list[FolderSpec]) -> None:
    store = open_store(Settings(data_dir=data_dir))
    try:
        store.sync_folders(account, specs)
    finally:
        store.close()


def test_add_then_list_json(runner: CliRunner, data_dir: Path) -> None:
    added = add_work(runner, data_dir)
    assert "Added account work <me@example.test>" in added.output
    assert "imap.example.test:143 (starttls)" in added.output
    assert PASSWORD not in added.output

    listed = run(runner, data_dir, "account", "list", "--json")
    assert listed.exit_code == 0, listed.output
    data = json.loads(listed.stdout)
    assert [a["name"] for a in data] == ["work"]
    a = data[0]
    assert a["email"] == "me@example.test"
    assert a["imap"] == {"host": "imap.example.test", "port": 143, "security": "starttls"}
    assert a["state"] == "connecting" and a["state_message"].startswith("Waiting")
    assert a["has_password"] is True
    assert (a["folder_count"], a["selected_folder_count"], a["message_count"]) == (0, 0, 0)
    assert PASSWORD not in listed.output
    assert "secret" not in listed.output.lower()


def test_secret_is_not_stored_in_clear(runner: CliRunner, data_dir: Path) -> None:
    add_work(runner, data_dir)
    store = open_store(Settings(data_dir=data_dir))
    try:
        with store.engine.connect() as conn:
            raw = bytes(conn.execute(text("SELECT secret_encrypted FROM accounts")).scalar_one())
        assert PASSWORD.encode() not in raw
        assert store.account_secret("work") == PASSWORD
    finally:
        store.close()
    # The whole database file does not contain it either.
    for f in data_dir.glob("correspond.db*"):
        assert PASSWORD.encode() not in f.read_bytes()


def test_list_table(runner: CliRunner, data_dir: Path) -> None:
    empty = run(runner, data_dir, "account", "list")
    assert empty.exit_code == 0 and "No accounts yet" in empty.output
    add_work(runner, data_dir)
    seed_folders(data_dir, "work", [folder_spec("INBOX", "inbox"), folder_spec("Sent", "sent")])
    table = run(runner, data_dir, "account", "list")
    assert table.exit_code == 0, table.output
    assert "work" in table.output and "me@example.test" in table.output
    assert "connecting" in table.output and "never" in table.output
    assert PASSWORD not in table.output


def test_missing_fields_without_a_terminal(runner: CliRunner, data_dir: Path) -> None:
    result = run(runner, data_dir, "account", "add", "work")
    assert result.exit_code == 2
    assert "no terminal to ask on" in result.output
    assert "--email" in result.output and "--imap-host" in result.output
    assert "--password-stdin" in result.output
    # Nothing was stored.
    assert json.loads(run(runner, data_dir, "account", "list", "--json").stdout) == []


def test_password_is_never_an_argument(runner: CliRunner, data_dir: Path) -> None:
    result = run(
        runner, data_dir, "account", "add", "w", "--email", "a@b.c", "--password", PASSWORD
    )
    assert result.exit_code == 2
    assert "No such option" in result.output


def test_empty_stdin_password_is_refused(runner: CliRunner, data_dir: Path) -> None:
    result = run(
        runner,
        data_dir,
        "account",
        "add",
        "g",
        "--preset",
        "google",
        "--email",
        "me@gmail.com",
        "--password-stdin",
        input="\n",
    )
    assert result.exit_code == 2
    assert "password on standard input" in result.output


def test_prompts_when_a_terminal_is_attached(
    runner: CliRunner, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_base, "_stdin_is_tty", lambda: True)
    result = run(
        runner,
        data_dir,
        "account",
        "add",
        "home",
        "--imap-security",
        "tls",
        # e-mail, IMAP host, SMTP host and user name (Enter: the defaults), password
        input=f"me@home.test\nimap.home.test\n\n\n{PASSWORD}\n",
    )
    assert result.exit_code == 0, result.output
    assert "E-mail address" in result.output and "IMAP server host" in result.output
    assert "User name for signing in [me@home.test]" in result.output
    assert "Provider" not in result.output  # --imap-security says it is an IMAP server
    assert PASSWORD not in result.output  # the password prompt hides input
    data = json.loads(run(runner, data_dir, "account", "list", "--json").stdout)
    assert data[0]["imap"] == {"host": "imap.home.test", "port": 993, "security": "tls"}
    assert data[0]["smtp"] == {"host": "imap.home.test", "port": 465, "security": "tls"}
    assert data[0]["username"] == "me@home.test"


def test_prompt_asks_for_a_short_user_name(
    runner: CliRunner, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server whose sign-in names are not the address: the prompt asks, the address is
    only the default; a user name given as a flag is not asked again."""
    monkeypatch.setattr(cli_base, "_stdin_is_tty", lambda: True)
    flags = ["--email", "me@home.test", "--imap-host", "imap.home.test"]
    result = run(runner, data_dir, "account", "add", "home", *flags, input=f" \nme\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert "the user name is empty" in result.output  # asked again after a blank answer
    assert "user name me" in result.output
    given = run(
        runner, data_dir, "account", "add", "two", *flags, "--username", "you", input="pw\n"
    )
    assert given.exit_code == 0, given.output
    assert "User name" not in given.output
    names = {
        a["name"]: a["username"]
        for a in json.loads(run(runner, data_dir, "account", "list", "--json").stdout)
    }
    assert names == {"home": "me", "two": "you"}


def test_guided_add_asks_for_everything_and_again_on_a_bad_answer(
    runner: CliRunner, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_base, "_stdin_is_tty", lambda: True)
    answers = [
        "my work",  # refused: a space
        "work",
        "yahoo",  # refused: no such preset
        "exchange office",  # an alias of exchange-online
        "me@contoso.test",
        "",  # the user name: the address
        PASSWORD,
    ]
    result = run(runner, data_dir, "account", "add", input="\n".join(answers) + "\n")
    assert result.exit_code == 0, result.output
    assert "account name 'my work' is not allowed" in result.output
    assert "unknown preset 'yahoo'" in result.output
    assert "exchange-online  Exchange Office (Exchange Online)" in result.output
    a = json.loads(run(runner, data_dir, "account", "list", "--json").stdout)[0]
    assert (a["name"], a["preset"], a["imap"]["host"]) == (
        "work",
        "exchange-online",
        "outlook.office365.com",
    )

    # A self-hosted server: host and security are asked for, with the preset's default.
    answers = ["lab", "exchange", "me@lab.test", "mail.lab.test:993", "mail.lab.test", "", "", "pw"]
    result = run(runner, data_dir, "account", "add", input="\n".join(answers) + "\n")
    assert result.exit_code == 0, result.output
    assert "without a port" in result.output
    a = json.loads(run(runner, data_dir, "account", "list", "--json").stdout)[0]
    assert a["name"] == "lab"
    assert a["imap"] == {"host": "mail.lab.test", "port": 993, "security": "tls"}
    assert a["smtp"] == {"host": "mail.lab.test", "port": 587, "security": "starttls"}


def test_password_stdin_on_a_terminal_asks_nothing(
    runner: CliRunner, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_base, "_stdin_is_tty", lambda: True)
    result = run(runner, data_dir, "account", "add", "w", "--password-stdin", input="pw\n")
    assert result.exit_code == 2
    assert "standard input carries the password" in result.output
    assert "--email" in result.output and "--imap-host" in result.output


def test_every_field_as_a_flag(runner: CliRunner, data_dir: Path) -> None:
    result = run(
        runner, data_dir, "account", "add", "full",
        "--preset", "Other IMAP", "--email", "me@full.test", "--username", "me",
        "--imap-host", "imap.full.test", "--imap-port", "10993", "--imap-security", "TLS",
        "--smtp-host", "smtp.full.test", "--smtp-port", "10465", "--smtp-security", "tls",
        "--window-days", "7", "--password-stdin", "--json",
        input=PASSWORD + "\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    a = json.loads(result.stdout)
    assert (a["preset"], a["email"], a["username"], a["window_days"]) == (
        "other",
        "me@full.test",
        "me",
        7,
    )
    assert a["imap"] == {"host": "imap.full.test", "port": 10993, "security": "tls"}
    assert a["smtp"] == {"host": "smtp.full.test", "port": 10465, "security": "tls"}
    assert PASSWORD not in result.output
    assert a["has_password"] is True and "password" not in a


ADD = ["account", "add", "x", "--email", "a@b.test", "--imap-host", "imap.b.test"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ([*ADD, "--preset", "yahoo"], "unknown preset 'yahoo'"),
        ([*ADD, "--imap-port", "99999"], "99999 is not in the range"),
        ([*ADD, "--imap-port", "abc"], "'abc' is not a valid integer"),
        ([*ADD, "--imap-security", "ssl"], "'ssl' is not one of"),
        ([*ADD, "--smtp-security", "ssl"], "'ssl' is not one of"),
        ([*ADD, "--imap-security", "plain"], "--allow-plaintext"),
        (["account", "add", "has space", "--email", "a@b.test", "--imap-host", "h"], "not allowed"),
        (["account", "add", "x", "--email", "nobody", "--imap-host", "h"], "not an e-mail"),
        (["account", "add", "x", "--email", "a@b.test", "--imap-host", "h:993"], "--imap-port"),
        (["account", "test", "nope"], "no account named 'nope'"),
        (["account", "folders", "nope"], "no account named 'nope'"),
        (["account", "update", "nope", "--window-days", "3"], "no account named 'nope'"),
        (["account", "update", "work", "--imap-security", "plain"], "--allow-plaintext"),
        (["account", "update", "work", "--imap-host", "h:993"], "--imap-port"),
        (["account", "update", "work", "--smtp-host", "https://smtp.x"], "not a URL"),
        (["account", "update", "work", "--email", "nobody"], "not an e-mail"),
        (["account", "update", "work", "--username", " "], "the user name is empty"),
        (["account", "update", "work", "--imap-port", "99999"], "99999 is not in the range"),
        (["account", "update", "work", "--imap-security", "ssl"], "'ssl' is not one of"),
        (["account", "update", "work", "--imap-port", "1"], "needs a terminal"),
        (["account", "remove", "nope", "--yes"], "no account named 'nope'"),
        (["account", "pause", "nope"], "no account named 'nope'"),
        (["account", "folders", "work", "--select", "Nope"], "no folder named 'Nope'"),
        (["account", "folders", "work", "--select", "Projects"], "\\NonExistent"),
        (["account", "folders", "work", "--select", "[Gmail]"], "\\Noselect"),
        (["account", "folders", "work", "--select", "INBOX", "--all"], "not both"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    runner: CliRunner, data_dir: Path, args: list[str], words: str
) -> None:
    add_work(runner, data_dir)
    seed_folders(
        data_dir,
        "work",
        [
            folder_spec("INBOX", "inbox"),
            folder_spec("Projects", selectable=False, flags=("\\NonExistent",)),
            folder_spec("[Gmail]", selectable=False, flags=("\\Noselect",)),
        ],
    )
    before = run(runner, data_dir, "account", "list", "--json").output
    folders_before = run(runner, data_dir, "account", "folders", "work", "--json").output
    if args[1] == "add":
        result = run(runner, data_dir, *args, "--password-stdin", input="pw\n")
    elif args[:2] == ["account", "update"] and args[-1] == "1":
        result = run(runner, data_dir, *args, "--password")  # a prompt, without a terminal
    else:
        result = run(runner, data_dir, *args)
    assert result.exit_code in (2, 3), result.output
    assert isinstance(result.exception, SystemExit)  # a message, not a traceback
    assert words in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output
    assert run(runner, data_dir, "account", "list", "--json").output == before
    assert run(runner, data_dir, "account", "folders", "work", "--json").output == folders_before


def test_trusted_certificate_files_are_checked(
    runner: CliRunner, data_dir: Path, tmp_path: Path
) -> None:
    binary = tmp_path / "server.der"
    binary.write_bytes(b"\x30\x82\x01\xff\xfe binary")
    text = tmp_path / "notes.txt"
    text.write_text("not a certificate\n")
    for cert, words in ((binary, "is binary"), (text, "not a PEM certificate")):
        added = run(
            runner, data_dir, *ADD, "--trust-cert", str(cert), "--password-stdin", input="pw\n"
        )
        assert added.exit_code == 2 and words in added.output, added.output
        assert isinstance(added.exception, SystemExit)
    add_work(runner, data_dir)
    updated = run(runner, data_dir, "account", "update", "work", "--trust-cert", str(binary))
    assert updated.exit_code == 2 and "is binary" in updated.output


def test_update_json(runner: CliRunner, data_dir: Path) -> None:
    add_work(runner, data_dir)
    result = run(runner, data_dir, "account", "update", "work", "--window-days", "9", "--json")
    assert result.exit_code == 0, result.output
    a = json.loads(result.stdout)
    assert a["window_days"] == 9 and PASSWORD not in result.output


def test_toggles_on_add_and_update(runner: CliRunner, data_dir: Path) -> None:
    add_work(runner, data_dir, "--delete-in-crm-on-remote-delete")
    assert account_json(runner, data_dir)["toggles"] == {
        **TOGGLE_DEFAULTS,
        "delete_in_crm_on_remote_delete": True,
    }
    set_state(data_dir, "work", "live")
    result = run(
        runner,
        data_dir,
        "account",
        "update",
        "work",
        "--delete-remote-on-crm-delete",
        "--no-archive-remote-on-crm-archive",
    )
    assert result.exit_code == 0, result.output
    assert "Delete in the mailbox (move to Trash) when deleted in the CRM: on." in result.output
    a = account_json(runner, data_dir)
    assert a["toggles"] == {
        "delete_in_crm_on_remote_delete": True,
        "delete_remote_on_crm_delete": True,
        "archive_in_crm_on_remote_archive": True,
        "archive_remote_on_crm_archive": False,
    }
    # A toggle is no connection setting: the password and the state stay.
    store = open_store(Settings(data_dir=data_dir))
    try:
        assert store.get_account("work").state == "live"
    finally:
        store.close()
    assert stored_password(data_dir) == PASSWORD
    helped = run(runner, data_dir, "account", "update", "--help")
    assert "--no-delete-in-crm-on-remote-delete" in helped.output
    assert "default for a new account" in " ".join(helped.output.split())


def account_json(runner: CliRunner, data_dir: Path, name: str = "work") -> dict[str, Any]:
    listed = json.loads(run(runner, data_dir, "account", "list", "--json").stdout)
    found: dict[str, Any] = next(a for a in listed if a["name"] == name)
    return found


def set_state(data_dir: Path, name: str, state: str) -> None:
    store = open_store(Settings(data_dir=data_dir))
    try:
        store.set_account_state(name, state, "what the sync last saw")
    finally:
        store.close()


def stored_password(data_dir: Path, name: str = "work") -> str:
    store = open_store(Settings(data_dir=data_dir))
    try:
        return store.account_secret(name)
    finally:
        store.close()


def test_update_changes_every_field_add_takes(
    runner: CliRunner, data_dir: Path, tmp_path: Path
) -> None:
    add_work(runner, data_dir)
    cert = tmp_path / "server.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    result = run(
        runner, data_dir, "account", "update", "work",
        "--email", "new@example.test", "--username", "me",
        "--imap-host", "mail.example.test", "--imap-port", "10993", "--imap-security", "TLS",
        "--smtp-host", "smtp.example.test", "--smtp-port", "10465", "--smtp-security", "tls",
        "--allow-plaintext", "--trust-cert", str(cert), "--window-days", "7",
        "--password-stdin", "--json",
        input="n3w-Pa55word\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    a = json.loads(result.stdout)
    assert (a["email"], a["username"], a["window_days"]) == ("new@example.test", "me", 7)
    assert a["imap"] == {"host": "mail.example.test", "port": 10993, "security": "tls"}
    assert a["smtp"] == {"host": "smtp.example.test", "port": 10465, "security": "tls"}
    assert a["allow_plaintext"] is True and a["has_trusted_cert"] is True
    assert "n3w-Pa55word" not in result.output and "password" not in a
    assert stored_password(data_dir) == "n3w-Pa55word"
    # `account list` adds the account's outbox (CRM actions waiting for the mailbox).
    listed = account_json(runner, data_dir)
    assert listed.pop("outbox") == {"pending": 0, "failed": 0}
    assert listed == a

    forget = run(runner, data_dir, "account", "update", "work", "--no-trust-cert", "--json")
    assert json.loads(forget.stdout)["has_trusted_cert"] is False
    text = run(runner, data_dir, "account", "update", "work", "--no-allow-plaintext")
    assert text.exit_code == 0, text.output
    assert "Updated work: IMAP mail.example.test:10993 (tls)" in text.output
    assert "correspond account test work" in text.output


def test_update_follows_the_address_and_the_imap_host(runner: CliRunner, data_dir: Path) -> None:
    add_work(runner, data_dir)  # user name: the address; SMTP host: the IMAP host
    result = run(
        runner, data_dir, "account", "update", "work",
        "--email", "fixed@example.test", "--imap-host", "imap2.example.test", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    a = json.loads(result.stdout)
    assert (a["email"], a["username"]) == ("fixed@example.test", "fixed@example.test")
    assert a["smtp"]["host"] == "imap2.example.test"


@pytest.mark.parametrize(
    ("args", "imap"),
    [
        (["--imap-port", "993"], (993, "tls")),  # a well-known port brings its security
        (["--imap-security", "tls"], (993, "tls")),  # ... and a security its standard port
        (["--imap-security", "tls", "--imap-port", "10993"], (10993, "tls")),
        (["--imap-port", "10143"], (10143, "starttls")),  # a custom port keeps the security
    ],
)
def test_update_infers_security_from_well_known_ports(
    runner: CliRunner, data_dir: Path, args: list[str], imap: tuple[int, str]
) -> None:
    add_work(runner, data_dir)  # 143, starttls
    result = run(runner, data_dir, "account", "update", "work", *args, "--json")
    assert result.exit_code == 0, result.output
    a = json.loads(result.stdout)
    assert (a["imap"]["port"], a["imap"]["security"]) == imap
    assert "Warning" not in result.output


def test_add_infers_security_from_well_known_ports(runner: CliRunner, data_dir: Path) -> None:
    added = add_work(runner, data_dir, "--imap-port", "993", "--json")
    a = json.loads(added.stdout)
    assert a["imap"] == {"host": "imap.example.test", "port": 993, "security": "tls"}
    # "Other IMAP" pairs the SMTP side with the IMAP one, and SMTP uses the IMAP host.
    assert a["smtp"] == {"host": "imap.example.test", "port": 465, "security": "tls"}
    assert "Warning" not in added.output
    smtp_only = run(
        runner, data_dir, *ADD, "--smtp-port", "587", "--imap-security", "tls",
        "--password-stdin", "--json", input="pw\n",
    )  # fmt: skip
    assert smtp_only.exit_code == 0, smtp_only.output
    b = json.loads(smtp_only.stdout)
    assert (b["imap"]["port"], b["smtp"]["port"], b["smtp"]["security"]) == (993, 587, "starttls")


def test_a_security_against_a_well_known_port_is_kept_with_a_warning(
    runner: CliRunner, data_dir: Path
) -> None:
    added = add_work(runner, data_dir, "--imap-port", "993", "--imap-security", "starttls")
    warnings = [line for line in added.output.splitlines() if line.startswith("Warning:")]
    assert warnings == [
        "Warning: IMAP port 993 normally speaks implicit TLS (tls), not starttls; stored as given."
    ]
    assert account_json(runner, data_dir)["imap"]["security"] == "starttls"
    updated = run(
        runner, data_dir, "account", "update", "work",
        "--smtp-port", "465", "--smtp-security", "starttls", "--json",
    )  # fmt: skip
    assert updated.exit_code == 0, updated.output
    assert json.loads(updated.stdout)["smtp"] == {
        "host": "imap.example.test",
        "port": 465,
        "security": "starttls",
    }
    # Only the side that was changed is warned about, once.
    assert [line for line in updated.output.splitlines() if line.startswith("Warning:")] == [
        "Warning: SMTP port 465 normally speaks implicit TLS (tls), not starttls; stored as given."
    ]
    window = run(runner, data_dir, "account", "update", "work", "--window-days", "5")
    assert "Warning" not in window.output


def test_other_preset_smtp_host_is_the_imap_host_and_shown(
    runner: CliRunner, data_dir: Path
) -> None:
    added = add_work(runner, data_dir)
    assert "SMTP imap.example.test:587 (starttls)" in added.output
    lab = run(
        runner, data_dir, "account", "add", "lab", "--preset", "exchange",
        "--email", "me@lab.test", "--imap-host", "mail.lab.test", "--password-stdin",
        input="pw\n",
    )  # fmt: skip
    assert lab.exit_code == 0, lab.output
    assert "SMTP mail.lab.test:587 (starttls)" in lab.output


@pytest.mark.parametrize("state", ["auth_failed", "error", "disconnected"])
def test_changing_how_it_connects_retries_a_failed_account(
    runner: CliRunner, data_dir: Path, state: str
) -> None:
    add_work(runner, data_dir)
    seed_folders(data_dir, "work", [folder_spec("INBOX", "inbox"), folder_spec("Sent", "sent")])
    set_state(data_dir, "work", state)
    window = run(runner, data_dir, "account", "update", "work", "--window-days", "9")
    assert window.exit_code == 0, window.output
    assert account_json(runner, data_dir)["state"] == state  # not a connection setting
    fixed = run(
        runner, data_dir, "account", "update", "work", "--imap-port", "993", "--json",
        "--password-stdin", input="pw\n",
    )  # fmt: skip
    assert fixed.exit_code == 0, fixed.output
    a = json.loads(fixed.stdout)
    assert a["state"] == "connecting" and "settings changed" in a["state_detail"]
    assert a["folder_count"] == 2  # synced data is kept


@pytest.mark.parametrize(
    "change",
    [
        ("--imap-host", "evil.example.net"),
        ("--imap-port", "1143"),
        ("--imap-security", "tls"),
        ("--username", "someone-else"),
        ("--allow-plaintext",),
        ("--smtp-host", "smtp.evil.example.net"),
        ("--smtp-port", "2525"),
        ("--smtp-security", "tls"),
    ],
)
def test_a_connection_change_without_a_password_drops_the_stored_one(
    runner: CliRunner, data_dir: Path, change: tuple[str, ...]
) -> None:
    """A secret is only sent to the endpoint it was entered for: changing where or how the
    account connects without giving the password again drops it, and the account waits in
    ``error`` saying so (no worker runs it) until it gets one."""
    add_work(runner, data_dir)
    result = run(runner, data_dir, "account", "update", "work", *change, "--json")
    assert result.exit_code == 0, result.output
    a = json.loads(result.stdout)
    assert a["has_password"] is False
    assert a["state"] == "error" and "password" in a["state_detail"]
    assert "dropped" in result.stderr
    again = run(runner, data_dir, "account", "update", "work", "--password-stdin", input="pw\n")
    assert again.exit_code == 0, again.output
    a = account_json(runner, data_dir)
    assert a["has_password"] is True and a["state"] == "connecting"


def test_a_change_that_keeps_the_endpoint_keeps_the_password(
    runner: CliRunner, data_dir: Path
) -> None:
    add_work(runner, data_dir)
    result = run(runner, data_dir, "account", "update", "work", "--window-days", "5", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["has_password"] is True


def test_a_new_password_retries_and_a_paused_account_stays_paused(
    runner: CliRunner, data_dir: Path
) -> None:
    add_work(runner, data_dir)
    set_state(data_dir, "work", "auth_failed")
    result = run(runner, data_dir, "account", "update", "work", "--password-stdin", input="x\n")
    assert result.exit_code == 0, result.output
    assert account_json(runner, data_dir)["state"] == "connecting"
    set_state(data_dir, "work", "paused")
    result = run(runner, data_dir, "account", "update", "work", "--imap-host", "imap2.test")
    assert result.exit_code == 0, result.output
    assert account_json(runner, data_dir)["state"] == "paused"


def test_a_refused_update_changes_nothing_not_even_the_password(
    runner: CliRunner, data_dir: Path
) -> None:
    add_work(runner, data_dir, "--imap-security", "plain", "--allow-plaintext")
    set_state(data_dir, "work", "auth_failed")
    before = account_json(runner, data_dir)
    for args in (
        # Valid alone, refused together: plaintext stays, its permission goes.
        ["--no-allow-plaintext", "--window-days", "3"],
        ["--imap-port", "993", "--imap-host", "bad host"],
        ["--password", "--password-stdin"],
    ):
        result = run(
            runner, data_dir, "account", "update", "work", *args, "--password-stdin",
            input="changed\n",
        )  # fmt: skip
        assert result.exit_code == 2, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, result.output
        assert account_json(runner, data_dir) == before
        assert stored_password(data_dir) == PASSWORD


def test_key_and_data_dir_are_private_and_kept(runner: CliRunner, data_dir: Path) -> None:
    add_work(runner, data_dir)
    key = data_dir / "secret.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    first = key.read_bytes()
    assert run(runner, data_dir, "account", "list").exit_code == 0
    assert key.read_bytes() == first  # generated once, never replaced
    assert [p.name for p in data_dir.iterdir() if p.name.startswith(".secret")] == []


def test_unusable_data_dir_and_settings_are_one_line_errors(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = runner.invoke(main, ["--data-dir", str(blocker / "sub"), "account", "list"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert "cannot create data directory" in result.output
    monkeypatch.setenv("CORRESPOND_PORT", "eighty")
    result = runner.invoke(main, ["--data-dir", str(tmp_path / "d"), "account", "list"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert "CORRESPOND_PORT" in result.output and "'eighty'" in result.output


def test_a_broken_key_says_where_it_came_from(
    runner: CliRunner, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_work(runner, data_dir)
    (data_dir / "secret.key").write_text("garbage\n")
    result = run(runner, data_dir, "account", "test", "work")
    assert result.exit_code == 2 and str(data_dir / "secret.key") in result.output
    monkeypatch.setenv("CORRESPOND_SECRET_KEY", "short")
    result = run(runner, data_dir, "account", "list")
    assert result.exit_code == 2 and "CORRESPOND_SECRET_KEY" in result.output
    assert "short" not in result.output  # not even a bad key is echoed


def test_preset_and_options(runner: CliRunner, data_dir: Path, tmp_path: Path) -> None:
    cert = tmp_path / "server.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    result = run(
        runner,
        data_dir,
        "account",
        "add",
        "o365",
        "--preset",
        "office365",
        "--email",
        "me@contoso.test",
        "--username",
        "alias@contoso.test",
        "--trust-cert",
        str(cert),
        "--window-days",
        "30",
        "--password-stdin",
        "--json",
        input=PASSWORD + "\n",
    )
    assert result.exit_code == 0, result.output
    a = json.loads(result.stdout)
    assert a["imap"] == {"host": "outlook.office365.com", "port": 993, "security": "tls"}
    assert a["smtp"] == {"host": "smtp.office365.com", "port": 587, "security": "starttls"}
    assert (a["username"], a["window_days"], a["has_trusted_cert"]) == (
        "alias@contoso.test",
        30,
        True,
    )


def test_plaintext_needs_the_flag(runner: CliRunner, data_dir: Path) -> None:
    args = ["account", "add", "p", "--email", "a@b.c", "--imap-host", "h", "--imap-security"]
    refused = run(runner, data_dir, *args, "plain", "--password-stdin", input="pw\n")
    assert refused.exit_code == 2 and "--allow-plaintext" in refused.output
    ok = run(
        runner, data_dir, *args, "plain", "--allow-plaintext", "--password-stdin", input="pw\n"
    )
    assert ok.exit_code == 0, ok.output


def test_duplicate_and_unknown(runner: CliRunner, data_dir: Path) -> None:
    add_work(runner, data_dir)
    again = run(
        runner,
        data_dir,
        "account",
        "add",
        "work",
        "--email",
        "x@y.z",
        "--imap-host",
        "h",
        "--password-stdin",
        input="pw\n",
    )
    assert again.exit_code == 2 and "already exists" in again.output
    missing = run(runner, data_dir, "account", "folders", "nope")
    assert missing.exit_code == 3 and "no account named 'nope'" in missing.output


def test_folders_show_select_and_all(runner: CliRunner, data_dir: Path) -> None:
    add_work(runner, data_dir)
    none_yet = run(runner, data_dir, "account", "folders", "work")
    assert none_yet.exit_code == 0 and "--refresh" in none_yet.output
    seed_folders(
        data_dir,
        "work",
        [
            folder_spec("INBOX", "inbox"),
            folder_spec("Sent Items", "sent", flags=("\\Sent",)),
            folder_spec("Clients/Sent"),
            folder_spec("Entwürfe", "drafts", raw=b"Entw&APw-rfe"),
            folder_spec("Entwürfe", raw="Entwürfe".encode()),
            folder_spec("[Gmail]", selectable=False, flags=("\\Noselect",)),
        ],
    )
    table = run(runner, data_dir, "account", "folders", "work")
    assert table.exit_code == 0, table.output
    for needle in ("INBOX", "Sent Items", "Clients/Sent", "Entw&APw-rfe", "Entw\\xc3\\xbcrfe"):
        assert needle in table.output
    assert "new folders sync too" in table.output

    folders = json.loads(run(runner, data_dir, "account", "folders", "work", "--json").stdout)
    by_raw = {f["remote_name"]: f for f in folders}
    assert by_raw["Entw&APw-rfe"]["role"] == "drafts"
    assert by_raw["Entw\\xc3\\xbcrfe"]["role"] is None
    assert by_raw["Entw&APw-rfe"]["id"] != by_raw["Entw\\xc3\\xbcrfe"]["id"]
    assert by_raw["[Gmail]"]["selectable"] is False and by_raw["[Gmail]"]["selected"] is False

    ambiguous = run(runner, data_dir, "account", "folders", "work", "--select", "Entwürfe")
    assert ambiguous.exit_code == 2 and "choose by id" in ambiguous.output

    twin = str(by_raw["Entw\\xc3\\xbcrfe"]["id"])
    picked = run(
        runner,
        data_dir,
        "account",
        "folders",
        "work",
        "--select",
        "INBOX",
        "--select",
        twin,
        "--only",
        "--json",
    )
    assert picked.exit_code == 0, picked.output
    selected = {f["remote_name"] for f in json.loads(picked.stdout) if f["selected"]}
    assert selected == {"INBOX", "Entw\\xc3\\xbcrfe"}
    listed = json.loads(run(runner, data_dir, "account", "list", "--json").stdout)[0]
    assert (listed["folders_mode"], listed["selected_folder_count"]) == ("selected", 2)

    everything = run(runner, data_dir, "account", "folders", "work", "--all", "--json")
    selected = {f["remote_name"] for f in json.loads(everything.stdout) if f["selected"]}
    assert len(selected) == 5 and "[Gmail]" not in selected

    both = run(runner, data_dir, "account", "folders", "work", "--all", "--select", "INBOX")
    assert both.exit_code == 2


def test_remove(runner: CliRunner, data_dir: Path) -> None:
    add_work(runner, data_dir)
    refused = run(runner, data_dir, "account", "remove", "work")
    assert refused.exit_code == 2 and "--yes" in refused.output
    removed = run(runner, data_dir, "account", "remove", "work", "--yes")
    assert removed.exit_code == 0 and "Removed account work" in removed.output
    assert json.loads(run(runner, data_dir, "account", "list", "--json").stdout) == []
    gone = run(runner, data_dir, "account", "remove", "work", "--yes")
    assert gone.exit_code == 3


def test_data_dir_from_environment(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    add_work(runner, one)
    monkeypatch.setenv("CORRESPOND_DATA_DIR", str(one))
    from_env = runner.invoke(main, ["account", "list", "--json"])
    assert [a["name"] for a in json.loads(from_env.stdout)] == ["work"]
    monkeypatch.setenv("CORRESPOND_DATA_DIR", str(two))
    other = runner.invoke(main, ["account", "list", "--json"])
    assert json.loads(other.stdout) == []
    assert (two / "correspond.db").exists()


def test_account_test_reports_unreachable_server(runner: CliRunner, data_dir: Path) -> None:
    import socket

    # A port with nothing listening on it: bind, learn the number, close.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run(
        runner,
        data_dir,
        "account",
        "add",
        "dead",
        "--email",
        "a@b.c",
        "--imap-host",
        "127.0.0.1",
        "--imap-port",
        str(port),
        "--password-stdin",
        input="pw\n",
    )
    assert result.exit_code == 0, result.output
    tested = run(runner, data_dir, "account", "test", "dead", "--json")
    assert tested.exit_code == 1
    report = json.loads(tested.stdout)
    assert report["ok"] is False and report["problem"] == "refused"
    listed = json.loads(run(runner, data_dir, "account", "list", "--json").stdout)[0]
    assert listed["state"] == "disconnected"
    assert listed["state_detail"] == report["message"]


def test_real_subprocess_account_list_json(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    key = Fernet.generate_key().decode()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRESPOND_")}
    env["CORRESPOND_SECRET_KEY"] = key
    store = open_store(Settings(data_dir=data_dir, secret_key=key))
    try:
        from correspond.rules.presets import draft_from_preset

        store.add_account(draft_from_preset("google", name="g", email="g@gmail.com"), PASSWORD)
    finally:
        store.close()
    exe = shutil.which("correspond", path=str(Path(sys.executable).parent))
    argv = [exe] if exe else [sys.executable, "-m", "correspond.cli"]
    proc = subprocess.run(
        [*argv, "--data-dir", str(data_dir), "account", "list", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [(a["name"], a["imap"]["host"]) for a in data] == [("g", "imap.gmail.com")]
    assert PASSWORD not in proc.stdout + proc.stderr


def test_every_state_has_a_message() -> None:
    from correspond.accounts import STATE_MESSAGES, describe_state
    from correspond.store.tables import ACCOUNT_STATES

    assert set(STATE_MESSAGES) == set(ACCOUNT_STATES)
    assert describe_state("auth_failed", "LOGIN refused").endswith("LOGIN refused")
    assert describe_state("live") == STATE_MESSAGES["live"]


def test_serve_runs_migrations_and_answers_health(tmp_path: Path) -> None:
    import socket
    import time
    import urllib.error
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRESPOND_")}
    data_dir = tmp_path / "served"
    exe = shutil.which("correspond", path=str(Path(sys.executable).parent))
    argv = [exe] if exe else [sys.executable, "-m", "correspond.cli"]
    proc = subprocess.Popen(
        [*argv, "--data-dir", str(data_dir), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        answer = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    answer = json.loads(r.read())
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        assert answer is not None, "server did not answer"
        assert answer == {"status": "ok", "database": "sqlite"}
        assert (data_dir / "correspond.db").exists()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_account_update_trusts_a_certificate_and_changes_the_password(
    tmp_path: Path, dovecot: DovecotServer, runner: CliRunner
) -> None:
    """The untrusted-certificate message names a command; that command makes the test pass."""
    user = dovecot.add_user()
    base = ["--data-dir", str(tmp_path / "d")]
    add = [
        *base, "account", "add", "lab", "--email", f"{user.username}@example.test",
        "--username", user.username, "--imap-host", dovecot.host,
        "--imap-port", str(dovecot.tls_port), "--imap-security", "tls", "--password-stdin",
    ]  # fmt: skip
    assert runner.invoke(main, add, input="wrong\n").exit_code == 0
    failed = runner.invoke(main, [*base, "account", "test", "lab", "--json"])
    assert failed.exit_code == 1
    assert json.loads(failed.stdout)["problem"] == "tls_untrusted"
    assert "correspond account update lab --trust-cert FILE" in json.loads(failed.stdout)["message"]
    cert = tmp_path / "server.pem"
    cert.write_text(dovecot.cert_pem, encoding="ascii")
    trust = [*base, "account", "update", "lab", "--trust-cert", str(cert), "--password-stdin"]
    result = runner.invoke(main, trust, input="still-wrong\n")
    assert result.exit_code == 0, result.output
    refused = runner.invoke(main, [*base, "account", "test", "lab", "--json"])
    assert json.loads(refused.stdout)["problem"] == "auth_failed"
    update = [*base, "account", "update", "lab", "--password-stdin"]
    assert runner.invoke(main, update, input=f"{user.password}\n").exit_code == 0
    ok = runner.invoke(main, [*base, "account", "test", "lab", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["ok"] is True
    nothing = runner.invoke(main, [*base, "account", "update", "lab"])
    assert nothing.exit_code == 2
    assert "nothing to change" in nothing.output


def test_serve_on_a_taken_port_says_so(runner: CliRunner, data_dir: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(runner, data_dir, "serve", "--no-sync", "--port", str(port))
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert f"cannot listen on 127.0.0.1:{port}" in result.output and "--port" in result.output
