"""``correspond account disconnect|reconnect|remove`` say what they remove before they do it,
ask unless ``--yes``, and keep (disconnect) or delete (remove) the CRM's history (SQLite)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from correspond.cli import base as cli_base
from correspond.cli import main
from correspond.settings import Settings
from correspond.store import open_store
from helpers import folder_spec

PASSWORD = "s3cret-Pa55word"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for var in ("CORRESPOND_DATA_DIR", "CORRESPOND_DATABASE_URL", "CORRESPOND_SECRET_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cli_base, "_stdin_is_tty", lambda: False)
    return CliRunner()


def run(runner: CliRunner, data_dir: Path, *args: str, input: str | None = None) -> Result:
    return runner.invoke(main, ["--data-dir", str(data_dir), *args], input=input)


def add_work(runner: CliRunner, data_dir: Path) -> None:
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
        input=PASSWORD + "\n",
    )
    assert result.exit_code == 0, result.output
    store = open_store(Settings(data_dir=data_dir))
    try:
        store.sync_folders("work", [folder_spec("INBOX", "inbox"), folder_spec("Sent", "sent")])
    finally:
        store.close()


def account(runner: CliRunner, data_dir: Path) -> dict[str, object]:
    listed = json.loads(run(runner, data_dir, "account", "list", "--json").stdout)
    return next(a for a in listed if a["name"] == "work")  # type: ignore[no-any-return]


def test_disconnect_says_what_goes_asks_then_reconnects(
    runner: CliRunner, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_work(runner, data_dir)
    dry = run(runner, data_dir, "account", "disconnect", "work", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.stdout)
    assert plan["dry_run"] is True
    assert plan["removed"] == {
        "credentials": True,
        "folders": 2,
        "locations": 0,
        "pending_actions": 0,
    }
    # Without a terminal and without --yes: refused, after saying what it would remove.
    refused = run(runner, data_dir, "account", "disconnect", "work")
    assert refused.exit_code == 2 and "--yes" in refused.output
    assert "would remove the stored password, 2 folder(s)" in refused.output
    assert account(runner, data_dir)["has_password"] is True

    # On a terminal: it asks; "n" changes nothing.
    monkeypatch.setattr(cli_base, "_stdin_is_tty", lambda: True)
    declined = run(runner, data_dir, "account", "disconnect", "work", input="n\n")
    assert declined.exit_code == 1 and "Disconnect account work?" in declined.output
    assert account(runner, data_dir)["disconnected_at"] is None
    done = run(runner, data_dir, "account", "disconnect", "work", input="y\n")
    assert done.exit_code == 0, done.output
    assert "Disconnected work: removed the stored password, 2 folder(s)" in done.output
    assert "correspond account reconnect work" in done.output
    after = account(runner, data_dir)
    assert after["disconnected_at"] is not None and after["has_password"] is False
    assert after["folder_count"] == 0 and after["state"] == "paused"

    again = run(runner, data_dir, "account", "disconnect", "work", "--yes")
    assert again.exit_code != 0 and "already disconnected" in again.output
    resumed = run(runner, data_dir, "account", "resume", "work")
    assert resumed.exit_code != 0 and "reconnect" in resumed.output

    # Reconnect: the password from stdin (never argv), and the account waits for a worker.
    monkeypatch.setattr(cli_base, "_stdin_is_tty", lambda: False)
    back = run(
        runner, data_dir, "account", "reconnect", "work", "--password-stdin", input=PASSWORD + "\n"
    )
    assert back.exit_code == 0, back.output
    assert "Reconnected work: a running worker backfills the last 60 days" in back.output
    after = account(runner, data_dir)
    assert after["disconnected_at"] is None and after["has_password"] is True
    assert after["state"] == "connecting"
    twice = run(
        runner, data_dir, "account", "reconnect", "work", "--password-stdin", input=PASSWORD + "\n"
    )
    assert twice.exit_code == 2 and "not disconnected" in twice.output


def test_remove_says_what_goes_and_dry_run_changes_nothing(
    runner: CliRunner, data_dir: Path
) -> None:
    add_work(runner, data_dir)
    dry = run(runner, data_dir, "account", "remove", "work", "--dry-run")
    assert dry.exit_code == 0 and dry.output.startswith("Removing work would remove everything")
    assert account(runner, data_dir)["folder_count"] == 2
    refused = run(runner, data_dir, "account", "remove", "work")
    assert refused.exit_code == 2 and "would remove everything" in refused.output
    removed = run(runner, data_dir, "account", "remove", "work", "--yes")
    assert removed.exit_code == 0 and "Removed account work" in removed.output
    assert json.loads(run(runner, data_dir, "account", "list", "--json").stdout) == []
