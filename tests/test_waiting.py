"""A timed wait never swallows a cancellation (CI hung on an app's shutdown when it did)."""

from __future__ import annotations

import asyncio

from correspond.waiting import wait_set


async def _poll_forever(event: asyncio.Event) -> None:
    while True:
        await wait_set(event, 1.0)
        event.clear()


def _cancel_as_the_event_is_set() -> bool:
    async def main() -> bool:
        event = asyncio.Event()
        task = asyncio.create_task(_poll_forever(event))
        await asyncio.sleep(0.01)
        # The same loop iteration: on Python 3.11 asyncio.wait_for returned normally here.
        event.set()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=3)
        task.cancel()
        return bool(done) and task.cancelled()

    return asyncio.run(main())


def test_a_cancel_that_meets_the_wake_up_still_ends_the_loop() -> None:
    assert _cancel_as_the_event_is_set()


def test_wait_set_says_whether_the_event_was_set() -> None:
    async def main() -> tuple[bool, bool, bool]:
        event = asyncio.Event()
        timed_out = await wait_set(event, 0.01)
        asyncio.get_running_loop().call_later(0.01, event.set)
        woken = await wait_set(event, 5)
        already = await wait_set(event, 0)
        return timed_out, woken, already

    assert asyncio.run(main()) == (False, True, True)
