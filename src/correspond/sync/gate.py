"""At most so many connection attempts at once to one IMAP host, per process.

A worker that starts (or restarts) with 1,000 accounts would otherwise open 1,000 TCP
connections, TLS handshakes and logins to the same server within a second: a login storm that
servers meet with their own limits (Dovecot's login processes, a provider's per-address rate),
and a memory peak of its own: the handshakes' and first commands' buffers, freed a moment later
between the blocks that stay, kept 13-16 KB per account of a worker's memory for good at
1,000 accounts (bench/README.md, idle_accounts.py). With a gate the attempts take turns, a few at a
time per host; a host that does not answer holds only its own accounts' turns (each attempt
is bounded by the connect and command timeouts).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator

__all__ = ["HostGate", "host_gate"]


class _HostTurns:
    __slots__ = ("semaphore", "users")

    def __init__(self, limit: int) -> None:
        self.semaphore = asyncio.Semaphore(limit)
        self.users = 0


class HostGate:
    """Turns for connection attempts, per host, in one event loop. A host's entry lives only
    while an attempt holds or waits for a turn, so the gate holds nothing for idle hosts."""

    __slots__ = ("_hosts",)

    def __init__(self) -> None:
        self._hosts: dict[str, _HostTurns] = {}

    def __len__(self) -> int:
        """Hosts with an attempt under way or waiting."""
        return len(self._hosts)

    @contextlib.asynccontextmanager
    async def turn(self, host: str, limit: int) -> AsyncIterator[None]:
        """Hold one of ``limit`` turns for ``host`` (case-insensitive) while the block runs.
        The limit is the one given when the host's entry was made (by the first attempt)."""
        if limit < 1:
            raise ValueError("a host needs at least one turn")
        key = host.lower()
        turns = self._hosts.get(key)
        if turns is None:
            turns = self._hosts[key] = _HostTurns(limit)
        turns.users += 1
        try:
            async with turns.semaphore:
                yield
        finally:
            turns.users -= 1
            if turns.users == 0 and self._hosts.get(key) is turns:
                del self._hosts[key]


_GATES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, HostGate] = weakref.WeakKeyDictionary()


def host_gate() -> HostGate:
    """The running loop's gate (asyncio's semaphores belong to one loop)."""
    loop = asyncio.get_running_loop()
    gate = _GATES.get(loop)
    if gate is None:
        gate = _GATES[loop] = HostGate()
    return gate
