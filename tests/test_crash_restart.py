"""After a SIGKILL of ``correspond sync``: its parse workers and the multiprocessing resource
tracker exit too, and a restart takes the dead holder's lease at once instead of waiting for it
to expire. Real subprocesses, real Dovecot, SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from correspond.settings import Settings
from correspond.store.leases import AccountLeases, holder_is_gone, process_identity
from correspond.sync.runner import default_owner
from correspond.testing.dovecot import DovecotServer, ImapUser
from helpers import StoreCli
from test_sync_dovecot import NOW, Env, _sqlite, append_many

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


def _stat(pid: int) -> list[str] | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data[data.rfind(b")") + 2 :].decode().split()


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"  # a zombie has exited


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and fields[1] == str(pid) and fields[0] != "Z":
                found.append(int(entry.name))
    return found


@pytest.fixture
def env(dovecot: DovecotServer, imap_user: ImapUser, tmp_path: Path) -> Iterator[Env]:
    with _sqlite(tmp_path) as engine:
        yield Env(engine, dovecot, imap_user, tmp_path, key=KEY)


KEY = Fernet.generate_key()


def test_killed_sync_takes_its_workers_along_and_restarts_at_once(env: Env, tmp_path: Path) -> None:
    append_many(env, "INBOX", [(i, NOW - timedelta(days=i % 20)) for i in range(40)])
    url = env.store.engine.url.render_as_string(hide_password=False)
    data_dir = env.settings.data_dir
    child_env = {
        **os.environ,
        "CORRESPOND_DATABASE_URL": url,
        "CORRESPOND_SECRET_KEY": KEY.decode(),
        "CORRESPOND_DATA_DIR": str(data_dir),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "correspond",
            "sync",
            env.account.name,
            "--parse-processes",
            "2",
            "--no-progress",
        ],
        env=child_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    leases = AccountLeases(env.store.engine)
    try:
        deadline = time.monotonic() + 120
        kids: list[int] = []
        while time.monotonic() < deadline:
            state = env.store.get_account(env.account.name).state
            kids = children(proc.pid)
            # The backfill went through the pool (workers spawned) and the account is live.
            if state == "live" and len(kids) >= 2:
                break
            assert proc.poll() is None, "sync exited early"
            time.sleep(0.2)
        else:
            pytest.fail(f"sync never went live with its workers ({state}, {kids})")
        holder = leases.holder(env.account.name)
        assert holder is not None and holder[0].startswith(f"{socket.gethostname()}:{proc.pid}:")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        killed_at = time.monotonic()
        # The workers and the resource tracker notice and exit within seconds.
        while any(alive(k) for k in kids) and time.monotonic() - killed_at < 15:
            time.sleep(0.1)
        assert not [k for k in kids if alive(k)], "children outlived the killed sync"
        gone_after = time.monotonic() - killed_at
        # A restart does not wait for the dead process's lease (60 s) to expire.
        assert leases.holder(env.account.name) is not None  # still unexpired
        cli = StoreCli(Settings(data_dir=data_dir, secret_key=KEY.decode()), url)
        # The stored state still says "live"; what is shown says nothing watches any more.
        assert env.store.get_account(env.account.name).state == "live"
        (shown,) = cli.json("account", "list")
        assert shown["state"] == "connecting", shown
        assert "stopped without handing it over" in shown["state_detail"]
        assert "last synced: 20" in shown["state_detail"]
        started = time.monotonic()
        result = cli("sync", env.account.name, "--once", "--no-progress", "--parse-processes", "0")
        assert result.exit_code == 0, result.output
        assert time.monotonic() - started < 30
        print(
            f"children gone {gone_after:.1f} s after SIGKILL; restart took "
            f"{time.monotonic() - started:.1f} s"
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_holder_is_gone_only_for_a_dead_process_of_this_host() -> None:
    me = default_owner()
    assert "/" in me and not holder_is_gone(me)  # alive: this very process
    name, _, ident = me.partition("/")
    host, pid, token = name.rsplit(":", 2)
    boot, pidns, start = ident.split(".")
    # The same pid, started at another time: the pid was reused, the holder is gone.
    assert holder_is_gone(f"{host}:{pid}:{token}/{boot}.{pidns}.{int(start) + 1}")
    # A process that exited.
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    ident_done = process_identity(done.pid)
    done.wait()
    assert ident_done and holder_is_gone(f"{host}:{done.pid}:abc/{ident_done}")
    # Another host, another pid namespace or an owner without identity: not ours to judge.
    assert not holder_is_gone(f"elsewhere.example:{done.pid}:abc/{ident_done}")
    assert not holder_is_gone(f"{host}:{done.pid}:abc/{boot}.1.{start}")
    assert not holder_is_gone(f"{host}:{done.pid}:abc")
