"""Small loopback networking helpers for tests and benchmarks (no pytest imports)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

__all__ = ["FakeImapServer", "free_port", "free_ports", "wait_for_port"]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports that were free a moment ago on ``host``.

    All sockets are held open until every port is chosen, so the ports are distinct; another
    process may still take one before the caller binds it (callers retry on failure).
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port(host: str = "127.0.0.1") -> int:
    """One TCP port that was free a moment ago on ``host`` (nothing listens on it)."""
    return free_ports(1, host)[0]


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    """Poll until ``host:port`` accepts a TCP connection; False when ``timeout`` runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


ReplyFn = Callable[[bytes], bytes | None]


class FakeImapServer:
    """A tiny scripted IMAP-ish server on loopback, for cases a real server cannot produce.

    ``greeting``: bytes sent on connect, or None to accept and never speak. ``reply`` maps one
    received command line (CRLF stripped) to the bytes to answer, or None to stay silent
    (a stalled server). The default answers ``CAPABILITY`` with ``capabilities`` and ``LOGOUT``
    with BYE + OK, and stays silent on anything else. ``lines`` records what arrived.

    >>> async with FakeImapServer(b"* OK hi\\r\\n") as fake:   # doctest: +SKIP
    ...     fake.port
    """

    host = "127.0.0.1"

    def __init__(
        self,
        greeting: bytes | None,
        *,
        capabilities: str = "IMAP4rev1",
        reply: ReplyFn | None = None,
    ) -> None:
        self.greeting = greeting
        self.capabilities = capabilities
        self._reply = reply or self._default_reply
        self.lines: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    def _default_reply(self, line: bytes) -> bytes | None:
        tag, _, rest = line.partition(b" ")
        command = rest.split(b" ", 1)[0].upper()
        if command == b"CAPABILITY":
            return b"* CAPABILITY " + self.capabilities.encode() + b"\r\n" + tag + b" OK done\r\n"
        if command == b"LOGOUT":
            return b"* BYE bye\r\n" + tag + b" OK done\r\n"
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            if self.greeting is not None:
                writer.write(self.greeting)
                await writer.drain()
            while line := await reader.readline():
                line = line.rstrip(b"\r\n")
                self.lines.append(line)
                answer = self._reply(line)
                if answer:
                    writer.write(answer)
                    await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> FakeImapServer:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
