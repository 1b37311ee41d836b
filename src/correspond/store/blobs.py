"""Content-addressed blob store for raw messages and attachment bodies.

A blob's key is the SHA-256 of its *uncompressed* bytes (hex, 64 characters); the file lives at
``<root>/<k[0:2]>/<k>``: one level of 256 fan-out directories, as git's object store. (Two levels,
65,536 leaves, made nearly every blob of a young store create a directory as well as a file:
inode creation is the main cost of a write here, so a backfill paid it twice; ext4's hashed
directories hold hundreds of thousands of entries without slowing down.) Blobs written under the
earlier two-level layout (``<root>/<k[0:2]>/<k[2:4]>/<k>``) are still found.
Names that come from mail (attachment file names, subjects) never reach the file system: the
only path component derived from input is the hex digest, and keys are validated before use.

Writes are atomic and durable: bytes go to a temporary file in the target directory, which is
fsynced and renamed over the final name (``os.replace`` is atomic on POSIX), then the directory is
fsynced so the rename survives a crash. Writing the same content twice is a no-op, so a sync
batch retried after a crash can store its blobs again safely. A writer killed between the two
steps leaves ``.tmp-*`` files behind (the mirror's kill test finds a few after four SIGKILLs);
:meth:`BlobStore.sweep_temporary` removes the stale ones. They stay beside their targets rather
than in one shared directory: renaming across directories measured twice as slow per blob.

Stored files start with a 4-byte header naming the encoding (``CBr1`` raw, ``CBs1`` zstd,
``CBz1`` zlib), so the format can change without a migration. zstd (the ``zstandard`` package)
is used when installed, zlib is the fallback. The default zstd level is 1, not 3: on the shared
mail corpus (510 messages, 27 MB) level 1 compresses at 1,130 MB/s against 705 MB/s for level 3 and
stores 30.3% of the input against 29.5% (2.7% more bytes on disk); on a backfill-like batch with
attachments 79.7% against 78.8%. (Level 3 had measured ~20x the speed of zlib level 6 at about its
ratio: 70 MB of mail in 0.1 s against 2.3 s.) Incompressible content (already-compressed
attachments) is stored raw; it is not worth detecting beforehand: zstd passes random bytes at ~10
GB/s, and a compressed-prefix test misjudged zip files whose first 64 KB do not compress but whose
whole does (by 25%).

:meth:`BlobStore.put_many` makes durability cost proportional to the batch. A large batch
(backfill: hundreds of blobs) is made durable with two ``syncfs(2)`` calls instead of two fsyncs
per blob (fsync measured at ~6 ms each here: it dominated backfill time). But ``syncfs`` flushes
the *whole* file system, other processes' dirty pages included: under a background writer it
pushed live new-mail latency p99 from ~530 to 650-790 ms. A small batch (live sync: a message or
a few) therefore fsyncs just its own files and directories.

Per blob, the cost is dominated by creating inodes (the temporary file, and in a young store its
fan-out directories: 0.25-0.8 ms of system time each on the ext4 here, against ~3 us for a
``stat``), then compression and hashing. So ``put_many`` keeps the fan-out directories it has
seen in a set (no ``mkdir`` or ``stat`` for them again), creates temporary files with a plain
``os.open(O_EXCL)`` under a cheap unique name and ``os.writev``, reuses one zstd compressor per
thread, and spreads hashing and the per-blob work (``mkdir``, compress, write, fsync) over
``workers`` threads: the caller plus ``workers - 1`` pool threads (hashlib, zstandard and the
system calls release the GIL), largest blobs first. Measured with ``bench/blob_bench.py`` (8
batches of 200 mail-like messages, 275 MB, medians of interleaved runs on this 2-core machine):
one worker 1.1-1.4x the speed of the old code, two (the default) 1.9-2.1x (2.4x on tmpfs, where
inodes are cheap), three no faster than two.

A directory is only taken as durable once its parent has been synced: until then, another
writer of this store that finds it already there syncs the parent as well, so no caller returns
before the entry of a directory its blob needs is on disk.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import itertools
import os
import random
import re
import stat
import threading
import time
import zlib
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from correspond.errors import NotFound, StoreError

if TYPE_CHECKING:
    from correspond.settings import Settings

__all__ = [
    "DEFAULT_WORKERS",
    "GC_PREFIX",
    "RESERVE_SECONDS",
    "STALE_TEMP_SECONDS",
    "SYNCFS_MIN_FILES",
    "BlobEntry",
    "BlobStore",
    "blob_key",
]

_RAW = b"CBr1"
_ZLIB = b"CBz1"
_ZSTD = b"CBs1"

_zstd: Any
try:  # optional accelerator; zlib (stdlib) otherwise
    import zstandard as _zstd
except ImportError:  # pragma: no cover - depends on the installation
    _zstd = None
_DECOMPRESS_ERRORS: tuple[type[Exception], ...] = (zlib.error,) + (
    (_zstd.ZstdError,) if _zstd is not None else ()
)


def _libc_syncfs() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    return fn


_SYNCFS = _libc_syncfs()
_KEY_RE = re.compile(r"[0-9a-f]{64}")
_FANOUT_RE = re.compile(r"[0-9a-f]{2}")
# Below this size compression saves little and costs a zlib header; store as is.
_MIN_COMPRESS = 512
_TEMP_PREFIX = ".tmp-"
# Temporary files are private, as mkstemp made them (stored mail is nobody else's business).
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
_TEMP_MODE = 0o600
# Directories too: owner-only whatever the umask (mkdir applies the umask, which only removes).
_DIR_MODE = 0o700
_temp_serial = itertools.count()
#: From this many new files up, :meth:`BlobStore.put_many` syncs the file system twice instead of
#: fsyncing each file and directory: per-file fsync costs ~6 ms a file, so it wins for a live
#: batch of a few messages (and flushes nobody else's data), syncfs wins for a backfill batch.
SYNCFS_MIN_FILES = 64
#: A temporary file older than this is left over from a killed writer (no write takes this long;
#: younger ones may belong to another process writing right now).
STALE_TEMP_SECONDS = 3600.0
#: A blob this writer found already stored (shared content: another message, another account)
#: is reserved for this long by setting its mtime that far into the future: the garbage
#: collector (:meth:`BlobStore.delete_unreferenced`) keeps a blob touched after it started,
#: so content a writer is about to reference is never deleted between the writer's check and
#: its commit. No batch takes this long from its blobs to its commit.
RESERVE_SECONDS = 600.0
#: Prefix of a blob being deleted: renamed aside first, so a writer looking for the blob
#: writes it again instead of relying on it; a crash leaves it for ``correspond doctor``.
GC_PREFIX = ".gc-"
#: Threads that hash, compress and write the blobs of one :meth:`BlobStore.put_many` call, the
#: calling thread included.
DEFAULT_WORKERS = 2
# Hash a batch in parallel only from this many bytes up (a thread hand-off costs ~0.1 ms).
_PARALLEL_HASH_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class BlobEntry:
    """A file found in the blob directories: a blob (``kind`` "blob", ``key`` its key), a
    temporary file of a write ("temp") or a blob set aside for deletion ("gc", ``key`` the
    blob's)."""

    kind: str
    path: str
    key: str | None
    size: int
    mtime: float
    mode: int


def _entries(directory: str | Path) -> list[os.DirEntry[str]]:
    try:
        return list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _subdirs(directory: str | Path) -> list[str]:
    """The two-hex-digit fan-out directories directly in ``directory``."""
    return [
        e.path
        for e in _entries(directory)
        if len(e.name) == 2 and _FANOUT_RE.fullmatch(e.name) and e.is_dir(follow_symlinks=False)
    ]


def _reserve(path: str, until: float) -> bool:
    """Whether the blob file ``path`` exists; if so, mark it in use (mtime ``until``)."""
    try:
        os.utime(path, (until, until), follow_symlinks=False)
    except FileNotFoundError:
        return False
    except OSError:
        return os.path.isfile(path)  # read-only store, someone else's file: just look
    return True


def _make_private(path: str, mode: int) -> int:
    """chmod ``path`` to ``mode`` when group or others have access and it is ours: 1 if done."""
    try:
        st = os.stat(path, follow_symlinks=False)
        if st.st_mode & 0o077 == 0 or st.st_uid != os.getuid():
            return 0
        os.chmod(path, mode, follow_symlinks=False)
    except (NotImplementedError, OSError):
        return 0
    return 1


def blob_key(data: bytes) -> str:
    """The content address of ``data``: lower-case hex SHA-256."""
    return hashlib.sha256(data).hexdigest()


def _write_all(fd: int, header: bytes, body: bytes) -> None:
    """Write ``header`` then ``body`` to ``fd``, however short the writes come back."""
    done = os.writev(fd, (header, body))
    if done < len(header):
        _write_rest(fd, memoryview(header)[done:])
        done = len(header)
    _write_rest(fd, memoryview(body)[done - len(header) :])


def _write_rest(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


class BlobStore:
    """Blobs under one root directory (``settings.blob_dir``).

    Safe to share between threads (and processes: every write is atomic and content-addressed).
    """

    def __init__(
        self, root: Path, *, compression_level: int = 1, workers: int = DEFAULT_WORKERS
    ) -> None:
        self.root = Path(root)
        self.compression_level = compression_level
        self.workers = max(1, workers)
        self._root = os.fspath(self.root)
        self._lock = threading.Lock()
        # Directories (the root and fan-out ones) known to exist with their entry durable.
        self._dirs: set[str] = set()
        # Directories created by a writer of this store whose parent may not be synced yet:
        # how many writers are creating or syncing each (see _make_dir).
        self._fresh: dict[str, int] = {}
        self._local = threading.local()  # a zstd compressor per thread: they are not thread-safe
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> BlobStore:
        return cls(settings.blob_dir)

    def path_for(self, key: str) -> Path:
        """The file of ``key``; raises ValueError for anything but a 64-digit hex digest."""
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            raise ValueError(f"not a blob key: {key!r}")
        return self.root / key[0:2] / key

    def _found(self, key: str) -> Path:
        """The file holding ``key``: its own, or where the two-level layout put it."""
        path = self.path_for(key)
        if not path.is_file():
            legacy = self.root / key[0:2] / key[2:4] / key
            if legacy.is_file():
                return legacy
        return path

    def exists(self, key: str) -> bool:
        return self._found(key).is_file()

    def _file(self, key: str) -> str:
        """The file of a key this module computed (no validation: see :meth:`path_for`)."""
        return f"{self._root}/{key[0:2]}/{key}"

    def _compressor(self) -> Any:
        local = self._local
        level = self.compression_level
        if getattr(local, "level", None) != level:
            local.zstd = _zstd.ZstdCompressor(level=level)
            local.level = level
        return local.zstd

    def _encode(self, data: bytes, compress: bool) -> tuple[bytes, bytes]:
        """The header and body to store for ``data``."""
        if not compress or len(data) < _MIN_COMPRESS:
            return _RAW, data
        if _zstd is not None:
            header, body = _ZSTD, self._compressor().compress(data)
        else:
            header, body = _ZLIB, zlib.compress(data, 6)
        # Incompressible content (already-compressed attachments) is kept raw.
        return (header, body) if len(body) < len(data) else (_RAW, data)

    def make_private(self) -> int:
        """Make the root and its fan-out directories owner-only (0700) where an older version
        or a copy left them open to others; returns how many changed. Blob files are created
        0600 (``correspond doctor`` reports any that are not)."""
        changed = 0
        for directory in [
            self._root,
            *(d for top in _subdirs(self.root) for d in (top, *_subdirs(top))),
        ]:
            changed += _make_private(directory, _DIR_MODE)
        return changed

    def sweep_temporary(self, older_than: float = STALE_TEMP_SECONDS) -> int:
        """Delete temporary files older than ``older_than`` seconds, left by a writer killed
        between writing and renaming; returns how many went. Never touches a stored blob.

        A walk of the fan-out directories (and the leaves of the two-level layout): run it at
        start-up or from maintenance, in a thread, not on the sync path.
        """
        cutoff = time.time() - older_than
        removed = 0
        for top in _subdirs(self.root):
            for leaf in [top, *_subdirs(top)]:
                for entry in _entries(leaf):
                    if not entry.name.startswith(_TEMP_PREFIX):
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        if entry.stat(follow_symlinks=False).st_mtime <= cutoff:
                            os.unlink(entry.path)
                            removed += 1
        return removed

    # --- directories ----------------------------------------------------------------------

    def _make_dir(self, path: str) -> bool:
        """Create directory ``path`` unless it exists. True when its entry in the parent may not
        be durable yet, so the caller must sync the parent: it created the directory, or another
        writer of this store did and has not synced it yet (both then sync; one is enough)."""
        with self._lock:
            self._fresh[path] = self._fresh.get(path, 0) + 1
        try:
            os.mkdir(path, _DIR_MODE)
        except FileExistsError:
            with self._lock:
                if self._fresh.get(path, 0) > 1:
                    return True  # someone else's: wait for nobody, sync the parent too
                # There before this writer (from an earlier run, or synced since): durable.
                self._fresh.pop(path, None)
                self._dirs.add(path)
            return False
        except FileNotFoundError:
            if path != self._root:
                raise
            # The store's root, in a directory that does not exist yet.
            os.makedirs(os.path.dirname(path) or ".", mode=_DIR_MODE, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, _DIR_MODE)
        # Left counted on failure (the caller raises): later writers then sync the parent.
        return True

    def _prepare_dirs(self, key: str) -> tuple[str, tuple[str, ...]]:
        """Make sure the directory of ``key`` exists. Returns it and the directories (root,
        fan-out) whose parent must be synced for the entry to survive a crash."""
        leaf = f"{self._root}/{key[0:2]}"
        if leaf in self._dirs:
            return leaf, ()
        new = tuple(d for d in (self._root, leaf) if d not in self._dirs and self._make_dir(d))
        return leaf, new

    def _forget_dirs(self, key: str) -> None:
        """Drop the directories of ``key`` from the cache (one was removed behind our back)."""
        with self._lock:
            self._dirs.difference_update((self._root, f"{self._root}/{key[0:2]}"))

    def _settle_dirs(self, dirs: set[str]) -> None:
        """``dirs`` and their entries are durable now: no writer needs to sync their parents."""
        with self._lock:
            for directory in dirs:
                self._fresh.pop(directory, None)
            self._dirs.update(dirs)

    # --- writing --------------------------------------------------------------------------

    def _write_temp(self, leaf: str, header: bytes, body: bytes, *, fsync: bool) -> str:
        """A new temporary file in ``leaf`` holding ``header + body`` (fsynced if asked)."""
        for _ in range(100):
            name = (
                f"{leaf}/{_TEMP_PREFIX}{os.getpid()}-{threading.get_ident():x}-"
                f"{next(_temp_serial)}-{random.getrandbits(24):06x}"
            )
            try:
                fd = os.open(name, _TEMP_FLAGS, _TEMP_MODE)
                break
            except FileExistsError:  # a leftover of a killed writer that had our pid
                continue
        else:  # pragma: no cover - a hundred clashes in a row
            raise FileExistsError(f"no free temporary name in {leaf}")
        try:
            try:
                _write_all(fd, header, body)
                if fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            # Never leave a half-written temp file behind, whatever interrupted us.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
            raise
        return name

    def _store_temp(
        self, key: str, data: bytes, *, compress: bool, fsync: bool
    ) -> tuple[str, str, tuple[str, ...]]:
        """Write ``data`` to a temporary file beside its final name: (temporary file, final
        file, directories whose parents need syncing)."""
        header, body = self._encode(data, compress)
        new: tuple[str, ...] = ()
        for attempt in range(2):
            try:
                leaf, created = self._prepare_dirs(key)
                new += created
                return self._write_temp(leaf, header, body, fsync=fsync), self._file(key), new
            except FileNotFoundError:
                if attempt:
                    raise
                # A cached directory was removed (by hand, or a test): create it again, once.
                self._forget_dirs(key)
        raise AssertionError("unreachable")  # pragma: no cover

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self.workers - 1, thread_name_prefix="blobstore"
                )
            return self._pool

    def _run(self, job: Callable[[int], None], n: int, workers: int) -> None:
        """``job(0) .. job(n - 1)`` on up to ``workers`` threads, this one included. Returns
        once every started job has ended; then raises the first failure, if any. After a
        failure no new job starts."""
        workers = min(workers, n)
        if workers <= 1:
            for i in range(n):
                job(i)
            return
        indexes = itertools.count()  # next() on it is atomic: each index is taken once
        failed: list[BaseException] = []

        def loop() -> None:
            while not failed:
                i = next(indexes)
                if i >= n:
                    return
                try:
                    job(i)
                except BaseException as exc:
                    failed.append(exc)
                    return

        pool = self._executor()
        helpers: list[Future[None]] = [pool.submit(loop) for _ in range(workers - 1)]
        try:
            loop()
        finally:
            # A helper the pool has not started (busy with another call) is not waited for.
            wait_futures([f for f in helpers if not f.cancel()])
        if failed:
            raise failed[0]

    def put(self, data: bytes, *, compress: bool = True) -> str:
        """Store ``data`` durably and return its key; storing existing content again does
        nothing."""
        return self.put_many([data], compress=compress)[0]

    def put_many(
        self,
        items: Sequence[bytes],
        *,
        compress: bool = True,
        syncfs_min_files: int = SYNCFS_MIN_FILES,
    ) -> list[str]:
        """Store several blobs durably (same guarantees as :meth:`put`); returns their keys, in
        order.

        Every blob is on disk, renamed into place, when this returns, so the caller may commit
        rows that reference them. With at least ``syncfs_min_files`` new files (and
        ``syncfs(2)`` available), all temporary files are written, the file system is synced
        once, they are renamed into place, and it is synced again so the renames are durable.
        Fewer files are each fsynced, renamed, and their directories fsynced: that touches only
        this batch's data, not every dirty page on the file system.
        """
        n = len(items)
        keys: list[str] = [""] * n
        present = [False] * n

        reserve = time.time() + RESERVE_SECONDS

        def hash_one(i: int) -> None:
            keys[i] = key = hashlib.sha256(items[i]).hexdigest()
            present[i] = _reserve(self._file(key), reserve)

        big = sum(len(d) for d in items) >= _PARALLEL_HASH_BYTES
        self._run(hash_one, n, self.workers if big else 1)
        todo: list[int] = []
        planned: set[str] = set()
        for i, key in enumerate(keys):
            if present[i] or key in planned:
                continue
            planned.add(key)
            todo.append(i)
        if not todo:
            return keys

        # Largest first, so that no thread is left with a big attachment while the others idle.
        todo.sort(key=lambda i: len(items[i]), reverse=True)
        use_syncfs = _SYNCFS is not None and len(todo) >= syncfs_min_files
        written: list[tuple[str, str, tuple[str, ...]] | None] = [None] * len(todo)

        def write_one(j: int) -> None:
            i = todo[j]
            written[j] = self._store_temp(
                keys[i], items[i], compress=compress, fsync=not use_syncfs
            )

        renamed = 0
        try:
            self._run(write_one, len(todo), self.workers)
            done = [w for w in written if w is not None]
            if use_syncfs:
                self._sync_all()
            for tmp, path, _new in done:
                os.replace(tmp, path)
                renamed += 1
            new_dirs = {d for _tmp, _path, new in done for d in new}
            if use_syncfs:
                self._sync_all()
            else:
                # The directory of each file, and the parent of each directory created.
                dirs = {os.path.dirname(path) for _tmp, path, _new in done}
                dirs.update(os.path.dirname(d) or "." for d in new_dirs)
                for directory in sorted(dirs, key=lambda d: d.count("/"), reverse=True):
                    self._fsync_dir(directory)
        except BaseException as exc:
            for entry in [w for w in written if w is not None][renamed:]:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry[0])
            if isinstance(exc, OSError):
                raise StoreError(f"could not write blobs: {exc}") from exc
            raise
        self._settle_dirs(new_dirs)
        return keys

    def _sync_all(self) -> None:
        if _SYNCFS is None:
            return
        fd = os.open(self.root, os.O_RDONLY)
        try:
            if _SYNCFS(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
        finally:
            os.close(fd)

    def get(self, key: str) -> bytes:
        """The bytes stored under ``key``; NotFound if absent, StoreError if damaged."""
        path = self._found(key)
        try:
            payload = path.read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"blob {key} does not exist") from exc
        except OSError as exc:
            raise StoreError(f"could not read blob {key}: {exc}") from exc
        header, body = payload[:4], payload[4:]
        try:
            if header == _RAW:
                data = body
            elif header == _ZLIB:
                data = zlib.decompress(body)
            elif header == _ZSTD:
                if _zstd is None:
                    raise StoreError(f"blob {key} is zstd-compressed; install zstandard")
                data = _zstd.ZstdDecompressor().decompress(body)
            else:
                raise StoreError(f"blob {key} has an unknown header {header!r}")
        except _DECOMPRESS_ERRORS as exc:
            raise StoreError(f"blob {key} is damaged: {exc}") from exc
        # Content addressing lets us detect silent corruption for free.
        if blob_key(data) != key:
            raise StoreError(f"blob {key} is damaged: content does not match its key")
        return data

    def walk(self) -> Iterator[BlobEntry]:
        """Every file under the root: blobs, temporary files and set-aside ``.gc-`` files (of
        both layouts). Anything else (a stray file, a symlink) is not reported."""
        for top in _subdirs(self.root):
            for leaf in [top, *_subdirs(top)]:
                for entry in _entries(leaf):
                    name = entry.name
                    if _KEY_RE.fullmatch(name):
                        kind, key = "blob", name
                    elif name.startswith(_TEMP_PREFIX):
                        kind, key = "temp", None
                    elif name.startswith(GC_PREFIX) and _KEY_RE.fullmatch(name[4:68]):
                        kind, key = "gc", name[4:68]
                    else:
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if not stat.S_ISREG(st.st_mode):
                        continue
                    yield BlobEntry(kind, entry.path, key, st.st_size, st.st_mtime, st.st_mode)

    def delete_unreferenced(
        self,
        keys: Collection[str],
        still_referenced: Callable[[set[str]], set[str]],
        *,
        touched_after: float,
    ) -> tuple[int, int]:
        """Delete the blobs of ``keys`` (found unreferenced by the caller); returns how many
        files went and their bytes on disk.

        Safe against writers running meanwhile: each blob is first renamed aside (a writer
        that looks for it from then on writes it again), then kept (renamed back) when its
        mtime is after ``touched_after`` (a writer found it there and reserved it, see
        :data:`RESERVE_SECONDS`) or when ``still_referenced`` (asked once, after the renames)
        says a row now points at it. A crash in between leaves ``.gc-`` files, which
        ``correspond doctor`` restores or deletes by the same rule.
        """
        aside: dict[str, tuple[str, str, int]] = {}
        for key in keys:
            path = os.fspath(self._found(key))
            held = f"{os.path.dirname(path)}/{GC_PREFIX}{key}-{os.getpid()}"
            try:
                os.rename(path, held)
                st = os.stat(held)
            except FileNotFoundError:
                continue
            if st.st_mtime > touched_after:
                self._put_back(held, path)
                continue
            aside[key] = (held, path, st.st_size)
        if not aside:
            return 0, 0
        keep = still_referenced(set(aside))
        removed = freed = 0
        for key, (held, path, size) in aside.items():
            if key in keep:
                self._put_back(held, path)
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(held)
                removed += 1
                freed += size
        return removed, freed

    @staticmethod
    def _put_back(held: str, path: str) -> None:
        """Rename a set-aside blob back (over a copy a writer stored meanwhile: same bytes)."""
        try:
            os.replace(held, path)
        except OSError as exc:
            raise StoreError(f"could not restore blob {os.path.basename(path)}: {exc}") from exc

    def restore_or_drop(self, entry: BlobEntry, referenced: bool) -> bool:
        """A ``.gc-`` file left by a crash: back into place when ``referenced`` (or when a
        writer stored the blob again meanwhile, it is simply dropped); else deleted. True
        when it was deleted."""
        if entry.key is None:
            return False
        path = os.path.join(os.path.dirname(entry.path), entry.key)
        if referenced and not os.path.exists(path):
            self._put_back(entry.path, path)
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
        return True

    def delete(self, key: str) -> bool:
        """Remove a blob; False if it was not there. Callers make sure nothing references it."""
        try:
            self._found(key).unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StoreError(f"could not delete blob {key}: {exc}") from exc
        return True

    @staticmethod
    def _fsync_dir(directory: str | Path) -> None:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
