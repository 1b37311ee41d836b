"""Waiting on an event with a time limit, without losing a cancellation.

On Python 3.11, ``asyncio.wait_for`` returns normally when its task is cancelled in the same
loop iteration as the awaited event is set: the cancellation is swallowed and a ``while True``
loop around it never ends (an app's shutdown then waits forever). ``asyncio.timeout`` counts
cancellations, so an outside cancel always wins; every timed wait here goes through it.
"""

from __future__ import annotations

import asyncio


async def wait_set(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass: whether it is set."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(max(0.0, timeout)):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True
