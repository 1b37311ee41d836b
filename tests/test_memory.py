"""glibc arena cap for the long-running commands (correspond.memory)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from correspond.memory import MAX_ARENAS_LIMIT, limit_malloc_arenas, trim_heap


def test_out_of_range_arena_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="malloc arenas"):
        limit_malloc_arenas(-1)
    with pytest.raises(ValueError, match="malloc arenas"):
        limit_malloc_arenas(MAX_ARENAS_LIMIT + 1)


def test_zero_keeps_glibcs_default() -> None:
    assert limit_malloc_arenas(0) is False


_ARENAS_SCRIPT = """
import ctypes, sys, threading
from correspond.memory import limit_malloc_arenas
limit_malloc_arenas(int(sys.argv[1]))
def churn():
    blocks = [bytearray(2000) for _ in range(2000)]
    del blocks
threads = [threading.Thread(target=churn) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL("libc.so.6")
libc.fmemopen.restype = ctypes.c_void_p
libc.fmemopen.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
buf = ctypes.create_string_buffer(1 << 20)
f = libc.fmemopen(buf, len(buf), b"w")
libc.malloc_info(0, f)
libc.fclose(f)
print(buf.value.decode().count("<heap nr="))
"""


def _arenas_after_threads(cap: int) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _ARENAS_SCRIPT, str(cap)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(out.stdout.strip())


@pytest.mark.skipif(sys.platform != "linux", reason="glibc only")
def test_the_cap_holds_while_threads_allocate() -> None:
    """In a fresh process (arenas already made stay): threads that allocate get arenas of
    their own by default; with the cap at 1 they all share the main arena."""
    assert _arenas_after_threads(0) > 1
    assert _arenas_after_threads(1) == 1


_THRESHOLD_SCRIPT = """
import ctypes, re, sys
from correspond.memory import fix_malloc_thresholds
if sys.argv[1] == "pinned":
    assert fix_malloc_thresholds()
big = bytearray(8 * 1024 * 1024)  # mmapped either way: over glibc's starting 128 KiB
del big  # glibc's default now raises its mmap threshold to 8 MiB
block = bytearray(1024 * 1024)
libc = ctypes.CDLL("libc.so.6")
libc.fmemopen.restype = ctypes.c_void_p
libc.fmemopen.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
buf = ctypes.create_string_buffer(1 << 20)
f = libc.fmemopen(buf, len(buf), b"w")
libc.malloc_info(0, f)
libc.fclose(f)
mmapped = re.findall(r'<total type="mmap" count="(\\d+)" size="(\\d+)"/>', buf.value.decode())
print(int(mmapped[-1][1]) >= len(block))
"""


def _megabyte_block_is_mmapped(mode: str) -> bool:
    out = subprocess.run(
        [sys.executable, "-c", _THRESHOLD_SCRIPT, mode],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip() == "True"


@pytest.mark.skipif(sys.platform != "linux", reason="glibc only")
def test_pinned_thresholds_keep_large_buffers_out_of_the_heap() -> None:
    """glibc raises its mmap threshold to the size of each large block freed: after the first
    passes' big buffers, a 1 MiB block came from the heap (and left a hole there when freed).
    Pinned, it keeps a mapping of its own, which goes back to the system when freed."""
    assert not _megabyte_block_is_mmapped("default")
    assert _megabyte_block_is_mmapped("pinned")


@pytest.mark.skipif(sys.platform != "linux", reason="glibc only")
def test_trim_heap_runs() -> None:
    blocks = [bytearray(5000) for _ in range(5000)]
    del blocks[::2]
    assert trim_heap() in (True, False)
    del blocks
