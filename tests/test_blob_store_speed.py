"""The fast paths of ``BlobStore.put_many`` keep the store's guarantees.

Worker threads, the cache of fan-out directories, hand-made temporary files and the per-thread
compressor must not change what ends up on disk: content-addressed files in the old format,
nothing left behind on failure, duplicates written once, concurrent writers safe, and every
directory entry a blob needs made durable before ``put_many`` returns.
"""

from __future__ import annotations

import os
import random
import threading
import zlib
from pathlib import Path

import pytest

import correspond.store.blobs as blobs_module
from correspond.errors import StoreError
from correspond.store.blobs import SYNCFS_MIN_FILES, BlobStore, blob_key


def _mail(rng: random.Random, n: int) -> bytes:
    words = [rng.choice(["hello", "regards", "meeting", "invoice", "thanks", "the", "a"])]
    words += rng.choices(["we", "will", "send", "report", "on", "monday", "please"], k=400 + n)
    return (f"Subject: message {n}\r\n\r\n" + " ".join(words)).encode()


def _mixed(count: int, seed: int = 7) -> list[bytes]:
    """Mail-like text, random (incompressible) bytes, tiny and empty blobs, and duplicates."""
    rng = random.Random(seed)
    items: list[bytes] = []
    for n in range(count):
        kind = n % 5
        if kind == 0:
            items.append(rng.randbytes(rng.randint(600, 300_000)))
        elif kind == 1:
            items.append(bytes([n % 256]) * rng.randint(1, 400))  # below the compression floor
        else:
            items.append(_mail(rng, n))
    items += [b"", b"", items[0], items[3], items[-1]]
    rng.shuffle(items)
    return items


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob(".tmp-*")]


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("syncfs_min_files", [1, SYNCFS_MIN_FILES, 10_000])
def test_round_trip_with_duplicates_empty_and_incompressible(
    tmp_path: Path, workers: int, syncfs_min_files: int
) -> None:
    store = BlobStore(tmp_path / "blobs", workers=workers)
    items = _mixed(90)
    keys = store.put_many(items, syncfs_min_files=syncfs_min_files)
    assert keys == [blob_key(d) for d in items]
    unique = set(keys)
    assert len(unique) < len(items)  # the batch really had duplicates
    files = _files(store.root)
    assert {p.name for p in files} == unique  # one file per content, no temporaries
    for key, data in zip(keys, items, strict=True):
        path = store.path_for(key)
        assert path.relative_to(store.root).parts == (key[0:2], key)
        assert store.get(key) == data
        header = path.read_bytes()[:4]
        if len(data) >= 512 and data.startswith(b"Subject:"):
            assert header == b"CBs1"  # mail compresses
            assert path.stat().st_size < len(data)
        elif data.startswith(b"Subject:") or len(data) < 512:
            assert header in (b"CBr1", b"CBs1")
        else:
            assert header == b"CBr1"  # random bytes do not shrink: kept raw
            assert path.stat().st_size == len(data) + 4
    assert (store.root / blob_key(b"")[0:2]).is_dir()
    assert store.get(blob_key(b"")) == b""


def test_files_keep_the_old_format_and_old_files_still_read(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = b"an old message body " * 200
    key = blob_key(data)
    path = store.path_for(key)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"CBz1" + zlib.compress(data, 6))  # as a zlib-only install wrote it
    assert store.get(key) == data
    assert store.put_many([data]) == [key]
    assert path.read_bytes()[:4] == b"CBz1"  # existing content: left as it was
    raw = b"raw" * 300
    path_raw = store.path_for(store.put(raw, compress=False))
    assert path_raw.read_bytes() == b"CBr1" + raw
    assert path_raw.stat().st_mode & 0o777 == 0o600  # private, as mkstemp made them


