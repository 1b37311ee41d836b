"""Small loopback networking helpers for tests and benchmarks (no pytest imports)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import select
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

__all__ = [
    "SECOND_LOOPBACK",
    "FakeImapServer",
    "black_hole",
    "connect_from",
    "free_port",
    "free_ports",
    "wait_for_port",
]

# Linux routes all of 127.0.0.0/8 to the loopback device, so this address needs no set-up.
SECOND_LOOPBACK = "127.0.0.2"


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


@contextlib.contextmanager
def black_hole(host: str = "127.0.0.1") -> Iterator[int]:
    """A loopback port where TCP connects never complete (a firewall that drops packets).

    A listener with a full accept queue: Linux drops further SYNs instead of refusing them, so
    a client's connect hangs until its own timeout. Yields the port.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        listener.bind((host, 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        # Connect (never accept) until one connect stalls: from then on the queue is full.
        for _ in range(16):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            fillers.append(filler)
            with contextlib.suppress(BlockingIOError):
                filler.connect((host, port))
            _, writable, _ = select.select([], [filler], [], 0.05)
            if not writable:
                break
        else:
            raise RuntimeError("could not fill the accept queue of a loopback listener")
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@contextlib.contextmanager
def connect_from(source: str = SECOND_LOOPBACK) -> Iterator[None]:
    """Make the running event loop open its TCP connections from ``source``.

    Dovecot treats a client whose address equals the server's own as secure and lets it log in
    without TLS; from another loopback address it behaves as over a network (``LOGINDISABLED``
    before STARTTLS). Call inside a coroutine; the loop is restored on exit.
    """
    loop = asyncio.get_running_loop()
    original = loop.create_connection
    loop.create_connection = functools.partial(  # type: ignore[method-assign]
        original, local_addr=(source, 0)
    )
    try:
        yield
    finally:
        del loop.create_connection  # the instance attribute hid the method; unhide it


# An answer: bytes to send, or an iterable of bytes to send and float pauses (seconds) between;
# a generator streams a hostile flood without holding it in memory.
Answer = bytes | Iterable[bytes | float]
ReplyFn = Callable[[bytes], Answer | None]


class FakeImapServer:
    """A tiny scripted IMAP-ish server on loopback, for cases a real server cannot produce.

    ``greeting``: bytes sent on connect, or None to accept and never speak. ``reply`` maps one
    received line (CRLF stripped) to the bytes to answer, or None to leave it to the default,
    which answers ``CAPABILITY`` with ``capabilities`` and ``LOGOUT`` with BYE + OK, and stays
    silent on anything else (a stalled server). An answer may also be a sequence of bytes and
    pauses in seconds (``[part, 2.5, rest]``: a server that stalls mid-reply), or a generator
    of them (a flood made as it is sent); lines that arrive meanwhile wait their turn. The
    answer stops when the client goes away. ``lines`` records what arrived.

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
        self._reply = reply
        self.lines: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._handlers: set[asyncio.Task[None]] = set()

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
        task = asyncio.current_task()
        if task is not None:
            # Cancelled on exit, so a handler in a scripted pause does not outlive the server.
            self._handlers.add(task)
        try:
            if self.greeting is not None:
                writer.write(self.greeting)
                await writer.drain()
            while line := await reader.readline():
                line = line.rstrip(b"\r\n")
                self.lines.append(line)
                answer = self._reply(line) if self._reply is not None else None
                if answer is None:
                    answer = self._default_reply(line)
                for part in [answer] if isinstance(answer, bytes | None) else answer:
                    if isinstance(part, float | int):
                        await asyncio.sleep(part)
                    elif writer.is_closing() or reader.at_eof():
                        break
                    elif part:
                        writer.write(part)
                        await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if task is not None:
                self._handlers.discard(task)
            writer.close()

    async def __aenter__(self) -> FakeImapServer:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for handler in list(self._handlers):
            handler.cancel()
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def server_failure_text(proc: subprocess.Popen[bytes] | None, log_path: Path, name: str) -> str:
    """What a test server that would not start said: its output when it has exited, then its
    log file."""
    parts: list[str] = []
    if proc is not None and proc.poll() is not None and proc.stdout:
        parts.append(proc.stdout.read().decode("utf-8", "replace"))
    with contextlib.suppress(OSError):
        parts.append(log_path.read_text("utf-8", "replace"))
    return "\n".join(p for p in parts if p.strip()) or f"(no output from {name})"
