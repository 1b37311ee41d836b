"""glibc heap settings for long-running processes (``correspond worker`` and ``serve``).

glibc gives each thread that allocates its own heap arena (up to 8 per core), and freed
blocks stay in the arena that held them. A worker's thread pools (the loop's default pool,
the new-mail pool, SQLite's connections on them) each touch the heap, so the blocks freed after
the first passes' fetches and batches stayed spread over many arenas: ~130 KB per live account
of C heap outside Python's allocator at 1,000 accounts (bench/README.md, idle_accounts.py).
Fewer arenas let later allocations reuse those blocks. Nothing here matters for correctness:
on another libc, or where the call fails, the process runs as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["MAX_ARENAS_LIMIT", "limit_malloc_arenas"]

_LOG = logging.getLogger(__name__)

_M_ARENA_MAX = -8  # glibc's malloc.h
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
