"""Live notifications end to end, on SQLite and PostgreSQL: a message delivered to a real
Dovecot mailbox, synced by a real ``correspond worker`` process, reaches a real HTTP client
reading ``GET /notifications/stream`` from a real ``correspond serve --no-sync`` (uvicorn on a
loopback port) within a second; the sync worker and the API are different processes (woken
by LISTEN/NOTIFY on PostgreSQL, by polling on SQLite). A reconnect with ``Last-Event-ID``
gets what it missed."""

from __future__ import annotations

import contextlib
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx2
import pytest

from correspond.settings import Settings
from correspond.store import Store
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.mail import plain_message
from correspond.testing.net import free_port
from correspond.testing.store import add_dovecot_account
from helpers import admin_token
from test_cli_sync import _interrupt, console_script, subprocess_env, wait_until

pytest_plugins = ["tests.conftest_store"]
pytestmark = [pytest.mark.dovecot, pytest.mark.timeout(180)]

#: The issue's bound: on the stream within a second of the delivery (the median of three).
#: Measured at load ~10 on 2 cores: the worker stores the message 0.53-0.65 s after the LMTP
#: delivery began (IDLE push, fetch, ingest), the fan-out and the stream add 0.05-0.25 s. So
#: one delivery of three may pass a second on a loaded machine; none may pass two.
WITHIN = 1.0
WORST = 2.0


class EventReader:
    """Reads an event stream in a thread: (arrival time, line) into a queue."""

    def __init__(self, url: str, token: str, last_event_id: str | None = None) -> None:
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        headers = {"Authorization": f"Bearer {token}"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self._client = httpx2.Client(timeout=httpx2.Timeout(5.0, read=60.0))
        self._request = self._client.build_request("GET", url, headers=headers)
        self.status: int | None = None
        self._socket: socket.socket | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            response = self._client.send(self._request, stream=True)
            self._socket = response.extensions["network_stream"].get_extra_info("socket")
            self.status = response.status_code
            for line in response.iter_lines():
                self.lines.put((time.monotonic(), line))
        except (httpx2.HTTPError, RuntimeError):
            pass  # closed by the test

    def next_matching(self, prefix: str, timeout: float) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {prefix!r} line on the stream in {timeout} s")
            at, line = self.lines.get(timeout=left)
            if line.startswith(prefix):
                return at, line

    def close(self) -> None:
        # Hang up as a client going away does. Closing the client from this thread is not
        # enough: the reader thread is blocked in recv() on the socket, which keeps it open (no
        # FIN) until the server writes again (its heartbeat, 15 s later), and ``serve`` waits
        # for the stream to end before it stops. Shutting the socket down sends the FIN and
        # wakes the reader.
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)
        self._client.close()


@pytest.fixture
def processes(
    store: Store, store_settings: Settings, store_url: str
) -> Iterator[tuple[str, list[subprocess.Popen[str]]]]:
    env = subprocess_env(store_settings, store_url)
    port = free_port()
    procs: list[subprocess.Popen[str]] = []
    base = f"http://127.0.0.1:{port}"
    try:
        procs.append(
            subprocess.Popen(
                [*console_script(), "serve", "--port", str(port), "--no-sync"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
        yield base, procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                _out, err = _interrupt(proc, signal.SIGTERM)
                assert "Traceback" not in err, err


def _mail(key: str, subject: str) -> bytes:
    return plain_message(
        f"{key}@example.test", when=datetime.now(UTC), subject=subject, body="Hello.\r\n"
    )


def _health(base: str) -> bool:
    try:
        return httpx2.get(f"{base}/health", timeout=2.0).status_code == 200
    except httpx2.HTTPError:
        return False


def test_a_delivered_message_is_on_the_stream_within_a_second(
    store: Store,
    store_settings: Settings,
    store_url: str,
    dovecot: DovecotServer,
    imap_user: ImapUser,
    processes: tuple[str, list[subprocess.Popen[str]]],
) -> None:
    base, procs = processes
    # Mail already in the mailbox is a backfill: announced to nobody.
    for n in range(3):
        dovecot.deliver(imap_user, _mail(f"old{n}", f"old {n}"))
    name = add_dovecot_account(store, dovecot, imap_user).name
    token = admin_token(store)  # the first admin takes the ownerless account
    procs.append(
        subprocess.Popen(
            [*console_script(), "worker", "--poll-seconds", "0.5", "--parse-processes", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=subprocess_env(store_settings, store_url),
        )
    )
    wait_until(lambda: _health(base), "the API")
    wait_until(lambda: store.get_account(name).state == "live", "the account live", 60)
    reader = EventReader(f"{base}/notifications/stream", token)
    try:
        reader.next_matching(": connected", 10)
        assert reader.status == 200
        latencies = []
        ids = []
        for n in range(3):
            time.sleep(0.5)
            sent = time.monotonic()
            dovecot.deliver(imap_user, _mail(f"new{n}", f"new {n}"))
            at, line = reader.next_matching("id: ", 10)
            latencies.append(at - sent)
            ids.append(int(line.removeprefix("id: ")))
            _, data = reader.next_matching("data: ", 1)
            assert f'"subject":"new {n}"' in data and f'"account":"{name}"' in data
        print(f"stream latency (s): {[round(x, 3) for x in latencies]}")
        assert sorted(latencies)[1] < WITHIN and max(latencies) < WORST, latencies
    finally:
        reader.close()
    listed = httpx2.get(
        f"{base}/notifications", headers={"Authorization": f"Bearer {token}"}, timeout=5
    ).json()
    assert sorted(n["subject"] for n in listed["notifications"]) == ["new 0", "new 1", "new 2"]
    # Resuming after the first one gets the two after it at once, then goes on live.
    resumed = EventReader(f"{base}/notifications/stream", token, last_event_id=str(ids[0]))
    try:
        got = [int(resumed.next_matching("id: ", 5)[1].removeprefix("id: ")) for _ in range(2)]
        assert got == ids[1:]
    finally:
        resumed.close()
    # A first connection with ``after`` (a page rendered before the last one arrived) does
    # the same; Last-Event-ID, a browser's reconnect, wins over it.
    first = EventReader(f"{base}/notifications/stream?after={ids[1]}", token)
    try:
        assert int(first.next_matching("id: ", 5)[1].removeprefix("id: ")) == ids[2]
    finally:
        first.close()
    both = EventReader(
        f"{base}/notifications/stream?after={ids[2]}", token, last_event_id=str(ids[0])
    )
    try:
        got = [int(both.next_matching("id: ", 5)[1].removeprefix("id: ")) for _ in range(2)]
        assert got == ids[1:]
    finally:
        both.close()