def test_storing_existing_content_again_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlobStore(tmp_path / "blobs", workers=2)
    items = _mixed(40)
    keys = store.put_many(items)
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in _files(store.root)}

    created: list[str] = []
    real_open = os.open

    def counting_open(path: str, flags: int, *args: int, **kwargs: int) -> int:
        if flags & os.O_CREAT:
            created.append(os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(blobs_module.os, "open", counting_open)
    # Another store on the same root too: its empty directory cache must not matter.
    for again in (store, BlobStore(tmp_path / "blobs", workers=2)):
        assert again.put_many(items) == keys
        assert again.put(items[0]) == keys[0]
    assert created == []
    # Same files (no rewrite); their mtime only moved ahead: a writer that finds content
    # already stored reserves it against a concurrent garbage collection (RESERVE_SECONDS).
    assert {p: p.stat().st_ino for p in _files(store.root)} == {
        p: i for p, (i, _) in before.items()
    }
    assert all(p.stat().st_mtime_ns > m for p, (_, m) in before.items())

    fresh = b"only this one is new " * 50
    mixed_keys = store.put_many([*items[:10], fresh, fresh])
    assert mixed_keys[-1] == mixed_keys[-2] == blob_key(fresh)
    assert len(created) == 1  # one temporary file, for the one new content
    assert store.get(blob_key(fresh)) == fresh


def test_a_leftover_temporary_file_is_swept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlobStore(tmp_path / "blobs", workers=2)
    items = _mixed(10)
    kept = store.put_many(items)

    # A writer killed between writing and renaming: the renames fail and nothing cleans up.
    def killed(src: str, dst: str) -> None:
        raise OSError(5, "killed")

    monkeypatch.setattr(blobs_module.os, "replace", killed)
    monkeypatch.setattr(blobs_module.os, "unlink", lambda path: None)
    lost = [b"never renamed %d " % i * 100 for i in range(5)]
    with pytest.raises(StoreError):
        store.put_many(lost)
    monkeypatch.undo()

    leftovers = _temporaries(store.root)
    assert len(leftovers) == len(lost)
    # Each beside the blob it was meant to become, where the sweep's walk looks.
    assert {p.parent for p in leftovers} == {store.path_for(blob_key(d)).parent for d in lost}
    assert store.sweep_temporary() == 0  # too young: might be a live writer's
    assert store.sweep_temporary(older_than=0) == len(lost)
    assert _temporaries(store.root) == []
    assert [store.get(k) for k in kept] == items
    assert store.put_many(lost) == [blob_key(d) for d in lost]  # and they can be stored now
    assert [store.get(blob_key(d)) for d in lost] == lost


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("syncfs_min_files", [1, 10_000])
def test_a_failed_write_leaves_no_temporary_file_and_raises_store_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int, syncfs_min_files: int
) -> None:
    store = BlobStore(tmp_path / "blobs", workers=workers)
    store.put_many(_mixed(5, seed=1))
    before = _files(store.root)
    real_writev = os.writev
    calls = 0
    lock = threading.Lock()

    def full_disk(fd: int, buffers: list[bytes]) -> int:
        nonlocal calls
        with lock:
            calls += 1
            fail = calls >= 7
        if fail:
            raise OSError(28, "No space left on device")
        return real_writev(fd, buffers)

    monkeypatch.setattr(blobs_module.os, "writev", full_disk)
    items = [b"blob number %d " % i * 200 for i in range(30)]
    with pytest.raises(StoreError, match="No space left"):
        store.put_many(items, syncfs_min_files=syncfs_min_files)
    assert _temporaries(store.root) == []
    assert _files(store.root) == before  # nothing renamed into place either
    monkeypatch.undo()
    # The store (and its directory cache) still works.
    assert store.put_many(items) == [blob_key(d) for d in items]
    assert [store.get(blob_key(d)) for d in items] == items
    assert _temporaries(store.root) == []


def test_a_failed_single_put_raises_store_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlobStore(tmp_path / "blobs")

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(blobs_module.os, "fsync", broken_fsync)
    with pytest.raises(StoreError, match="Input/output error"):
        store.put(b"x" * 1000)
    assert _files(store.root) == []


