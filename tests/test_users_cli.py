"""Users and tokens from the command line, account owners, the 0004 migration, and what
`correspond serve` says and does on a fresh store and on a non-loopback address."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from correspond.cli import base as cli_base
from correspond.cli import main
from correspond.settings import Settings
from correspond.store import open_store
from correspond.store.engine import create_store_engine, migrate
from correspond.store.leases import AccountLeases
from correspond.store.users import UserStore

# Cheap argon2id parameters: these tests hash a few dozen passwords.
CHEAP_HASHES = {
    "CORRESPOND_PASSWORD_HASH_TIME_COST": "1",
    "CORRESPOND_PASSWORD_HASH_MEMORY_KIB": "1024",
}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for var in ("CORRESPOND_DATA_DIR", "CORRESPOND_DATABASE_URL", "CORRESPOND_SECRET_KEY"):
        monkeypatch.delenv(var, raising=False)
    for var, value in CHEAP_HASHES.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(cli_base, "_stdin_is_tty", lambda: False)
    return CliRunner()


def run(runner: CliRunner, data_dir: Path, *args: str, input: str | None = None) -> Result:
    return runner.invoke(main, ["--data-dir", str(data_dir), *args], input=input)


def add_account(runner: CliRunner, data_dir: Path, name: str, *extra: str) -> Result:
    return run(
        runner, data_dir, "account", "add", name, "--email", f"{name}@example.test",
        "--imap-host", "imap.example.test", "--password-stdin", *extra, input="pw\n",
    )  # fmt: skip


def owners(data_dir: Path) -> dict[str, str | None]:
    store = open_store(Settings(data_dir=data_dir))
    try:
        return UserStore(store.engine).account_owners()
    finally:
        store.close()


def test_accounts_added_before_any_user_go_to_the_first_admin(
    runner: CliRunner, data_dir: Path
) -> None:
    early = add_account(runner, data_dir, "early")
    assert early.exit_code == 0, early.output
    assert "first admin you create takes it" in early.output
    member = run(
        runner, data_dir, "users", "create", "m@example.test", "--password-stdin", input="pw\n"
    )
    assert member.exit_code == 0, member.output
    assert owners(data_dir) == {"early": None}  # a member takes nothing
    boss = run(
        runner, data_dir, "users", "create", "Boss@Example.test", "--admin", "--name", "Boss",
        "--password-stdin", "--json", input="pw\n",
    )  # fmt: skip
    assert boss.exit_code == 0, boss.output
    assert json.loads(boss.stdout)["accounts_taken"] == 1
    assert owners(data_dir) == {"early": "Boss@Example.test"}
    # Later accounts: the first admin by default, or the owner named.
    assert add_account(runner, data_dir, "later").exit_code == 0
    mine = add_account(runner, data_dir, "mine", "--owner", "M@example.test")
    assert mine.exit_code == 0, mine.output
    assert "Owner: m@example.test" in mine.output
    assert owners(data_dir) == {
        "early": "Boss@Example.test",
        "later": "Boss@Example.test",
        "mine": "m@example.test",
    }
    unknown = add_account(runner, data_dir, "lost", "--owner", "nobody@example.test")
    assert unknown.exit_code == 3 and "nobody@example.test" in unknown.output
    assert "lost" not in owners(data_dir)


def test_migration_0004_keeps_existing_accounts_for_the_first_admin(tmp_path: Path) -> None:
    engine = create_store_engine(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        migrate(engine, "0003")
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO accounts (name, preset, email, imap_host, imap_port, "
                    "imap_security, smtp_port, smtp_security, username, auth_kind, "
                    "allow_plaintext, state, state_detail, folders_mode, window_days, "
                    "delete_in_crm_on_remote_delete, delete_remote_on_crm_delete, "
                    "archive_in_crm_on_remote_archive, archive_remote_on_crm_archive, "
                    "created_at, updated_at) VALUES ('old', 'other', 'o@example.test', "
                    "'imap.example.test', 993, 'tls', 587, 'starttls', 'o', 'password', 0, "
                    "'live', '', 'all', 60, 0, 0, 1, 1, '2026-01-01', '2026-01-01')"
                )
            )
        migrate(engine)
        users = UserStore(engine)
        assert users.account_owners() == {"old": None}
        _admin, taken = users.create_user(
            "a@example.test", display_name="", password_hash=None, role="admin"
        )
        assert taken == 1 and users.account_owners() == {"old": "a@example.test"}
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT state FROM accounts")).scalar() == "live"
    finally:
        engine.dispose()


def test_user_commands(runner: CliRunner, data_dir: Path) -> None:
    def users(*args: str, input: str | None = None) -> Result:
        return run(runner, data_dir, "users", *args, input=input)

    assert (
        users("create", "a@example.test", "--admin", "--password-stdin", input="pw\n").exit_code
        == 0
    )
    again = users("create", "A@EXAMPLE.TEST", "--password-stdin", input="pw\n")
    assert again.exit_code == 2 and "already exists" in again.output  # case-insensitive
    # A password is never an argument.
    argv = users("create", "b@example.test", "hunter2")
    assert argv.exit_code == 2
    # No terminal and no --password-stdin: a clear error, nothing created.
    no_tty = users("create", "b@example.test")
    assert no_tty.exit_code == 2 and "--password-stdin" in no_tty.output
    nul = users("create", "b@example.test", "--password-stdin", input="a\x00b\n")
    assert nul.exit_code == 2 and "NUL" in nul.output
    assert users("create", "b@example.test", "--password-stdin", input="pw\n").exit_code == 0
    listed = json.loads(users("list", "--json").stdout)
    assert [(u["email"], u["role"], u["disabled"]) for u in listed] == [
        ("a@example.test", "admin", False),
        ("b@example.test", "member", False),
    ]
    assert all("hash" not in json.dumps(u) for u in listed)
    last_admin = users("disable", "a@example.test")
    assert last_admin.exit_code == 2 and "only enabled admin" in last_admin.output
    assert users("disable", "b@example.test").exit_code == 0
    assert json.loads(users("list", "--json").stdout)[1]["disabled"] is True
    assert users("enable", "b@example.test").exit_code == 0
    assert users("passwd", "b@example.test", "--password-stdin", input="new\n").exit_code == 0
    assert users("passwd", "nobody@example.test", "--password-stdin", input="x\n").exit_code == 3


def test_users_create_asks_twice_on_a_terminal(
    runner: CliRunner, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_base, "_stdin_is_tty", lambda: True)
    result = run(
        runner, data_dir, "users", "create", "a@example.test", "--admin",
        input="one\ntwo\nsecret\nsecret\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "do not match" in result.output
    assert "secret" not in result.output
    store = open_store(Settings(data_dir=data_dir, **_cheap()))
    try:
        from correspond.auth import AuthService

        auth = AuthService(store, Settings(data_dir=data_dir, **_cheap()))
        assert auth.authenticate_password("a@example.test", "secret", "test").is_admin
    finally:
        store.close()


def _cheap() -> dict[str, int]:
    return {"password_hash_time_cost": 1, "password_hash_memory_kib": 1024}


def test_token_commands(runner: CliRunner, data_dir: Path) -> None:
    run(
        runner,
        data_dir,
        "users",
        "create",
        "a@example.test",
        "--admin",
        "--password-stdin",
        input="p\n",
    )
    created = run(runner, data_dir, "tokens", "create", "--user", "a@example.test", "--name", "crm")
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()
    assert token.startswith("ct_") and "shown this once" in created.stderr
    listed = run(runner, data_dir, "tokens", "list", "--json")
    entries = json.loads(listed.stdout)
    assert token not in listed.stdout and token.startswith(entries[0]["prefix"])
    store = open_store(Settings(data_dir=data_dir))
    try:
        users = UserStore(store.engine)
        from correspond.auth import hash_token

        assert users.user_for_token(hash_token(token)) is not None
        revoked = run(runner, data_dir, "tokens", "revoke", str(entries[0]["id"]))
        assert revoked.exit_code == 0, revoked.output
        assert users.user_for_token(hash_token(token)) is None
    finally:
        store.close()
    missing = run(runner, data_dir, "tokens", "create", "--user", "x@example.test", "--name", "n")
    assert missing.exit_code == 3


def test_an_account_without_a_password_is_not_resumed(runner: CliRunner, data_dir: Path) -> None:
    assert add_account(runner, data_dir, "work").exit_code == 0
    assert run(runner, data_dir, "account", "pause", "work").exit_code == 0
    moved = run(runner, data_dir, "account", "update", "work", "--imap-port", "1993")
    assert moved.exit_code == 0 and "dropped" in moved.output
    store = open_store(Settings(data_dir=data_dir))
    try:
        with pytest.raises(Exception, match="no stored password"):
            AccountLeases(store.engine).resume("work")
    finally:
        store.close()
    resumed = run(runner, data_dir, "account", "resume", "work")
    assert resumed.exit_code == 2 and "account update work --password" in resumed.output


# --- serve -------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_on_a_fresh_store_starts_and_says_how_to_create_the_first_admin(
    tmp_path: Path,
) -> None:
    """The README's `correspond serve` on a fresh store: it starts, /health answers, the data
    routes answer 401, and the output says how to create the first admin and a token."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRESPOND_")}
    env.update(CHEAP_HASHES)
    proc = subprocess.Popen(
        [sys.executable, "-m", "correspond", "--data-dir", str(tmp_path / "d"), "serve",
         "--port", str(port), "--no-sync"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert r.status == 200
                    break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline
                time.sleep(0.2)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/accounts", timeout=5)
        assert refused.value.code == 401
        refused.value.close()
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)
    assert "No users yet" in output
    assert "correspond users create you@example.com --admin" in output
    assert "correspond tokens create --user you@example.com" in output
    assert "Warning" not in output  # loopback: nothing to warn about


def test_serve_warns_when_it_listens_beyond_loopback(runner: CliRunner, data_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(runner, data_dir, "serve", "--host", "0.0.0.0", "--port", str(port))
    assert result.exit_code == 1  # the port is taken: it stops after the warning
    assert "Warning: listening on 0.0.0.0, not loopback" in result.stderr
    assert "CORRESPOND_ALLOWED_HOSTS" in result.stderr


def test_migration_0004_down_and_up_again_keeps_sqlite_usable(tmp_path: Path) -> None:
    """SQLite: a downgrade below 0004 loses no folder or message (nothing rebuilds
    `accounts`), accounts stay writable, and the upgrade takes the owners back."""
    from alembic import command

    from correspond.store.engine import _alembic_config

    engine = create_store_engine(f"sqlite:///{tmp_path / 's.db'}")
    try:
        migrate(engine)
        with engine.begin() as conn:
            conn.execute(sa.text(_OLD_ACCOUNT.format(name="a")))
            conn.execute(
                sa.text(
                    "INSERT INTO folders (account_id, remote_name_raw, name, flags, selectable,"
                    " selected, backfill_done, backfill_done_count, removed, created_at, "
                    "updated_at) VALUES (1, x'494e424f58', 'INBOX', '[]', 1, 1, 0, 0, 0, "
                    "'2026-01-01', '2026-01-01')"
                )
            )
        UserStore(engine).create_user(
            "a@example.test", display_name="", password_hash=None, role="admin"
        )
        cfg = _alembic_config()
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0003")
        with engine.begin() as conn:
            conn.execute(sa.text(_OLD_ACCOUNT.format(name="b")))
            conn.execute(sa.text("UPDATE accounts SET state = 'paused'"))
            assert conn.execute(sa.text("SELECT count(*) FROM folders")).scalar() == 1
        migrate(engine)
        assert UserStore(engine).account_owners() == {"a": "a@example.test", "b": None}
    finally:
        engine.dispose()


_OLD_ACCOUNT = (
    "INSERT INTO accounts (name, preset, email, imap_host, imap_port, imap_security, smtp_port, "
    "smtp_security, username, auth_kind, allow_plaintext, state, state_detail, folders_mode, "
    "window_days, delete_in_crm_on_remote_delete, delete_remote_on_crm_delete, "
    "archive_in_crm_on_remote_archive, archive_remote_on_crm_archive, created_at, updated_at) "
    "VALUES ('{name}', 'other', 'o@example.test', 'imap.example.test', 993, 'tls', 587, "
    "'starttls', 'o', 'password', 0, 'live', '', 'all', 60, 0, 0, 1, 1, '2026-01-01', "
    "'2026-01-01')"
)


def test_account_update_on_a_terminal_asks_for_the_password_when_it_moves(
    runner: CliRunner, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert add_account(runner, data_dir, "work").exit_code == 0
    monkeypatch.setattr(cli_base, "_stdin_is_tty", lambda: True)
    moved = run(
        runner, data_dir, "account", "update", "work", "--imap-host", "new.example.test",
        "--json", input="for-the-new-server\n",
    )  # fmt: skip
    assert moved.exit_code == 0, moved.output
    assert "enter it again for the new settings" in moved.stderr
    assert json.loads(moved.stdout)["has_password"] is True
    store = open_store(Settings(data_dir=data_dir))
    try:
        assert store.account_secret("work") == "for-the-new-server"
    finally:
        store.close()
    # A change that does not move it asks nothing.
    window = run(runner, data_dir, "account", "update", "work", "--window-days", "7")
    assert window.exit_code == 0 and "Password" not in window.output
