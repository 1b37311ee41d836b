"""The command line's rough edges (issue 7, sections 4 and 5): options after the command, the
data directory said and shown, ``info``, a closed pipe, server text that tries to drive the
terminal, ``sync --json`` and its exit code, progress lines without a terminal."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.fernet import Fernet
from sqlalchemy import update

from correspond import __version__
from correspond.cli import base as cli_base
from correspond.cli import main
from correspond.cli import sync as cli_sync
from correspond.cli.output import safe
from correspond.rules.presets import draft_from_preset
from correspond.settings import Settings
from correspond.store import Store, open_store
from correspond.store.location import store_location
from correspond.store.message_tables import MessageLocationRow, MessageRow
from correspond.store.tables import FolderRow
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.mail import plain_message
from correspond.testing.store import add_dovecot_account
from helpers import StoreCli

PASSWORD = "s3cret-Pa55word"
NOW = datetime.now(UTC).replace(microsecond=0)

# What a hostile server or sender would like a terminal to do: retitle the window (OSC), clear
# the screen (CSI, in its 7-bit and C1 forms), ring, reorder the line (RLO), inject rich markup.
HOSTILE = "\x1b]0;owned\x07\x1b[2J\x9b31m\u202egnp.exe\x7f [bold]Q3[/bold]"
RAW_CONTROLS = ("\x1b", "\x07", "\x9b", "\u202e", "\x7f")


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for var in ("CORRESPOND_DATA_DIR", "CORRESPOND_DATABASE_URL", "CORRESPOND_SECRET_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cli_base, "_stdin_is_tty", lambda: False)
    return CliRunner()


def add_args(name: str = "work") -> list[str]:
    return [
        "account",
        "add",
        name,
        "--email",
        "me@example.test",
        "--imap-host",
        "imap.example.test",
        "--password-stdin",
    ]


def names(result: Result) -> list[str]:
    assert result.exit_code == 0, result.output
    return [a["name"] for a in json.loads(result.stdout)]


# -- options after the command ---------------------------------------------------------------


def test_data_dir_and_json_go_before_or_after_the_command(
    runner: CliRunner, tmp_path: Path
) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    added = runner.invoke(main, [*add_args(), "--data-dir", str(one)], input=PASSWORD + "\n")
    assert added.exit_code == 0, added.output
    assert (one / "correspond.db").exists()
    assert names(runner.invoke(main, ["account", "list", "--data-dir", str(one), "--json"])) == [
        "work"
    ]
    assert names(runner.invoke(main, ["--data-dir", str(one), "account", "list", "--json"])) == [
        "work"
    ]
    # --json before the command, --data-dir after it.
    assert names(runner.invoke(main, ["--json", "account", "list", "--data-dir", str(one)])) == [
        "work"
    ]
    # The one after the command wins over the one before it.
    after = runner.invoke(main, ["--data-dir", str(one), "account", "list", "--data-dir", str(two)])
    assert after.exit_code == 0 and "No accounts yet" in after.stdout
    # A command without JSON output says so instead of ignoring --json.
    refused = runner.invoke(main, ["--json", "--data-dir", str(one), "serve"])
    assert refused.exit_code == 2 and "serve has no --json output" in refused.output


def test_pause_and_resume_print_json(runner: CliRunner, tmp_path: Path) -> None:
    data = tmp_path / "d"
    assert runner.invoke(main, [*add_args(), "--data-dir", str(data)], input="pw\n").exit_code == 0
    paused = runner.invoke(main, ["account", "pause", "work", "--json", "--data-dir", str(data)])
    assert paused.exit_code == 0, paused.output
    account = json.loads(paused.stdout)
    assert (account["name"], account["state"]) == ("work", "paused")
    resumed = runner.invoke(main, ["--json", "--data-dir", str(data), "account", "resume", "work"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["state"] == "connecting"


# -- where the store is ----------------------------------------------------------------------


def test_relative_data_dir_is_made_absolute_once(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert Settings().data_dir == tmp_path / "var"
    assert Settings(data_dir=Path("a/../b")).data_dir == tmp_path / "b"
    settings = Settings(data_dir=Path("rel"))
    monkeypatch.chdir("/")
    assert settings.clone(port=9000).data_dir == tmp_path / "rel"  # not re-resolved elsewhere
    monkeypatch.chdir(tmp_path)

    version = runner.invoke(main, ["--version"])
    assert version.exit_code == 0, version.output
    assert version.stdout.splitlines() == [
        f"correspond, version {__version__}",
        f"data directory: {tmp_path / 'var'}",
    ]
    other = runner.invoke(main, ["--data-dir", "elsewhere", "--version"])
    assert f"data directory: {tmp_path / 'elsewhere'}" in other.stdout


def test_info_shows_the_store_without_creating_it(runner: CliRunner, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shown = runner.invoke(main, ["info", "--data-dir", str(data)])
    assert shown.exit_code == 0, shown.output
    assert not data.exists()  # looking is not creating
    lines = dict(line.split(":", 1) for line in shown.stdout.splitlines())
    assert lines["version"].strip() == __version__
    assert lines["data directory"].strip() == str(data)
    assert lines["database"].strip() == f"sqlite:///{data / 'correspond.db'}"
    assert lines["blobs"].strip() == str(data / "blobs")
    assert lines["secret key"].strip().startswith(str(data / "secret.key"))
    assert lines["accounts"].strip().startswith("0")

    added = runner.invoke(main, [*add_args(), "--data-dir", str(data)], input="pw\n")
    assert added.exit_code == 0
    assert f"Created a new store: sqlite:///{data / 'correspond.db'}" in added.stderr
    again = runner.invoke(main, [*add_args("home"), "--data-dir", str(data)], input="pw\n")
    assert again.exit_code == 0 and "Created" not in again.stderr  # said once, on creation

    info = json.loads(runner.invoke(main, ["--json", "--data-dir", str(data), "info"]).stdout)
    assert info == {
        "version": __version__,
        "data_dir": str(data),
        "database": {"backend": "sqlite", "url": f"sqlite:///{data / 'correspond.db'}"},
        "store_exists": True,
        "blob_dir": str(data / "blobs"),
        "key_file": str(data / "secret.key"),
        "key_source": "file",
        "accounts": 2,
    }


def test_database_url_is_shown_without_its_password(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url="postgresql+psycopg://crm:hunter2@db.example:5433/correspond",
    )
    where = store_location(settings)
    assert where.backend == "postgresql" and where.sqlite_path is None
    assert where.url == "postgresql+psycopg://crm@db.example:5433/correspond"
    assert "hunter2" not in repr(where)


def test_a_new_store_is_announced_on_each_backend(
    store_settings: Settings, empty_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_url = empty_store_url
    monkeypatch.setattr(cli_base, "_stdin_is_tty", lambda: False)
    cli = StoreCli(store_settings, store_url)
    looked = cli("info", "--json")
    assert looked.exit_code == 0, looked.output
    info = json.loads(looked.stdout)
    assert (info["store_exists"], info["accounts"]) == (False, 0)
    assert "Created" not in looked.stderr  # looking is not creating
    where = store_location(store_settings.clone(database_url=store_url))
    created = cli("account", "list")
    assert created.exit_code == 0, created.output
    assert f"Created a new store: {where.url} " in created.stderr
    again = cli("account", "list")
    assert again.exit_code == 0 and "Created" not in again.stderr
    assert cli.json("info")["store_exists"] is True


def test_info_on_each_backend(store: Store, store_settings: Settings, store_url: str) -> None:
    store.add_account(draft_from_preset("google", name="g", email="g@gmail.com"), PASSWORD)
    info = StoreCli(store_settings, store_url).json("info")
    assert info["accounts"] == 1 and info["store_exists"] is True
    assert info["database"]["backend"] == store.dialect
    assert info["key_source"] == "CORRESPOND_SECRET_KEY" and info["key_file"] is None


# -- a closed pipe ---------------------------------------------------------------------------


def console_script() -> list[str]:
    exe = shutil.which("correspond", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "correspond.cli"]


def test_a_closed_pipe_ends_quietly_with_status_zero(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    key = Fernet.generate_key().decode()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRESPOND_")}
    env["CORRESPOND_SECRET_KEY"] = key
    store = open_store(Settings(data_dir=data_dir, secret_key=key))
    try:
        for n in range(3):
            store.add_account(
                draft_from_preset("google", name=f"g{n}", email=f"g{n}@gmail.com"), PASSWORD
            )
    finally:
        store.close()
    # One per way out: a rich table, click's echo (the issue's `messages list`), and click's
    # own help while parsing. Run side by side: each pays the start-up once.
    cases = {
        "rich table": ["account", "list"],
        "messages list": ["messages", "list", "g0"],
        "help": ["--help"],
    }
    running = {}
    for what, args in cases.items():
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader is gone before the command writes a byte (`| head -0`)
        try:
            running[what] = subprocess.Popen(
                [*console_script(), "--data-dir", str(data_dir), *args],
                stdout=write_end,
                stderr=subprocess.PIPE,
                env=env,
            )
        finally:
            os.close(write_end)
    for what, proc in running.items():
        _, stderr = proc.communicate(timeout=60)
        assert (what, proc.returncode, stderr.decode()) == (what, 0, "")


# -- server text on a terminal ---------------------------------------------------------------


def hostile_message() -> bytes:
    encoded = base64.b64encode(HOSTILE.encode()).decode()
    return plain_message(
        "hostile@example.test",
        when=NOW,
        subject=f"=?UTF-8?B?{encoded}?=",
        sender=f"=?UTF-8?B?{encoded}?= <evil@example.test>",
        body=f"Body {HOSTILE}\r\nsecond line\r\n",
    )


def assert_no_raw_controls(output: str) -> None:
    found = [repr(c) for c in RAW_CONTROLS if c in output]
    assert not found, f"raw control characters printed: {found}\n{output!r}"


@pytest.mark.dovecot
@pytest.mark.timeout(120)
def test_server_text_is_printed_escaped_never_as_terminal_controls(
    store: Store,
    store_settings: Settings,
    store_url: str,
    dovecot: DovecotServer,
    imap_user: ImapUser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cli_base, "_stdin_is_tty", lambda: False)
    dovecot.deliver(imap_user, hostile_message())
    name = add_dovecot_account(store, dovecot, imap_user).name
    cli = StoreCli(store_settings, store_url)
    synced = cli("sync", name, "--once", "--parse-processes", "0")
    assert synced.exit_code == 0, synced.output
    # What a hostile server can say: folder names and flags (LIST, FETCH), a state detail.
    with store.engine.begin() as conn:
        conn.execute(update(FolderRow).where(FolderRow.name == "INBOX").values(name=f"IN{HOSTILE}"))
        conn.execute(update(FolderRow).values(flags=[f"\\X{HOSTILE}"]))
        conn.execute(update(MessageLocationRow).values(flags=["\\Seen", f"$K{HOSTILE}"]))
        conn.execute(update(MessageRow).values(flags=["\\Seen", f"$K{HOSTILE}"]))
    store.set_account_state(name, "error", f"The server said: {HOSTILE}")
    (message_id,) = [m["id"] for m in cli.json("messages", "list", name)["messages"]]

    outputs = {
        "account list": cli("account", "list", "--folders"),
        "account folders": cli("account", "folders", name),
        "messages list": cli("messages", "list", name),
        "messages show": cli("messages", "show", str(message_id)),
        "threads show": cli(
            "threads", "show", str(cli.json("messages", "show", str(message_id))["thread_id"])
        ),
    }
    for what, result in outputs.items():
        assert result.exit_code == 0, (what, result.output)
        assert_no_raw_controls(result.output)
    # The parser may already drop some controls from headers; what reaches the store is
    # printed through the one escaping function, and still holds C1 and bidi characters.
    stored = cli.json("messages", "show", str(message_id))
    assert "\x9b" in stored["subject"] and "\u202e" in stored["subject"]
    shown = outputs["messages show"].stdout
    assert f"Subject:  {safe(stored['subject'])}" in shown
    assert "\\x9b31m\\u202egnp.exe" in shown
    assert f"$K{safe(HOSTILE)}" in shown  # flags
    assert f"Body {safe(HOSTILE)}\nsecond line" in shown  # the body keeps its lines
    assert f"IN{safe(HOSTILE)}" in shown  # folder name among the locations
    # Inside rich tables the text is data, never markup: [bold] stays as typed.
    for what in ("messages list", "account folders", "account list"):
        assert "[bold]" in outputs[what].stdout, what
        assert "\\u202e" in outputs[what].stdout, what
    # JSON keeps the real characters, as \u escapes a terminal does not act on.
    raw_json = cli("messages", "show", str(message_id), "--json").stdout
    assert_no_raw_controls(raw_json)
    assert json.loads(raw_json)["subject"] == stored["subject"]
    assert "\\u202e" in raw_json and "\\u009b" in raw_json


# -- sync --json and its exit code -------------------------------------------------------------


def maildir_folder(dovecot: DovecotServer, user: ImapUser, name: str) -> Path:
    return dovecot.maildir(user) / f".{name}"


def break_folder(dovecot: DovecotServer, user: ImapUser, name: str) -> None:
    """Leave ``name`` in the server's folder list but make SELECT fail: its Maildir's ``cur``
    becomes a file, so the server cannot open the folder (a tagged NO)."""
    folder = maildir_folder(dovecot, user, name)
    cur = folder / "cur"
    shutil.rmtree(cur, ignore_errors=True)
    cur.write_bytes(b"")
    (folder / "new").mkdir(exist_ok=True)


@pytest.mark.dovecot
@pytest.mark.timeout(120)
def test_sync_json_reports_folders_and_exits_nonzero_when_one_was_skipped(
    store: Store,
    store_settings: Settings,
    store_url: str,
    dovecot: DovecotServer,
    imap_user: ImapUser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cli_base, "_stdin_is_tty", lambda: False)
    for n in range(3):
        dovecot.deliver(
            imap_user, plain_message(f"j{n}@example.test", when=NOW, subject=f"j{n}", body="B\r\n")
        )
    name = add_dovecot_account(store, dovecot, imap_user).name
    cli = StoreCli(store_settings, store_url)
    result = cli("sync", name, "--once", "--parse-processes", "0", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # stdout is the JSON alone; the state lines went to stderr
    assert "backfilling" in result.stderr
    inbox = next(f for f in report["folders"] if f["name"] == "INBOX")
    assert (inbox["new_messages"], inbox["new_locations"], inbox["error"]) == (3, 0, None)
    assert report["totals"]["new_messages"] == 3 and report["totals"]["errors"] == 0
    assert report["totals"]["folders"] == len(report["folders"]) > 1
    assert report["ok"] is True and report["exit_code"] == 0 and report["account"] == name

    dovecot.create_mailbox(imap_user, "Projects")
    cli("account", "folders", name, "--refresh", "--all")
    break_folder(dovecot, imap_user, "Projects")
    dovecot.deliver(
        imap_user, plain_message("j9@example.test", when=NOW, subject="j9", body="B\r\n")
    )
    skipped = cli("sync", name, "--once", "--parse-processes", "0", "--json")
    assert skipped.exit_code == 6, skipped.output
    report = json.loads(skipped.stdout)
    projects = next(f for f in report["folders"] if f["name"] == "Projects")
    assert projects["error"] and projects["new_messages"] == 0
    assert report["totals"]["errors"] == 1 and report["totals"]["new_messages"] == 1
    assert report["ok"] is False and report["exit_code"] == 6

    plain = cli("sync", name, "--once", "--parse-processes", "0")
    assert plain.exit_code == 6, plain.output
    assert "Projects skipped" in plain.stdout
    assert re.search(r"1 of \d+ folders were skipped for an error", plain.stdout)


# -- progress without a terminal ---------------------------------------------------------------


@pytest.mark.dovecot
@pytest.mark.timeout(120)
def test_progress_lines_without_a_terminal(
    store: Store,
    store_settings: Settings,
    store_url: str,
    dovecot: DovecotServer,
    imap_user: ImapUser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cli_base, "_stdin_is_tty", lambda: False)
    total = 30
    for n in range(total):
        dovecot.deliver(
            imap_user, plain_message(f"p{n}@example.test", when=NOW, subject=f"p{n}", body="B\r\n")
        )
    name = add_dovecot_account(store, dovecot, imap_user).name
    cli = StoreCli(store_settings, store_url)
    # Small batches so the backfill takes several steps, a line as often as it moves.
    monkeypatch.setattr(cli_sync, "_PROGRESS_SECONDS", 0.01)
    result = cli("sync", name, "--once", "--parse-processes", "0", "--progress-every", "0.1")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if re.search(r" INBOX \d+/\d+", line)]
    assert lines, result.stdout
    assert re.fullmatch(
        rf"\d\d:\d\d:\d\d {name}: INBOX {total}/{total}(, [\d.]+ msg/s)?, done", lines[-1]
    )
    assert "━" not in result.stdout  # no bars in a log
    quiet = cli("sync", name, "--once", "--parse-processes", "0", "--no-progress")
    assert quiet.exit_code == 0 and " INBOX " not in quiet.stdout
