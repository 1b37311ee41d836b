"""`correspond teams ...` and `account update --sharing / --team / --no-team` (SQLite)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from correspond.cli import base as cli_base
from correspond.cli import main


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for var in ("CORRESPOND_DATA_DIR", "CORRESPOND_DATABASE_URL", "CORRESPOND_SECRET_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CORRESPOND_PASSWORD_HASH_TIME_COST", "1")
    monkeypatch.setenv("CORRESPOND_PASSWORD_HASH_MEMORY_KIB", "1024")
    monkeypatch.setattr(cli_base, "_stdin_is_tty", lambda: False)
    return CliRunner()


def _cli(runner: CliRunner, data_dir: Path) -> Callable[..., Result]:
    def run(*args: str, input: str | None = None) -> Result:
        return runner.invoke(main, ["--data-dir", str(data_dir), *args], input=input)

    return run


def test_teams_from_the_command_line(runner: CliRunner, tmp_path: Path) -> None:
    run = _cli(runner, tmp_path / "data")
    for email, extra in (("root@example.test", ["--admin"]), ("ann@example.test", [])):
        assert (
            run("users", "create", email, *extra, "--password-stdin", input="pw\n").exit_code == 0
        )
    created = run("teams", "create", "Sales", "--json")
    assert created.exit_code == 0, created.output
    team = json.loads(created.stdout)
    assert team["name"] == "Sales" and team["members"] == []
    duplicate = run("teams", "create", "SALES")
    assert duplicate.exit_code != 0 and "already exists" in duplicate.output
    added = json.loads(run("teams", "add-member", "sales", "ann@example.test", "--json").stdout)
    assert [m["email"] for m in added["members"]] == ["ann@example.test"]
    assert run("teams", "add-member", "Nope", "ann@example.test").exit_code != 0
    add = run(
        "account", "add", "shared", "--email", "s@example.test", "--imap-host",
        "imap.example.test", "--password-stdin", input="pw\n",
    )  # fmt: skip
    assert add.exit_code == 0, add.output
    shared = run(
        "account", "update", "shared", "--sharing", "metadata", "--team", "Sales", "--json"
    )
    assert shared.exit_code == 0, shared.output
    account = json.loads(shared.stdout)
    assert (account["sharing"], account["team_id"]) == ("metadata", team["id"])
    assert account["has_password"] is True  # sharing is no connection setting
    listed = json.loads(run("teams", "list", "--json").stdout)
    assert listed[0]["accounts"] == ["shared"]
    plain = run("account", "update", "shared", "--no-team")
    assert plain.exit_code == 0 and "personal" in plain.output
    assert run("account", "update", "shared", "--team", "Sales", "--no-team").exit_code == 2
    assert run("account", "update", "shared", "--team", "Ghosts").exit_code != 0
    assert json.loads(run("teams", "list", "--json").stdout)[0]["accounts"] == []
    removed = json.loads(
        run("teams", "remove-member", team["name"], "ann@example.test", "--json").stdout
    )
    assert removed["members"] == []
    assert run("teams", "remove-member", "Sales", "ann@example.test").exit_code != 0
    assert run("teams", "delete", str(team["id"])).exit_code == 0
    assert "No teams yet" in run("teams", "list").output