def test_short_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def short_writev(fd: int, buffers: list[bytes]) -> int:
        return real_write(fd, bytes(buffers[0][:3]))  # not even the whole header

    def short_write(fd: int, data: memoryview) -> int:
        return real_write(fd, data[:4096])

    monkeypatch.setattr(blobs_module.os, "writev", short_writev)
    monkeypatch.setattr(blobs_module.os, "write", short_write)
    store = BlobStore(tmp_path / "blobs", workers=2)
    items = [os.urandom(100_000), b"text " * 5000, b"", b"abc"]
    keys = store.put_many(items)
    monkeypatch.undo()
    assert [store.get(k) for k in keys] == items


@pytest.mark.parametrize("shared", [True, False], ids=["one-store", "two-stores"])
def test_concurrent_put_many_of_overlapping_content(tmp_path: Path, shared: bool) -> None:
    first = BlobStore(tmp_path / "blobs", workers=2)
    second = first if shared else BlobStore(tmp_path / "blobs", workers=2)
    common = _mixed(60, seed=3)
    batches = [
        common + [b"only in the first %d " % i * 50 for i in range(40)],
        [b"only in the second %d " % i * 50 for i in range(40)] + common[::-1],
    ]
    start = threading.Barrier(2)
    results: list[list[str] | BaseException] = [[], []]

    def run(n: int, store: BlobStore) -> None:
        start.wait()
        try:
            for _ in range(3):  # again and again: the no-op path races the first writes
                results[n] = store.put_many(batches[n])
        except BaseException as exc:
            results[n] = exc

    threads = [threading.Thread(target=run, args=(n, s)) for n, s in enumerate((first, second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n, batch in enumerate(batches):
        assert results[n] == [blob_key(d) for d in batch]
        assert [first.get(k) for k in results[n]] == batch  # type: ignore[union-attr]
    assert _temporaries(first.root) == []
    expected = {blob_key(d) for batch in batches for d in batch}
    assert {p.name for p in _files(first.root)} == expected


class _FsyncedDirs:
    """The directories fsynced by ``put_many`` (its small-batch path)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.dirs: list[Path] = []
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            path = Path(os.readlink(f"/proc/self/fd/{fd}"))
            if not path.name.startswith(".tmp-"):
                self.dirs.append(path)
            real_fsync(fd)

        monkeypatch.setattr(blobs_module.os, "fsync", fsync)


def test_cached_directories_are_not_created_or_synced_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlobStore(tmp_path / "blobs")
    first = b"first blob " * 100
    key = store.put(first)
    calls = _FsyncedDirs(monkeypatch)
    made: list[str] = []
    real_mkdir = os.mkdir
    monkeypatch.setattr(
        blobs_module.os, "mkdir", lambda p, *a: (made.append(os.fspath(p)), real_mkdir(p, *a))
    )
    # Content whose key shares the first one's leaf directory.
    twin = next(
        c for c in (b"twin %d " % i * 100 for i in range(1_000_000)) if blob_key(c)[0:4] == key[0:4]
    )
    store.put_many([twin])
    assert made == []
    assert calls.dirs == [store.path_for(key).parent]  # the leaf for the rename, nothing else


def test_a_directory_another_writer_created_is_synced_before_returning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlobStore(tmp_path / "blobs")
    store.put(b"makes the root " * 100)
    data = b"needs a new leaf " * 100
    leaf = store.path_for(blob_key(data)).parent
    # Another writer of this store has just created the leaf and not yet synced its parent.
    leaf.mkdir(parents=True)
    store._fresh[os.fspath(leaf)] = 1
    calls = _FsyncedDirs(monkeypatch)
    store.put_many([data])
    assert leaf.parent in calls.dirs  # the new leaf's entry made durable by this writer too
    assert leaf in calls.dirs
    # Afterwards it is known durable: the next blob there syncs only the leaf.
    calls.dirs.clear()
    twin = next(
        c
        for c in (b"twin %d " % i * 100 for i in range(1_000_000))
        if blob_key(c)[0:4] == blob_key(data)[0:4]
    )
    store.put_many([twin])
    assert calls.dirs == [leaf]


def test_a_directory_removed_behind_the_cache_is_created_again(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs", workers=2)
    items = _mixed(20)
    store.put_many(items)
    for path in sorted(store.root.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    store.root.rmdir()
    keys = store.put_many(items)
    assert [store.get(k) for k in keys] == items
