"""Which threads run the engine's blocking calls (store queries, preparing a small batch).

Every blocking call of the sync engine goes through :func:`in_thread`, which is
``asyncio.to_thread`` on the executor of the current context: the loop's default one, or, for
the sync a new-mail notification wakes (:func:`new_mail_context`), a small pool of its own. With
1,000 accounts in one worker the default pool (``min(32, cpus + 4)`` threads) is shared by every
account's backfill, polls, state writes and lease round; a burst of those (the first passes, a
wave of polls) queued a new message's queries seconds behind them. The new-mail pool is used
by nothing else, so its queries wait only for each other (and for the database itself).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

__all__ = ["NEW_MAIL_THREADS", "in_thread", "new_mail_context", "new_mail_executor"]

P = ParamSpec("P")
T = TypeVar("T")

NEW_MAIL_THREADS = 4
"""Threads for new-mail syncs: a few accounts' new messages at once; their writes take turns
for the database's write lock anyway."""

_current: contextvars.ContextVar[Executor | None] = contextvars.ContextVar(
    "correspond_sync_executor", default=None
)
_new_mail: ThreadPoolExecutor | None = None


def new_mail_executor() -> ThreadPoolExecutor:
    """The process's pool for new-mail syncs, made on first use (like asyncio's default)."""
    global _new_mail
    if _new_mail is None:
        _new_mail = ThreadPoolExecutor(NEW_MAIL_THREADS, thread_name_prefix="correspond-new-mail")
    return _new_mail


def new_mail_context() -> contextvars.Context:
    """A copy of the current context whose :func:`in_thread` calls run on the new-mail pool:
    give it to ``asyncio.create_task(..., context=...)`` for the task that syncs on a change."""
    context = contextvars.copy_context()
    context.run(_current.set, new_mail_executor())
    return context


async def in_thread(func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``asyncio.to_thread(func, ...)`` on the current context's executor (default: the loop's)."""
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    call = functools.partial(context.run, func, *args, **kwargs)
    return await loop.run_in_executor(_current.get(), call)
