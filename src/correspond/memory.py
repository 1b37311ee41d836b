"""glibc heap settings for long-running processes (``correspond worker`` and ``serve``).

glibc gives each thread that allocates its own heap arena (up to 8 per core), and freed
blocks stay in the arena that held them. A worker's thread pools (the loop's default pool,
the new-mail pool, SQLite's connections on them) each touch the heap, so the blocks freed after
the first passes' fetches and batches stayed spread over many arenas: ~130 KB per live account
of C heap outside Python's allocator at 1,000 accounts (bench/README.md, idle_accounts.py).
Fewer arenas let later allocations reuse those blocks. Nothing here matters for correctness:
on another libc, or where the call fails, the process runs as before.

glibc also raises its mmap threshold (up to 32 MiB) each time a large mmapped block is freed,
so after the first passes' big fetch and parse buffers, blocks of that size come from the heap
and leave holes in it when freed. :func:`fix_malloc_thresholds` pins the mmap threshold (and the
trim threshold) so large buffers keep their own mappings and go back to the system when freed;
:func:`trim_heap` (``malloc_trim(0)``) hands back the free pages inside the heap, which the
worker calls once a minute: after the first passes that was 6 MB at 200 accounts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

__all__ = [
    "MAX_ARENAS_LIMIT",
    "MMAP_THRESHOLD",
    "TRIM_THRESHOLD",
    "fix_malloc_thresholds",
    "limit_malloc_arenas",
    "trim_heap",
    "tune_heap",
]

_LOG = logging.getLogger(__name__)

_M_ARENA_MAX = -8  # glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 * 1024
"""Blocks this large or larger get a mapping of their own (glibc's default starts at 128 KiB and
grows with the blocks freed, up to 32 MiB); pinned, it stays."""
TRIM_THRESHOLD = 1024 * 1024
"""Free memory at the top of the heap beyond this goes back to the system at once."""
MAX_ARENAS_LIMIT = 64
"""The largest arena count accepted (glibc's own default is 8 per core)."""


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(libc, "mallopt"):
        return None  # not glibc
    return libc


def limit_malloc_arenas(arenas: int) -> bool:
    """Cap glibc's malloc arenas at ``arenas`` (``M_ARENA_MAX``); 0 leaves glibc's default.

    Call it before the process starts its threads: arenas made before stay. True when set.
    """
    if not 0 <= arenas <= MAX_ARENAS_LIMIT:
        raise ValueError(f"malloc arenas must be 0..{MAX_ARENAS_LIMIT}, not {arenas}")
    if arenas == 0:
        return False
    libc = _libc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(ctypes.c_int(_M_ARENA_MAX), ctypes.c_int(arenas)))
    if not ok:
        _LOG.info("mallopt(M_ARENA_MAX, %d) refused", arenas)
    return ok


def fix_malloc_thresholds(
    mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD
) -> bool:
    """Pin glibc's mmap and trim thresholds (which also stops glibc from raising them as big
    blocks are freed). True when both were set."""
    libc = _libc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(ctypes.c_int(_M_MMAP_THRESHOLD), ctypes.c_int(mmap_threshold)))
    ok = bool(libc.mallopt(ctypes.c_int(_M_TRIM_THRESHOLD), ctypes.c_int(trim_threshold))) and ok
    if not ok:
        _LOG.info("mallopt(M_MMAP_THRESHOLD/M_TRIM_THRESHOLD) refused")
    return ok


_TRIM: Callable[[int], int] | None = None


def trim_heap() -> bool:
    """Give the heap's free pages back to the system (glibc's ``malloc_trim(0)``, in every
    arena; well under a millisecond on a worker's heap). True when some memory was released."""
    global _TRIM
    if _TRIM is None:
        libc = _libc()
        trim = getattr(libc, "malloc_trim", None) if libc is not None else None
        if trim is None:
            return False
        _TRIM = trim
    return bool(_TRIM(0))


def tune_heap(arenas: int) -> None:
    """The heap settings of ``worker`` and ``serve`` (the ``malloc_arenas`` setting): at most
    ``arenas`` arenas and pinned thresholds; 0 leaves all of glibc's defaults. Call it before
    the process starts its threads."""
    if limit_malloc_arenas(arenas):
        fix_malloc_thresholds()
