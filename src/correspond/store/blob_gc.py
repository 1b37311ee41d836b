"""Blobs no row references any more: deleted with their account, found and removed by
``correspond doctor``.

Blobs are content-addressed and shared: the same attachment (or the same raw message, synced by
two accounts) is one file that several rows point at (``messages.raw_blob_key``,
``attachments.blob_key``), across accounts. So a blob may go only when *no* row of the whole
store references it.

Removing an account (:func:`remove_account_with_blobs`) is crash-safe by order: the rows go
first, in one transaction that also reads which blobs they referenced; then the blobs that no
other row references are deleted. A crash between the two leaves orphans, never a row without
its blob; :func:`check_blobs` (``correspond doctor``) finds them by walking the blob directories
and asking the database which keys are referenced, one first-hex-digit slice at a time (memory
bounded by a sixteenth of the store's keys), and removes them with ``fix``.

A writer running meanwhile (another account's sync storing the same content) is protected by
:meth:`BlobStore.delete_unreferenced`: a blob it found and reserved, or one a row references by
the time the blobs are set aside, is kept. The doctor also leaves alone unreferenced blobs
younger than ``blob_orphan_grace_seconds`` (a sync may be about to commit their rows), and
temporary files younger than ``blob_temp_stale_seconds`` (a write in progress).
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field

from sqlalchemy import CompoundSelect, Engine, select, union
from sqlalchemy.orm import Session, sessionmaker

from correspond.errors import NotFound
from correspond.store.blobs import BlobEntry, BlobStore
from correspond.store.engine import unit_of_work
from correspond.store.message_tables import AttachmentRow, MessageRow
from correspond.store.notifications import after_messages_deleted
from correspond.store.tables import AccountRow

__all__ = [
    "BlobCheck",
    "RemovedAccount",
    "check_blobs",
    "referenced_keys",
    "remove_account_with_blobs",
]

log = logging.getLogger(__name__)

# Keys per IN (...) list: well under SQLite's and PostgreSQL's parameter limits.
_CHUNK = 500
# Up to this many candidate keys are checked with IN lists; more are checked by streaming
# every referenced key once (no index on the key columns: each IN query scans the table).
_IN_LIST_MAX = 2_000
_HEX = "0123456789abcdef"


def _sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def _all_keys_query(lo: str | None = None, hi: str | None = None) -> CompoundSelect:
    raw = select(MessageRow.raw_blob_key.label("k")).where(MessageRow.raw_blob_key.is_not(None))
    att = select(AttachmentRow.blob_key.label("k")).where(AttachmentRow.blob_key.is_not(None))
    if lo is not None:
        raw = raw.where(MessageRow.raw_blob_key >= lo)
        att = att.where(AttachmentRow.blob_key >= lo)
    if hi is not None:
        raw = raw.where(MessageRow.raw_blob_key < hi)
        att = att.where(AttachmentRow.blob_key < hi)
    return union(raw, att)


def referenced_keys(engine: Engine, keys: Collection[str]) -> set[str]:
    """Those of ``keys`` that some message or attachment of any account references."""
    wanted = set(keys)
    if not wanted:
        return set()
    found: set[str] = set()
    with unit_of_work(_sessions(engine)) as s:
        if len(wanted) <= _IN_LIST_MAX:
            ordered = sorted(wanted)
            for i in range(0, len(ordered), _CHUNK):
                chunk = ordered[i : i + _CHUNK]
                q = union(
                    select(MessageRow.raw_blob_key).where(MessageRow.raw_blob_key.in_(chunk)),
                    select(AttachmentRow.blob_key).where(AttachmentRow.blob_key.in_(chunk)),
                )
                found.update(str(k) for k in s.scalars(q))
        else:
            for k in s.execute(_all_keys_query()).scalars():
                if k in wanted:
                    found.add(str(k))
    return found


@dataclass(frozen=True, slots=True)
class RemovedAccount:
    """What removing an account freed: blob files deleted, their bytes, and the blobs kept
    because another account's messages (or a sync writing right now) still use them."""

    name: str
    blobs_deleted: int
    bytes_freed: int
    blobs_kept: int


