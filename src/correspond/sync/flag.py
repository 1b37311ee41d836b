"""A lean ``asyncio.Event`` for the flags every live account holds.

A worker keeps two flags per live account (stop, and "the account's row changed") and waits on
them in every IDLE. ``asyncio.Event`` keeps a ``collections.deque`` for its waiters from birth
(760 bytes) and an instance dict, and waiting on two of them while IDLE runs took two
``Event.wait`` tasks per account: ~3 KB of each account's ~100 KB at 1,000 accounts
(bench/README.md). A :class:`Flag` has slots, a waiter list only while someone waits, and
callbacks (:meth:`Flag.subscribe`) so IDLE is interrupted by the flag itself, with no task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

__all__ = ["Flag", "Waitable", "on_set", "wait_any"]


class Flag:
    """``is_set``/``set``/``clear``/``wait`` as ``asyncio.Event`` (same semantics: ``wait``
    returns at once while set, waiters woken by ``set`` return even if it is cleared before they
    run), plus :meth:`subscribe`: a callback scheduled on the loop each time the flag is set.

    Not thread-safe, like ``asyncio.Event``: set it on its loop (``call_soon_threadsafe``)."""

    __slots__ = ("_callbacks", "_loop", "_value", "_waiters")

    def __init__(self) -> None:
        self._value = False
        self._waiters: list[asyncio.Future[None]] | None = None
        self._callbacks: list[Callable[[], object]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the subscribers' loop

    def __repr__(self) -> str:
        return f"<Flag {'set' if self._value else 'unset'}>"

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if self._value:
            return
        self._value = True
        waiters, callbacks = self._waiters, self._callbacks
        if waiters:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        if callbacks and self._loop is not None:
            for callback in tuple(callbacks):
                self._loop.call_soon(callback)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            self._waiters.remove(waiter)
            if not self._waiters:
                self._waiters = None

    def subscribe(self, callback: Callable[[], object]) -> None:
        """Schedule ``callback()`` on the running loop whenever the flag is set from now on
        (until :meth:`unsubscribe`). It is not called for a flag already set."""
        self._loop = asyncio.get_running_loop()
        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(callback)

    def unsubscribe(self, callback: Callable[[], object]) -> None:
        """Stop calling ``callback`` (a callback not subscribed is ignored)."""
        callbacks = self._callbacks
        if callbacks is None:
            return
        try:
            callbacks.remove(callback)
        except ValueError:
            return
        if not callbacks:
            self._callbacks = None


Waitable = Flag | asyncio.Event
"""What the engine waits on: a :class:`Flag` (the runner's), or an ``asyncio.Event`` (a caller
running one account on its own)."""


def on_set(event: Waitable, callback: Callable[[], object]) -> Callable[[], None]:
    """Call ``callback()`` on the loop once ``event`` is set (soon, when it is set already);
    returns the function that cancels that. A :class:`Flag` calls it itself; an
    ``asyncio.Event`` needs a task waiting on it."""
    if event.is_set():
        # Set while the caller was busy (IDLE being started): never missed.
        return asyncio.get_running_loop().call_soon(callback).cancel
    if isinstance(event, Flag):
        event.subscribe(callback)
        return lambda: event.unsubscribe(callback)
    waiter = asyncio.ensure_future(event.wait())

    def done(_future: object) -> None:
        callback()

    waiter.add_done_callback(done)

    def cancel() -> None:
        waiter.remove_done_callback(done)
        waiter.cancel()

    return cancel


async def wait_any(flags: Iterable[Waitable], timeout: float) -> bool:
    """Wait until one of ``flags`` is set or ``timeout`` seconds pass: whether one is set.

    One future and a callback on each flag (:func:`on_set`): no task per :class:`Flag`. A
    cancellation is never lost (``asyncio.timeout``, see :mod:`correspond.waiting`)."""
    flags = tuple(flags)
    if any(flag.is_set() for flag in flags):
        return True
    woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake() -> None:
        if not woken.done():
            woken.set_result(None)

    cancels = [on_set(flag, wake) for flag in flags]
    try:
        async with asyncio.timeout(max(0.0, timeout)):
            await woken
    except TimeoutError:
        pass
    finally:
        for cancel in cancels:
            cancel()
    return any(flag.is_set() for flag in flags)
