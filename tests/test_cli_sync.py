"""``correspond sync``, ``worker``, ``serve`` and ``account pause/resume/list`` against the private
Dovecot: through click's runner on SQLite and PostgreSQL, and as real subprocesses of the
installed console script (Ctrl-C and SIGTERM included)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from correspond.cli import base as cli_base
from correspond.settings import Settings
from correspond.store import Store, open_store
from correspond.store.leases import AccountLeases
from correspond.store.messages import MessageStore
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.mail import plain_message
from correspond.testing.net import free_port
from correspond.testing.store import add_dovecot_account
from helpers import StoreCli, admin_token

pytestmark = [pytest.mark.dovecot, pytest.mark.timeout(120)]

NOW = datetime.now(UTC).replace(microsecond=0)
COUNT = 4


def raw_message(n: int | str) -> bytes:
    return plain_message(f"c{n}@example.test", when=NOW, subject=f"cli {n}", body="Body.\r\n")


def add_account(
    store: Store, server: DovecotServer, user: ImapUser, password: str | None = None
) -> str:
    return add_dovecot_account(store, server, user, password).name


def count(store: Store, name: str) -> int:
    return MessageStore(store.engine).count_messages(store.get_account(name).id)


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def mailbox(dovecot: DovecotServer, imap_user: ImapUser) -> ImapUser:
    for n in range(COUNT):
        dovecot.deliver(imap_user, raw_message(n))
    return imap_user


@pytest.fixture
def cli(store_settings: Settings, store_url: str, monkeypatch: pytest.MonkeyPatch) -> StoreCli:
    monkeypatch.setattr(cli_base, "_stdin_is_tty", lambda: False)
    return StoreCli(store_settings, store_url)


def console_script() -> list[str]:
    exe = shutil.which("correspond", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "correspond.cli"]


def subprocess_env(settings: Settings, url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRESPOND_")}
    env["CORRESPOND_SECRET_KEY"] = settings.secret_key or ""
    env["CORRESPOND_DATABASE_URL"] = url
    env["CORRESPOND_DATA_DIR"] = str(settings.data_dir)
    return env


class Local:
    """An SQLite store of its own for the subprocess runs (one backend is enough there: the
    same code runs on both backends through click's runner above)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = f"sqlite:///{settings.data_dir / 'correspond.db'}"
        self.store = open_store(settings.clone(database_url=self.url))
        self.env = subprocess_env(settings, self.url)


@pytest.fixture
def local(store_settings: Settings) -> Iterator[Local]:
    opened = Local(store_settings)
    try:
        yield opened
    finally:
        opened.store.close()


# -- click's runner, both backends ---------------------------------------------------------


def test_sync_once_backfills_and_exits_zero(
    cli: StoreCli, store: Store, dovecot: DovecotServer, mailbox: ImapUser
) -> None:
    name = add_account(store, dovecot, mailbox)
    result = cli("sync", name, "--once", "--parse-processes", "0")
    assert result.exit_code == 0, result.output
    assert f"Synced {name}: {COUNT} new messages" in result.output
    # One line per state change, in order.
    lines = result.output
    assert lines.index("connecting") < lines.index("backfilling") < lines.index("Synced at")
    assert count(store, name) == COUNT
    account = store.get_account(name)
    # Not "live": nothing watches the mailbox once --once exits; the detail says so.
    assert account.state == "connecting" and account.last_sync_at is not None
    assert "not watching for new mail (no sync process running)" in account.state_detail
    assert f"{account.last_sync_at:%Y-%m-%d %H:%M:%S}" in account.state_detail
    assert account.lease_owner is None  # given back

    listed = cli("account", "list", "--json")
    assert listed.exit_code == 0, listed.output
    (item,) = json.loads(listed.stdout)
    progress = item["progress"]
    assert (progress["done"], progress["total"], progress["complete"]) == (COUNT, COUNT, True)
    assert progress["state"] == "connecting" and progress["last_sync_at"] is not None
    inbox = next(f for f in progress["folders"] if f["role"] == "inbox")
    assert (inbox["done"], inbox["total"]) == (COUNT, COUNT)

    # Paused and resumed: the detail says when it last synced.
    assert cli("account", "pause", name).exit_code == 0
    assert cli("account", "resume", name).exit_code == 0
    resumed = store.get_account(name)
    assert resumed.state == "connecting"
    assert f"Last synced: {account.last_sync_at:%Y-%m-%d %H:%M:%S} UTC" in resumed.state_detail

    table = cli("account", "list")
    assert table.exit_code == 0
    assert f"{COUNT}/{COUNT} (100%)" in table.output
    assert "INBOX" not in table.output  # complete: no folder rows unless asked
    per_folder = cli("account", "list", "--folders")
    inbox_row = next(line for line in per_folder.output.splitlines() if "INBOX" in line)
    assert f"{COUNT}/{COUNT}" in inbox_row and "done" in inbox_row


def test_sync_once_applies_the_outbox_after_the_catch_up(
    cli: StoreCli, store: Store, dovecot: DovecotServer, mailbox: ImapUser
) -> None:
    name = add_account(store, dovecot, mailbox)
    assert cli("sync", name, "--once", "--parse-processes", "0").exit_code == 0
    first = cli.json("messages", "list", name)["messages"][0]
    assert cli("messages", "star", str(first["id"])).exit_code == 0
    assert cli.json("account", "list")[0]["outbox"] == {"pending": 1, "failed": 0}
    assert cli("sync", name, "--once", "--parse-processes", "0").exit_code == 0
    assert cli.json("account", "list")[0]["outbox"] == {"pending": 0, "failed": 0}
    conn = dovecot.imaplib_client(mailbox)
    try:
        conn.select("INBOX", readonly=True)
        typ, data = conn.uid("SEARCH", "FLAGGED")
        assert typ == "OK" and len(data[0].split()) == 1
    finally:
        conn.logout()


def test_sync_once_reports_refused_sign_in(
    cli: StoreCli, store: Store, dovecot: DovecotServer, imap_user: ImapUser
) -> None:
    name = add_account(store, dovecot, imap_user, password="not-the-password")
    result = cli("sync", name, "--once", "--parse-processes", "0")
    assert result.exit_code == 4, result.output
    assert "sign-in failed" in result.output
    assert "Authentication failed" in result.output  # the server's words
    account = store.get_account(name)
    assert account.state == "auth_failed" and account.lease_owner is None
    as_json = cli("sync", name, "--once", "--parse-processes", "0", "--json")
    assert as_json.exit_code == 4, as_json.output
    report = json.loads(as_json.stdout)  # the JSON alone on stdout, even when it failed
    assert (report["ok"], report["exit_code"], report["state"]) == (False, 4, "auth_failed")
    assert "Authentication failed" in report["state_detail"] and report["folders"] == []


def test_pause_resume_from_the_command_line(
    cli: StoreCli, store: Store, dovecot: DovecotServer, mailbox: ImapUser
) -> None:
    name = add_account(store, dovecot, mailbox)
    paused = cli("account", "pause", name)
    assert paused.exit_code == 0, paused.output
    assert store.get_account(name).state == "paused"
    refused = cli("sync", name, "--once")
    assert refused.exit_code == 2
    assert "paused" in refused.output
    assert count(store, name) == 0
    listed = json.loads(cli("account", "list", "--json").stdout)
    assert listed[0]["state"] == "paused" and listed[0]["progress"]["state"] == "paused"

    resumed = cli("account", "resume", name)
    assert resumed.exit_code == 0 and "Resumed" in resumed.output
    assert store.get_account(name).state == "connecting"
    again = cli("account", "resume", name)
    assert "nothing to resume" in again.output
    assert cli("sync", name, "--once", "--parse-processes", "0").exit_code == 0
    assert count(store, name) == COUNT
    assert cli("account", "pause", "nobody").exit_code == 3


# -- the real console script ----------------------------------------------------------------


def test_subprocess_sync_once(local: Local, dovecot: DovecotServer, mailbox: ImapUser) -> None:
    store = local.store
    name = add_account(store, dovecot, mailbox)
    proc = subprocess.run(
        [*console_script(), "sync", name, "--once", "--parse-processes", "1"],
        capture_output=True,
        text=True,
        env=local.env,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Synced {name}: {COUNT} new messages" in proc.stdout
    assert count(store, name) == COUNT
    assert store.get_account(name).lease_owner is None


def _interrupt(
    proc: subprocess.Popen[str], sig: signal.Signals, *, group: bool = False
) -> tuple[str, str]:
    if group:
        os.killpg(proc.pid, sig)  # what Ctrl-C in a terminal does: the parse workers get it too
    else:
        proc.send_signal(sig)
    try:
        return proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"did not stop on {sig.name}:\n{out}\n{err}") from None


def test_subprocess_sync_live_until_ctrl_c(
    local: Local, dovecot: DovecotServer, mailbox: ImapUser
) -> None:
    store = local.store
    name = add_account(store, dovecot, mailbox)
    proc = subprocess.Popen(
        [*console_script(), "sync", name, "--parse-processes", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=local.env,
        start_new_session=True,
    )
    try:
        wait_until(
            lambda: store.get_account(name).state == "live" and count(store, name) == COUNT,
            "live",
        )
        dovecot.deliver(mailbox, raw_message("late"))
        wait_until(lambda: count(store, name) == COUNT + 1, "the delivered message")
        assert store.get_account(name).lease_owner is not None
    finally:
        out, err = _interrupt(proc, signal.SIGINT, group=True)
    assert proc.returncode == 0, out + err
    assert "Stopped syncing" in out
    assert "Traceback" not in err, err
    account = store.get_account(name)
    assert account.lease_owner is None
    assert account.state == "connecting" and "shut down" in account.state_detail


def _http(url: str, token: str, *, method: str = "GET", timeout: float = 2.0) -> Any:
    """The JSON body of a 200 answer; raises on any other answer or a connection failure."""
    request = urllib.request.Request(url, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read())


def _get(url: str, token: str = "") -> Any:
    try:
        return _http(url, token, timeout=10.0)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def test_subprocess_serve_runs_sync_beside_the_api(
    local: Local, dovecot: DovecotServer, mailbox: ImapUser
) -> None:
    store = local.store
    name = add_account(store, dovecot, mailbox)
    # A second account whose password the server refuses: its failure is logged too.
    bad = add_account(store, dovecot, dovecot.add_user(), password="wrong-password")
    token = admin_token(store)
    port = free_port()
    proc = subprocess.Popen(
        [*console_script(), "serve", "--port", str(port), "--parse-processes", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=local.env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        seen: dict[str, Any] = {}

        def caught_up() -> bool:
            body = _get(f"{base}/accounts/{name}/progress", token)
            if body is None:
                return False
            seen.update(body)
            return bool(body["state"] == "live" and body["complete"])

        wait_until(caught_up, "the account live through the API")
        wait_until(lambda: store.get_account(bad).state == "auth_failed", "the refused login")
        assert (seen["done"], seen["total"]) == (COUNT, COUNT)
        paused = _http(f"{base}/accounts/{name}/pause", token, method="POST", timeout=5)
        assert paused["state"] == "paused"
        wait_until(lambda: store.get_account(name).lease_owner is None, "the lease released")
    finally:
        out, err = _interrupt(proc, signal.SIGINT)
    assert proc.returncode == 0, out + err
    assert count(store, name) == COUNT
    assert store.get_account(name).state == "paused"  # the shutdown did not overwrite it
    # serve logs every state change and sync error, as a worker shows them.
    assert re.search(rf"INFO correspond\.sync\.state: {name}: backfilling", err), err
    assert re.search(rf"INFO correspond\.sync\.state: {name}: live", err), err
    assert re.search(rf"WARNING correspond\.sync\.state: {bad}: auth_failed: .*(?i:auth)", err), err


def test_subprocess_serve_no_sync_and_worker(
    local: Local, dovecot: DovecotServer, mailbox: ImapUser
) -> None:
    store = local.store
    name = add_account(store, dovecot, mailbox)
    token = admin_token(store)
    env = local.env
    port = free_port()
    api = subprocess.Popen(
        [*console_script(), "serve", "--port", str(port), "--no-sync"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    worker: subprocess.Popen[str] | None = None
    try:
        wait_until(lambda: _get(f"http://127.0.0.1:{port}/health") is not None, "the API")
        time.sleep(1.0)
        # The API alone syncs nothing.
        assert store.get_account(name).lease_owner is None and count(store, name) == 0
        worker = subprocess.Popen(
            [
                *console_script(),
                "worker",
                "--poll-seconds",
                "0.5",
                "--parse-processes",
                "0",
                "--progress-every",
                "0.1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        wait_until(lambda: count(store, name) == COUNT, "the worker's backfill")

        def progress_done() -> bool:
            body = _get(f"http://127.0.0.1:{port}/accounts/{name}", token)
            return body is not None and body["progress"]["done"] == COUNT

        wait_until(progress_done, "the API to show the backfill done")
    finally:
        if worker is not None:
            w_out, w_err = _interrupt(worker, signal.SIGTERM)
            assert worker.returncode == 0, w_out + w_err
            assert "stopped; its leases are released" in w_out
            # Not a terminal: the backfill's progress is a plain line per folder.
            assert f"{name}: INBOX {COUNT}/{COUNT}" in w_out, w_out
        out, err = _interrupt(api, signal.SIGINT)
    assert api.returncode == 0, out + err
    assert store.get_account(name).lease_owner is None


def test_subprocess_sync_live_ends_when_paused_elsewhere(
    local: Local, dovecot: DovecotServer, mailbox: ImapUser
) -> None:
    store = local.store
    name = add_account(store, dovecot, mailbox)
    proc = subprocess.Popen(
        [*console_script(), "sync", name, "--parse-processes", "0", "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=local.env,
    )
    try:
        wait_until(lambda: store.get_account(name).state == "live", "live")
        AccountLeases(store.engine).pause(name)  # from the API or another terminal
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out + err
    assert "paused" in out and "Stopped syncing" in out
    account = store.get_account(name)
    assert account.state == "paused" and account.lease_owner is None