def remove_account_with_blobs(engine: Engine, blobs: BlobStore, name: str) -> RemovedAccount:
    """Delete account ``name`` with its rows (one transaction), then the blobs only it used.

    Rows first, then blobs: a crash in between leaves orphaned blobs for ``correspond doctor``,
    never a message whose blob is gone.
    """
    started = time.time()
    with unit_of_work(_sessions(engine)) as s:
        row = s.scalars(select(AccountRow).where(AccountRow.name == name)).one_or_none()
        if row is None:
            raise NotFound(f"no account named {name!r}")
        raw = select(MessageRow.raw_blob_key).where(
            MessageRow.account_id == row.id, MessageRow.raw_blob_key.is_not(None)
        )
        att = (
            select(AttachmentRow.blob_key)
            .join(MessageRow, AttachmentRow.message_id == MessageRow.id)
            .where(MessageRow.account_id == row.id, AttachmentRow.blob_key.is_not(None))
        )
        candidates = {str(k) for k in s.scalars(union(raw, att))}
        s.delete(row)
        after_messages_deleted(s)
    shared = referenced_keys(engine, candidates)
    orphans = candidates - shared
    deleted, freed = blobs.delete_unreferenced(
        orphans, lambda keys: referenced_keys(engine, keys), touched_after=started
    )
    log.info("removed account %s: %d blobs (%d bytes) deleted", name, deleted, freed)
    return RemovedAccount(
        name=name, blobs_deleted=deleted, bytes_freed=freed, blobs_kept=len(candidates) - deleted
    )


@dataclass(slots=True)
class BlobCheck:
    """What ``correspond doctor`` found (and, with ``fixed``, removed or repaired)."""

    blobs: int = 0
    blob_bytes: int = 0
    orphaned: int = 0
    orphaned_bytes: int = 0
    #: Unreferenced but younger than the grace period (a sync may be about to commit them).
    recent_unreferenced: int = 0
    temp_files: int = 0
    temp_bytes: int = 0
    #: Temporary files younger than the stale age (a write may be in progress): left alone.
    recent_temp_files: int = 0
    #: Blobs set aside by a deletion that a crash interrupted.
    set_aside: int = 0
    #: Blob files or directories readable by group or others.
    not_private: int = 0
    #: Referenced blobs with no file (a damaged store: nothing to fix here, reported).
    missing: int = 0
    fixed: bool = False
    removed: int = 0
    removed_bytes: int = 0
    missing_keys: list[str] = field(default_factory=list)


def _slice_of(key: str) -> str:
    return key[0]


def check_blobs(
    engine: Engine,
    blobs: BlobStore,
    *,
    fix: bool = False,
    orphan_grace_seconds: float = 600.0,
    temp_stale_seconds: float = 60.0,
    now: float | None = None,
) -> BlobCheck:
    """Walk the blob store and compare it with the rows: orphaned blobs, stale temporary files,
    set-aside blobs, files open to others, referenced blobs that are missing. With ``fix``,
    delete the orphans and stale temporary files, settle the set-aside ones and make files
    private again."""
    now = time.time() if now is None else now
    report = BlobCheck(fixed=fix)
    if fix:
        report.not_private = blobs.make_private()
    by_slice: dict[str, dict[str, BlobEntry]] = defaultdict(dict)
    set_aside: list[BlobEntry] = []
    for entry in blobs.walk():
        if entry.mode & 0o077:
            report.not_private += 1
            if fix:
                os.chmod(entry.path, 0o600)
        if entry.kind == "temp":
            if entry.mtime > now - temp_stale_seconds:
                report.recent_temp_files += 1
                continue
            report.temp_files += 1
            report.temp_bytes += entry.size
            if fix and _unlink(entry.path):
                report.removed += 1
                report.removed_bytes += entry.size
        elif entry.kind == "gc":
            report.set_aside += 1
            set_aside.append(entry)
        elif entry.key is not None:
            report.blobs += 1
            report.blob_bytes += entry.size
            by_slice[_slice_of(entry.key)][entry.key] = entry
    if set_aside:
        keep = referenced_keys(engine, {e.key for e in set_aside if e.key})
        for entry in set_aside:
            if fix and blobs.restore_or_drop(entry, entry.key in keep):
                report.removed += 1
                report.removed_bytes += entry.size
    sessions = _sessions(engine)
    for digit in _HEX:
        on_disk = by_slice.pop(digit, {})
        hi = _HEX[_HEX.index(digit) + 1] if digit != "f" else "g"
        with unit_of_work(sessions) as s:
            referenced = {str(k) for k in s.execute(_all_keys_query(digit, hi)).scalars()}
        missing = referenced.difference(on_disk)
        # The two-level layout's files are found by the walk too; a key missing from both is
        # really missing.
        missing = {k for k in missing if not blobs.exists(k)}
        report.missing += len(missing)
        report.missing_keys.extend(sorted(missing)[: max(0, 20 - len(report.missing_keys))])
        orphans = [e for k, e in on_disk.items() if k not in referenced]
        old = [e for e in orphans if e.mtime <= now - orphan_grace_seconds]
        report.recent_unreferenced += len(orphans) - len(old)
        report.orphaned += len(old)
        report.orphaned_bytes += sum(e.size for e in old)
        if fix and old:
            deleted, freed = blobs.delete_unreferenced(
                [e.key for e in old if e.key is not None],
                lambda keys: referenced_keys(engine, keys),
                touched_after=now - orphan_grace_seconds,
            )
            report.removed += deleted
            report.removed_bytes += freed
    return report


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True
