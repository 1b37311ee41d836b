"""An event stream ends when its sign-in does, on SQLite and PostgreSQL: a real HTTP client
reads ``GET /notifications/stream`` from the app served by uvicorn on a loopback port;
revoking the stream's token, ending its session or disabling its user ends the stream within
its heartbeat interval, while another user's stream goes on."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import httpx2
import pytest
import uvicorn

from correspond.api import create_app
from correspond.auth import SESSION_COOKIE, AuthService
from correspond.settings import Settings
from correspond.store import Store
from correspond.testing.net import free_port
from test_cli_sync import wait_until

pytest_plugins = ["tests.conftest_store"]
pytestmark = [pytest.mark.timeout(120)]

HEARTBEAT = 0.5
#: Generous against a loaded machine: the bound under test is one heartbeat interval plus a
#: read; the stream that must not end is watched for as long.
ENDS_WITHIN = 15.0
END = "<end>"


class StreamReader:
    """Reads an event stream in a thread, each line into a queue, then ``END`` when the
    server closes it."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self._client = httpx2.Client(timeout=httpx2.Timeout(5.0, read=60.0))
        self._request = self._client.build_request("GET", url, headers=headers)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            response = self._client.send(self._request, stream=True)
            self.lines.put(f"<status {response.status_code}>")
            for line in response.iter_lines():
                self.lines.put(line)
            response.close()
            self.lines.put(END)
        except (httpx2.HTTPError, RuntimeError):
            self.lines.put("<error>")  # closed by the test

    def wait_for(self, wanted: str, timeout: float) -> list[str]:
        """The lines up to and including ``wanted``."""
        seen: list[str] = []
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {wanted!r} in {timeout} s; got {seen}") from None
            seen.append(line)
            if line == wanted:
                return seen
            if line in (END, "<error>"):
                raise AssertionError(f"the stream ended before {wanted!r}: {seen}")

    def close(self) -> None:
        self._client.close()


@pytest.fixture
def api(store: Store, store_settings: Settings) -> Iterator[str]:
    """The app served by uvicorn on a loopback port, in a thread of this process (a
    ``correspond serve`` process costs ~20 s to start on a loaded machine; the stream code is
    the same)."""
    settings = store_settings.clone(
        notify_heartbeat_seconds=HEARTBEAT, password_hash_time_cost=1, password_hash_memory_kib=1024
    )
    port = free_port()
    app = create_app(settings, store=store)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _healthy(base), "the API")
        yield base
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), "uvicorn did not stop"


def _healthy(base: str) -> bool:
    try:
        return httpx2.get(f"{base}/health", timeout=2.0).status_code == 200
    except httpx2.HTTPError:
        return False


def test_a_stream_ends_when_its_sign_in_does(store: Store, api: str) -> None:
    auth = AuthService(store, Settings(password_hash_time_cost=1, password_hash_memory_kib=1024))
    people = {
        name: auth.create_user(f"{name}@example.test", None)[0]
        for name in ("revoked", "session", "disabled", "bystander")
    }
    revoked_token = auth.create_token(people["revoked"], "stream")
    cookie = auth.start_session(people["session"])
    headers = {
        "revoked": {"Authorization": f"Bearer {revoked_token.token}"},
        "session": {"Cookie": f"{SESSION_COOKIE}={cookie}"},
        "disabled": {
            "Authorization": f"Bearer {auth.create_token(people['disabled'], 'stream').token}"
        },
        "bystander": {
            "Authorization": f"Bearer {auth.create_token(people['bystander'], 'stream').token}"
        },
    }
    readers = {name: StreamReader(f"{api}/notifications/stream", h) for name, h in headers.items()}
    try:
        for reader in readers.values():
            assert reader.wait_for(": connected", 10)[0] == "<status 200>"
        # Signed in: the streams stay open through several heartbeats.
        for reader in readers.values():
            reader.wait_for(": keep-alive", 10)
            reader.wait_for(": keep-alive", 10)
        auth.users.revoke_token(revoked_token.info.id)
        auth.end_session(cookie)
        auth.users.set_disabled("disabled@example.test", True)
        for name in ("revoked", "session", "disabled"):
            lines = readers[name].wait_for(END, ENDS_WITHIN)
            assert ": signed out" in lines, (name, lines)
        # Another user's stream goes on, and the ended credentials are refused afresh.
        readers["bystander"].wait_for(": keep-alive", 10)
        for name in ("revoked", "session", "disabled"):
            again = httpx2.get(f"{api}/notifications", headers=headers[name], timeout=5)
            assert again.status_code == 401, (name, again.text)
    finally:
        for reader in readers.values():
            reader.close()
