"""`correspond identities ...` and `correspond templates ...` (SQLite): as the user named."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from correspond.cli import base as cli_base
from correspond.cli import main
from correspond.testing.net import free_port


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for var in ("CORRESPOND_DATA_DIR", "CORRESPOND_DATABASE_URL", "CORRESPOND_SECRET_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CORRESPOND_PASSWORD_HASH_TIME_COST", "1")
    monkeypatch.setenv("CORRESPOND_PASSWORD_HASH_MEMORY_KIB", "1024")
    monkeypatch.setenv("CORRESPOND_CONNECTION_TEST_TIMEOUT", "3")
    monkeypatch.setattr(cli_base, "_stdin_is_tty", lambda: False)
    return CliRunner()


@pytest.fixture
def run(runner: CliRunner, tmp_path: Path) -> Callable[..., Result]:
    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(main, ["--data-dir", str(tmp_path / "data"), *args], input=input)

    for email, extra in (("root@example.test", ["--admin"]), ("ann@example.test", [])):
        made = invoke("users", "create", email, *extra, "--password-stdin", input="pw\n")
        assert made.exit_code == 0, made.output
    return invoke


def test_identities_from_the_command_line(run: Callable[..., Result]) -> None:
    add = run(
        "account", "add", "ann-mail", "--email", "ann@example.org", "--imap-host",
        "imap.example.org", "--owner", "ann@example.test", "--password-stdin", input="pw\n",
    )  # fmt: skip
    assert add.exit_code == 0, add.output
    listed = json.loads(run("identities", "list", "--user", "ann@example.test", "--json").stdout)
    assert [(i["address"], i["is_default"], i["account"]) for i in listed] == [
        ("ann@example.org", True, "ann-mail")
    ]
    assert "pw" not in run("identities", "list", "--user", "ann@example.test").output
    alias = run(
        "identities", "add-alias", "--user", "ann@example.test", "--account", "ann-mail",
        "--address", "sales@example.org", "--name", "Ann Sales", "--default", "--json",
    )  # fmt: skip
    assert alias.exit_code == 0, alias.output
    alias_id = json.loads(alias.stdout)["id"]
    assert json.loads(alias.stdout)["is_default"] is True
    # Root (an admin) may not use Ann's identities: not found, exit 3.
    assert run("identities", "default", str(alias_id), "--user", "root@example.test").exit_code == 3
    back = run("identities", "default", str(listed[0]["id"]), "--user", "ann@example.test")
    assert back.exit_code == 0 and "ann@example.org is the default" in back.output
    # An SMTP identity is tested before it is saved: nothing listens there.
    port = str(free_port())
    refused = run(
        "identities", "add-smtp", "--user", "ann@example.test", "--address", "a@example.net",
        "--host", "127.0.0.1", "--port", port, "--security", "tls", "--password-stdin",
        input="smtp-secret\n",
    )  # fmt: skip
    assert refused.exit_code == 1, refused.output
    assert f"not saved: Connection refused by 127.0.0.1:{port}" in refused.output
    assert "smtp-secret" not in refused.output
    no_password = run(
        "identities", "add-smtp", "--user", "ann@example.test", "--address", "a@example.net",
        "--host", "127.0.0.1",
    )  # fmt: skip
    assert no_password.exit_code == 2 and "--password-stdin" in no_password.output
    own = run("identities", "delete", str(listed[0]["id"]), "--user", "ann@example.test")
    assert own.exit_code == 2 and "remove the account" in own.output
    assert run("identities", "delete", str(alias_id), "--user", "ann@example.test").exit_code == 0
    after = json.loads(run("identities", "list", "--user", "ann@example.test", "--json").stdout)
    assert [i["id"] for i in after] == [listed[0]["id"]]


def test_templates_from_the_command_line(run: Callable[..., Result], tmp_path: Path) -> None:
    assert run("teams", "create", "Sales").exit_code == 0
    assert run("teams", "add-member", "Sales", "ann@example.test").exit_code == 0
    body = tmp_path / "body.html"
    body.write_text("<p>Hi {{contact.first_name}} of {{company.name}}</p>", encoding="utf-8")
    made = run(
        "templates", "create", "--user", "ann@example.test", "--name", "Intro",
        "--subject", "About {{deal.name}}", "--text", "Hi {{contact.first_name}}",
        "--html-file", str(body), "--team", "Sales", "--json",
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    template = json.loads(made.stdout)
    assert template["team_id"] is not None and template["html"].startswith("<p>Hi")
    bad = run(
        "templates", "create", "--user", "ann@example.test", "--name", "x",
        "--text", "{{contact.__class__}}",
    )  # fmt: skip
    assert bad.exit_code == 2 and "not a merge field" in bad.output
    listed = json.loads(run("templates", "list", "--user", "root@example.test", "--json").stdout)
    assert [t["name"] for t in listed] == ["Intro"]
    tid = str(template["id"])
    missing = run("templates", "render", tid, "--user", "ann@example.test")
    assert missing.exit_code == 2
    assert "{{deal.name}}" in missing.output and "{{contact.first_name}}" in missing.output
    personal = run("templates", "update", tid, "--user", "ann@example.test", "--team", "personal")
    assert personal.exit_code == 0, personal.output
    assert run("templates", "delete", tid, "--user", "ann@example.test").exit_code == 0
    assert json.loads(run("templates", "list", "--user", "ann@example.test", "--json").stdout) == []
