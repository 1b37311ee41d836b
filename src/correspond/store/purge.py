"""Purging deleted messages: a message ``deleted`` for longer than
``Settings.deleted_retention_days`` (30) goes for good, with the blobs only it used.

Same order as removing an account (``store.blob_gc``): the rows go first, in one transaction
that also reads which blobs they referenced (their locations, attachments, references,
notifications, timeline links and outbox rows go with them by cascade; their threads are
re-counted, and a thread left with no message goes too); then the blobs that no other row of
the whole store references are deleted (a blob shared with another message, of this account or
another, stays). A crash in between leaves orphans for ``correspond doctor --fix``, never a row
without its blob. Bounded: at most ``batch`` messages a call, oldest deletion first; the worker
calls it every ``purge_interval_seconds`` until a pass finds nothing (:func:`purge_all`), and
``correspond doctor --fix`` can call it too.

The clock is a parameter (``now``): tests purge "31 days later" without waiting.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, func, select, union, update
from sqlalchemy.orm import Session, sessionmaker

from correspond.store.blob_gc import referenced_keys
from correspond.store.blobs import BlobStore
from correspond.store.engine import register_table_modules, unit_of_work
from correspond.store.message_tables import AttachmentRow, MessageRow, ThreadRow
from correspond.store.notifications import after_messages_deleted
from correspond.store.tables import utcnow

__all__ = ["PurgeReport", "purge_all", "purge_deleted", "purgeable"]

log = logging.getLogger(__name__)

#: Upper bound of one call's batch, whatever the caller asks.
MAX_BATCH = 10_000


@dataclass(frozen=True, slots=True)
class PurgeReport:
    """What one purge pass removed: messages, blob files and their bytes, and the blobs kept
    because another message still uses them."""

    messages: int = 0
    blobs_deleted: int = 0
    bytes_freed: int = 0
    blobs_kept: int = 0


def purge_deleted(
    engine: Engine,
    blobs: BlobStore,
    *,
    retention_days: int = 30,
    batch: int = 200,
    now: datetime | None = None,
    account_id: int | None = None,
) -> PurgeReport:
    """Purge up to ``batch`` messages deleted before ``now - retention_days`` (see the module
    docstring), of every account or of ``account_id``. A message restored meanwhile is not
    touched (the DELETE re-checks the state)."""
    register_table_modules()
    started = time.time()
    now = utcnow() if now is None else now
    cutoff = now - timedelta(days=retention_days)
    limit = max(1, min(batch, MAX_BATCH))
    sessions = sessionmaker(engine, expire_on_commit=False)
    due = _due(cutoff, account_id)
    with unit_of_work(sessions) as s:
        rows = s.execute(due.order_by(MessageRow.deleted_at, MessageRow.id).limit(limit)).all()
        if not rows:
            return PurgeReport()
        ids = [int(r.id) for r in rows]
        threads = {int(r.thread_id) for r in rows if r.thread_id is not None}
        raw = select(MessageRow.raw_blob_key).where(
            MessageRow.id.in_(ids), MessageRow.raw_blob_key.is_not(None)
        )
        att = select(AttachmentRow.blob_key).where(
            AttachmentRow.message_id.in_(ids), AttachmentRow.blob_key.is_not(None)
        )
        candidates = {str(k) for k in s.scalars(union(raw, att))}
        result = s.execute(
            delete(MessageRow).where(
                MessageRow.id.in_(ids),
                MessageRow.state == "deleted",
                MessageRow.deleted_at < cutoff,
            )
        )
        purged = int(getattr(result, "rowcount", 0) or 0)
        _recount_threads(s, threads)
        after_messages_deleted(s)
    shared = referenced_keys(engine, candidates)
    deleted, freed = blobs.delete_unreferenced(
        candidates - shared, lambda keys: referenced_keys(engine, keys), touched_after=started
    )
    if purged:
        log.info("purged %d deleted messages: %d blobs (%d bytes) deleted", purged, deleted, freed)
    return PurgeReport(
        messages=purged,
        blobs_deleted=deleted,
        bytes_freed=freed,
        blobs_kept=len(candidates) - deleted,
    )


def _due(cutoff: datetime, account_id: int | None) -> Any:
    due = select(MessageRow.id, MessageRow.thread_id).where(
        MessageRow.deleted_at.is_not(None),
        MessageRow.deleted_at < cutoff,
        MessageRow.state == "deleted",
    )
    if account_id is not None:
        due = due.where(MessageRow.account_id == account_id)
    return due


def purgeable(engine: Engine, *, retention_days: int = 30, now: datetime | None = None) -> int:
    """How many messages are deleted for longer than ``retention_days`` (what a purge would
    remove; ``correspond doctor`` reports it)."""
    register_table_modules()
    cutoff = (utcnow() if now is None else now) - timedelta(days=retention_days)
    with unit_of_work(sessionmaker(engine)) as s:
        found = s.scalar(select(func.count()).select_from(_due(cutoff, None).subquery()))
    return int(found or 0)


def purge_all(
    engine: Engine,
    blobs: BlobStore,
    *,
    retention_days: int = 30,
    batch: int = 200,
    max_batches: int = 100,
    now: datetime | None = None,
    account_id: int | None = None,
) -> PurgeReport:
    """:func:`purge_deleted` until a pass purges nothing or ``max_batches`` passes ran."""
    total = PurgeReport()
    for _ in range(max(1, max_batches)):
        report = purge_deleted(
            engine,
            blobs,
            retention_days=retention_days,
            batch=batch,
            now=now,
            account_id=account_id,
        )
        total = PurgeReport(
            messages=total.messages + report.messages,
            blobs_deleted=total.blobs_deleted + report.blobs_deleted,
            bytes_freed=total.bytes_freed + report.bytes_freed,
            blobs_kept=total.blobs_kept + report.blobs_kept,
        )
        if report.messages == 0:
            break
    return total


def _recount_threads(s: Session, thread_ids: set[int]) -> None:
    """Count and first/last dates of the threads that lost messages; an empty one goes."""
    when = func.coalesce(MessageRow.date, MessageRow.internaldate)
    for tid in sorted(thread_ids):
        count, first, last = s.execute(
            select(func.count(), func.min(when), func.max(when)).where(MessageRow.thread_id == tid)
        ).one()
        if not count:
            s.execute(delete(ThreadRow).where(ThreadRow.id == tid))
            continue
        s.execute(
            update(ThreadRow)
            .where(ThreadRow.id == tid)
            .values(message_count=int(count), first_message_at=first, last_message_at=last)
        )
