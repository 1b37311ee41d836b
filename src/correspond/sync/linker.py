"""The background linker: fills the participant index and the timelines, off the ingest path.

:class:`Linker` runs in the worker / ``serve`` process (started by
:class:`~correspond.sync.runner.SyncRunner`). It is woken after each ingest commit of its
process and after each record change made through its process's API, and otherwise looks for
work every ``Settings.linker_poll_seconds`` (another process may have added mail or records).
Each step is one transaction (:class:`~correspond.store.linker.LinkerStore`), run in a thread.
"""

from __future__ import annotations

import asyncio
import logging

from correspond.errors import CorrespondError
from correspond.settings import Settings
from correspond.store.linker import LinkerStore, LinkPolicy
from correspond.store.repository import Store

__all__ = ["Linker", "link_policy"]

log = logging.getLogger(__name__)


def link_policy(settings: Settings) -> LinkPolicy:
    return LinkPolicy.build(
        settings.organisation_domains,
        settings.link_blocklist,
        settings.link_internal_mail,
        auto_create=settings.auto_create_contacts,
        auto_create_limit=settings.auto_create_contacts_per_batch,
    )


class Linker:
    """Runs linker steps until there is no work, then waits to be woken (or polls)."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.links = LinkerStore(
            store.engine, link_policy(settings), batch=settings.linker_batch_size
        )
        self.poll_seconds = settings.linker_poll_seconds
        # SQLite has one writer at a time: a pause between steps lets the ingest commits of
        # this process (waiting on the lock) in, instead of the linker taking it back at once.
        self.pause = 0.05 if store.dialect == "sqlite" else 0.0
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def wake(self) -> None:
        """Ask for a pass now; safe from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            if asyncio.get_running_loop() is loop:
                self._wake.set()
                return
        except RuntimeError:
            pass
        loop.call_soon_threadsafe(self._wake.set)

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: steps until there is no work (one transaction each, in a thread),
        then wait for a wake-up or the poll interval."""
        self._loop = asyncio.get_running_loop()
        while not stop.is_set():
            self._wake.clear()
            try:
                while not stop.is_set() and await asyncio.to_thread(self.links.step):
                    await asyncio.sleep(self.pause)
            except CorrespondError as exc:
                log.warning("linker pass failed: %s", exc)
            waiters = [asyncio.create_task(self._wake.wait()), asyncio.create_task(stop.wait())]
            await asyncio.wait(waiters, timeout=self.poll_seconds, return_when="FIRST_COMPLETED")
            for w in waiters:
                w.cancel()
