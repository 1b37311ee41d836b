"""Search for the surfaces (API, CLI), and the background indexer that keeps the index up.

:class:`SearchService` parses a query (:func:`~correspond.rules.search_query.parse_query`) and
runs it within what the caller may see. :class:`BackgroundIndexer` is a thread that indexes new
mail a batch at a time: woken at once when this process stores mail
(``MessageStore.after_ingest``), and every ``search_index_poll_seconds`` for mail another
process stored. Indexing is never part of an ingest transaction.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Engine

from correspond.errors import CorrespondError, NotFound
from correspond.rules.search_query import parse_query
from correspond.settings import Settings
from correspond.store.message_queries import MessagePage
from correspond.store.search import SearchIndex, SearchQueries
from correspond.store.users import User
from correspond.store.visibility import Viewer

__all__ = ["OPERATOR", "BackgroundIndexer", "SearchService", "viewer_of"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Operator:
    """The machine's operator (the CLI): sees every account (docs/ARCHITECTURE.md)."""

    id: int = 0
    is_admin: bool = True
    disabled: bool = False


#: The CLI's viewer.
OPERATOR: Viewer = _Operator()


def viewer_of(user: User) -> Viewer:
    """A signed-in user is a viewer of the visibility rule as it is."""
    return user


class SearchService:
    """Full-text search over one store's engine."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.index = SearchIndex(
            engine,
            batch_size=settings.search_index_batch,
            settle_seconds=settings.search_index_settle_seconds,
        )
        self.queries = SearchQueries(engine)

    def search(
        self,
        q: str,
        viewer: Viewer,
        *,
        account: str | None = None,
        account_ids: Sequence[int] | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> MessagePage:
        """A page of matches, newest first; ``account`` or ``account_ids`` (a team's inboxes)
        narrow it. :class:`SearchQueryError` for a query that cannot be searched; NotFound
        for an unknown account (the caller checks it is visible)."""
        query = parse_query(q)
        account_id = None
        if account is not None:
            account_id = self.queries.account_id(account)
            if account_id is None:
                raise NotFound(f"no account named {account!r}")
        return self.queries.search(
            query,
            viewer,
            account_id=account_id,
            account_ids=account_ids,
            limit=limit,
            cursor=cursor,
        )


class BackgroundIndexer:
    """A daemon thread running :meth:`SearchIndex.index_batch` until caught up, then waiting
    for :meth:`wake` or the poll interval."""

    def __init__(self, index: SearchIndex, *, poll_seconds: float) -> None:
        self.index = index
        self.poll_seconds = poll_seconds
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rounds = 0

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="search-indexer", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                while not self._stop.is_set():
                    self.rounds += 1
                    if self.index.index_batch().caught_up:
                        break
            except CorrespondError as exc:
                # The database is away or refused a batch: the next round tries again.
                log.warning("search indexing failed: %s", type(exc).__name__)
            except Exception:  # a bug must not end indexing for the life of the process
                log.exception("search indexing failed")
            self._wake.wait(self.poll_seconds)
