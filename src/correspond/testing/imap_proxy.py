"""A fault-injecting IMAP proxy for tests and benchmarks: the real server, a real connection,
and a fault at an exact point of the conversation (no mock of the server).

:class:`ImapFaultProxy` listens on loopback with implicit TLS (RFC 8314 §3.2), presenting the
private Dovecot's own certificate (so an account that trusts that certificate connects to the
proxy unchanged but for its port and ``imap_security="tls"``), and opens its own TLS connection
to Dovecot's implicit-TLS port for each client. Terminating TLS is what lets it read the
conversation: it reads the client's commands and the server's responses as IMAP (lines and
``{n}`` literals, RFC 3501 §4.3) and can act between them.

Armed with :meth:`arm` (a command prefix such as ``b"UID MOVE"``), the first client command that
starts with it is forwarded to the server, which carries it out, and then:

- ``mode="cut"``: when the server's tagged completion of that command arrives, both
  connections are aborted (TCP RST) *instead of* relaying it: the client sent the command and
  never learns whether it happened;
- ``mode="hold"``: the completion (and everything after it) is held back and the connection
  left open: the client waits for a reply that never comes, so a test can SIGKILL the client
  process at exactly that point.

Either way :attr:`fired` is set once the server's completion has arrived (the command took
effect on the server, or was refused: :attr:`fired_reply` holds the completion line).
:attr:`commands` records every command line the clients sent (tag removed; literals not
included), for tests that check what was asked of the server.

This module is imported by benchmarks too, so it must not import pytest.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from typing import Literal

from correspond.testing.dovecot import DovecotServer

__all__ = ["FaultMode", "ImapFaultProxy"]

FaultMode = Literal["cut", "hold"]

_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")
#: Longest line (without literals) the proxy reads; a longer one is forwarded as it comes.
_MAX_LINE = 1 << 20
_CHUNK = 65536


async def _read_piece(reader: asyncio.StreamReader) -> tuple[bytes, int]:
    """One line (up to CRLF) and the size of the literal it announces (0: none)."""
    line = await reader.readuntil(b"\r\n")
    match = _LITERAL.search(line)
    return line, int(match.group(1)) if match else 0


class ImapFaultProxy:
    """A TLS-terminating proxy in front of ``server`` that can cut or hold a connection right
    after a given command has reached the server (see the module docstring)."""

    host = "127.0.0.1"

    def __init__(self, server: DovecotServer) -> None:
        self.server = server
        self.port = 0
        self.commands: list[bytes] = []
        self.fired = asyncio.Event()
        self.fired_reply: bytes | None = None
        self.connections = 0
        self._trigger: bytes | None = None
        self._mode: FaultMode = "cut"
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._transports: list[asyncio.WriteTransport] = []

    def arm(self, command_prefix: bytes, mode: FaultMode = "cut") -> None:
        """Fault the next command that starts with ``command_prefix`` (case-insensitive),
        once. Re-arming clears :attr:`fired`."""
        self._trigger = command_prefix.upper()
        self._mode = mode
        self.fired.clear()
        self.fired_reply = None

    def disarm(self) -> None:
        self._trigger = None

    async def __aenter__(self) -> ImapFaultProxy:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server.cert_path, self.server.key_path)
        self._server = await asyncio.start_server(
            self._handle, self.host, 0, ssl=context, limit=_MAX_LINE
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        for transport in self._transports:
            transport.abort()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection(
            self.server.host,
            self.server.tls_port,
            ssl=self.server.ssl_context(),
            limit=_MAX_LINE,
        )
        self._transports += [writer.transport, up_writer.transport]
        # The tag of the command to fault, once the client has sent it.
        faulted: list[bytes] = []

        def abort() -> None:
            writer.transport.abort()
            up_writer.transport.abort()

        async def client_to_server() -> None:
            while True:
                line, literal = await _read_piece(reader)
                tag, _, rest = line.partition(b" ")
                text = rest.rstrip(b"\r\n")
                self.commands.append(text)
                if self._trigger is not None and text.upper().startswith(self._trigger):
                    faulted.append(tag)
                    self._trigger = None  # once
                up_writer.write(line)
                await up_writer.drain()
                while literal:
                    # Forwarded as it comes: a synchronising literal waits for the server's "+".
                    data = await reader.readexactly(literal)
                    up_writer.write(data)
                    line, literal = await _read_piece(reader)
                    up_writer.write(line)
                    await up_writer.drain()

        async def server_to_client() -> None:
            while True:
                line, literal = await _read_piece(up_reader)
                if faulted and line.startswith(faulted[0] + b" "):
                    self.fired_reply = line.rstrip(b"\r\n")
                    self.fired.set()
                    if self._mode == "cut":
                        abort()
                        return
                    await asyncio.Event().wait()  # hold: never relayed
                writer.write(line)
                while literal:
                    left = literal
                    while left:
                        data = await up_reader.read(min(left, _CHUNK))
                        if not data:
                            raise ConnectionResetError("the server closed inside a literal")
                        writer.write(data)
                        left -= len(data)
                    line, literal = await _read_piece(up_reader)
                    writer.write(line)
                await writer.drain()

        tasks = [
            asyncio.create_task(client_to_server()),
            asyncio.create_task(server_to_client()),
        ]
        self._tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            self._tasks.difference_update(tasks)
            abort()
