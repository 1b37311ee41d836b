"""correspond.sync.flag: the lean event every live account waits on, and its callbacks."""

from __future__ import annotations

import asyncio
import sys

import pytest

from correspond.sync.flag import Flag, on_set, wait_any


async def test_wait_returns_once_set_and_at_once_while_set() -> None:
    flag = Flag()
    waiter = asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    assert not waiter.done() and not flag.is_set()
    flag.set()
    assert await asyncio.wait_for(waiter, 1) is True
    assert await asyncio.wait_for(flag.wait(), 1) is True  # still set: no wait
    flag.clear()
    assert not flag.is_set()


async def test_a_waiter_woken_by_set_returns_even_when_cleared_before_it_runs() -> None:
    """asyncio.Event's rule: a set reaches every waiter there was."""
    flag = Flag()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    flag.set()
    flag.clear()
    assert await asyncio.wait_for(asyncio.gather(*waiters), 1) == [True, True, True]


async def test_a_cancelled_waiter_leaves_nothing_behind() -> None:
    flag = Flag()
    waiter = asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert flag._waiters is None
    flag.set()  # no one to wake: no error


async def test_subscribed_callbacks_run_on_the_loop_for_each_set_until_unsubscribed() -> None:
    flag = Flag()
    calls: list[str] = []
    flag.subscribe(lambda: calls.append("a"))
    flag.set()
    assert calls == []  # scheduled, not called inside set()
    await asyncio.sleep(0)
    assert calls == ["a"]
    flag.set()  # already set: nothing new
    await asyncio.sleep(0)
    assert calls == ["a"]

    def b() -> None:
        calls.append("b")

    flag.clear()
    flag.subscribe(b)
    flag.unsubscribe(b)
    flag.unsubscribe(b)  # twice: ignored
    flag.set()
    await asyncio.sleep(0)
    assert calls == ["a", "a"]


async def test_on_set_works_for_flags_and_for_asyncio_events_and_cancels_cleanly() -> None:
    calls: list[str] = []
    flag, event = Flag(), asyncio.Event()
    cancel_flag = on_set(flag, lambda: calls.append("flag"))
    cancel_event = on_set(event, lambda: calls.append("event"))
    flag.set()
    event.set()
    await asyncio.sleep(0.01)
    assert sorted(calls) == ["event", "flag"]
    cancel_flag()
    cancel_event()
    assert flag._callbacks is None
    # Cancelled before the set: never called.
    flag.clear()
    event.clear()
    cancel_flag = on_set(flag, lambda: calls.append("late flag"))
    cancel_event = on_set(event, lambda: calls.append("late event"))
    cancel_flag()
    cancel_event()
    flag.set()
    event.set()
    await asyncio.sleep(0.01)
    assert sorted(calls) == ["event", "flag"]


async def test_wait_any_wakes_on_the_first_flag_or_times_out_without_leftovers() -> None:
    stop, changed = Flag(), Flag()
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await wait_any((stop, changed), 0.05) is False
    assert loop.time() - started >= 0.04
    assert stop._callbacks is None and changed._callbacks is None

    waiting = asyncio.create_task(wait_any((stop, changed), 5))
    await asyncio.sleep(0)
    changed.set()
    assert await asyncio.wait_for(waiting, 1) is True
    assert stop._callbacks is None and changed._callbacks is None
    assert await wait_any((stop, changed), 5) is True  # already set: at once


async def test_wait_any_does_not_swallow_a_cancellation() -> None:
    flag = Flag()
    waiting = asyncio.create_task(wait_any((flag,), 5))
    await asyncio.sleep(0)
    flag.set()
    waiting.cancel()  # in the same iteration as the set
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert flag._callbacks is None


def test_a_flag_is_smaller_than_an_asyncio_event() -> None:
    """What it is for: two per live account, 1,000 accounts to a worker."""
    event = asyncio.Event()
    event_size = sys.getsizeof(event) + sys.getsizeof(event.__dict__)
    event_size += sys.getsizeof(event._waiters)  # type: ignore[attr-defined]
    assert sys.getsizeof(Flag()) * 8 < event_size


async def test_on_set_calls_back_for_a_flag_set_already() -> None:
    """IDLE subscribes after its start: a stop set meanwhile must still interrupt it."""
    for event in (Flag(), asyncio.Event()):
        event.set()
        calls: list[int] = []
        on_set(event, lambda calls=calls: calls.append(1))
        await asyncio.sleep(0)
        assert calls == [1]
        cancelled: list[int] = []
        on_set(event, lambda cancelled=cancelled: cancelled.append(1))()  # cancelled at once
        await asyncio.sleep(0)
        assert cancelled == []
