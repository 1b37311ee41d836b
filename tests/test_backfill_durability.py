"""Backfill memory and blob durability costs: byte-capped batches, proportional fsync.

A backfill batch is cut by the bytes of the bodies it downloads as well as by count, and each
cut is its own checkpoint (a stop between cuts resumes exactly). Blob batches below
``SYNCFS_MIN_FILES`` fsync their own files and directories instead of syncing the whole file
system; larger ones sync it twice. Either way every blob is on disk when ``put_many`` returns.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import Engine

import correspond.store.blobs as blobs_module
from correspond.settings import Settings
from correspond.store.blobs import SYNCFS_MIN_FILES, BlobStore
from correspond.store.messages import MessageStore
from correspond.store.repository import Store
from correspond.store.secrets import SecretBox
from correspond.sync.engine import AccountSyncer
from correspond.sync.folder_sync import _split_by_bytes
from correspond.testing.dovecot import DovecotServer, ImapUser
from correspond.testing.mail import plain_message
from correspond.testing.store import add_dovecot_account, migrated_engine, sync_once

NOW = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)

# --- splitting a batch by bytes (pure) --------------------------------------------------------


def test_split_by_bytes_keeps_order_and_cap() -> None:
    uids = [9, 8, 7, 6, 5]
    sizes = {9: 40, 8: 40, 7: 40, 6: 10, 5: 50}
    assert _split_by_bytes(uids, sizes, 100) == [[9, 8], [7, 6, 5]]
    assert _split_by_bytes(uids, sizes, 1000) == [uids]


def test_split_by_bytes_never_leaves_an_empty_batch() -> None:
    # A message above the cap goes alone; UIDs without a body to download cost nothing.
    assert _split_by_bytes([3, 2, 1], {3: 500, 1: 500}, 100) == [[3, 2], [1]]
    assert _split_by_bytes([4], {4: 10_000}, 1) == [[4]]
    assert _split_by_bytes([], {}, 100) == []


# --- backfill against Dovecot -------------------------------------------------------------------


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with migrated_engine(f"sqlite:///{tmp_path / 'store.db'}") as eng:
        yield eng


def _append(server: DovecotServer, user: ImapUser, count: int, body_bytes: int) -> None:
    conn = server.imaplib_client(user)
    try:
        for n in range(count):
            when = NOW - timedelta(hours=n + 1)
            raw = plain_message(
                f"big{n}@example.test",
                when=when,
                subject=f"big {n}",
                body=(f"line {n} " + "x" * 70 + "\n") * (body_bytes // 80),
            )
            typ, data = conn.append("INBOX", None, imaplib.Time2Internaldate(when), raw)
            assert typ == "OK", data
    finally:
        conn.logout()


@pytest.mark.dovecot
async def test_backfill_batches_are_capped_by_bytes_and_resume(
    engine: Engine,
    dovecot: DovecotServer,
    imap_user: ImapUser,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _append(dovecot, imap_user, 10, 20_000)
    # Three ~20 KB bodies fit under 64 KB: a count batch of 10 becomes cuts of 3, 3, 3, 1.
    settings = Settings(data_dir=tmp_path / "data", secret_key=None)
    store = Store(engine, SecretBox(Fernet.generate_key()))
    messages = MessageStore(engine)
    blobs = BlobStore(tmp_path / "data" / "blobs")
    account = add_dovecot_account(store, dovecot, imap_user)

    def syncer() -> AccountSyncer:
        return AccountSyncer(
            store,
            messages,
            blobs,
            settings,
            batch_size=10,
            max_batch_bytes=64 * 1024,
            today=NOW.date(),
        )

    first = await sync_once(syncer(), account, max_batches=1)
    inbox = next(f for f in store.list_folders(account.name) if f.role == "inbox")
    report = next(f for f in first.folders if f.folder_id == inbox.id)
    assert report.done is False
    stored = messages.folder_contents(inbox.id)
    assert len(stored) == 3  # the newest three: the cursor sits below them
    assert sorted(stored) == [8, 9, 10]

    second = await sync_once(syncer(), account)
    report = next(f for f in second.folders if f.folder_id == inbox.id)
    assert report.done is True
    assert report.batches == 3  # the 7 left: 3, 3, 1
    assert sorted(messages.folder_contents(inbox.id)) == list(range(1, 11))
    assert messages.count_messages(account.id) == 10


# --- blob durability ----------------------------------------------------------------------------


class _Calls:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fsynced: list[str] = []
        self.syncfs = 0
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            self.fsynced.append(os.readlink(f"/proc/self/fd/{fd}"))
            real_fsync(fd)

        def syncfs(fd: int) -> int:
            self.syncfs += 1
            return 0

        monkeypatch.setattr(blobs_module.os, "fsync", fsync)
        monkeypatch.setattr(blobs_module, "_SYNCFS", syncfs)


def _contents(n: int) -> list[bytes]:
    return [f"blob {i} ".encode() * 100 for i in range(n)]


def test_small_batch_fsyncs_its_files_and_directories_not_the_file_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _Calls(monkeypatch)
    store = BlobStore(tmp_path / "blobs")
    keys = store.put_many(_contents(3))
    assert calls.syncfs == 0
    paths = [store.path_for(k) for k in keys]
    # Each temporary file (renamed since) and each new directory chain up to the root.
    assert sum(1 for p in calls.fsynced if Path(p).name.startswith(".tmp-")) == 3
    synced_dirs = {Path(p) for p in calls.fsynced if not Path(p).name.startswith(".tmp-")}
    for path in paths:
        assert {path.parent, path.parent.parent, store.root} <= synced_dirs
    assert [store.get(k) for k in keys] == _contents(3)
    assert not any(p.name.startswith(".tmp-") for p in store.root.rglob("*"))


def test_existing_directories_are_not_fsynced_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlobStore(tmp_path / "blobs")
    first = _contents(1)[0]
    store.put(first)
    calls = _Calls(monkeypatch)
    twin = first + b"!"  # another key; only its own new directories need their parents synced
    key = store.put_many([twin, first])[0]
    path = store.path_for(key)
    dirs = {Path(p) for p in calls.fsynced if not Path(p).name.startswith(".tmp-")}
    assert path.parent in dirs
    assert dirs <= {path.parent, path.parent.parent, store.root}
    assert sum(1 for p in calls.fsynced if Path(p).name.startswith(".tmp-")) == 1


def test_large_batch_syncs_the_file_system_twice_and_fsyncs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _Calls(monkeypatch)
    store = BlobStore(tmp_path / "blobs")
    items = _contents(SYNCFS_MIN_FILES)
    keys = store.put_many(items)
    assert calls.syncfs == 2
    assert calls.fsynced == []
    assert [store.get(k) for k in keys] == items


def test_without_syncfs_a_large_batch_fsyncs_each_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _Calls(monkeypatch)
    monkeypatch.setattr(blobs_module, "_SYNCFS", None)
    store = BlobStore(tmp_path / "blobs")
    items = _contents(SYNCFS_MIN_FILES)
    keys = store.put_many(items)
    assert sum(1 for p in calls.fsynced if Path(p).name.startswith(".tmp-")) == len(items)
    assert [store.get(k) for k in keys] == items


def test_failed_write_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlobStore(tmp_path / "blobs")
    real_replace = os.replace
    seen: list[Any] = []

    def failing_replace(src: str, dst: Any) -> None:
        seen.append(src)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(blobs_module.os, "replace", failing_replace)
    with pytest.raises(blobs_module.StoreError):
        store.put_many(_contents(2))
    monkeypatch.setattr(blobs_module.os, "replace", real_replace)
    assert seen and not any(os.path.exists(s) for s in seen)
    with contextlib.suppress(FileNotFoundError):
        assert not any(p.is_file() for p in store.root.rglob("*"))
