"""glibc arena cap for the long-running commands (correspond.memory)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from correspond.memory import MAX_ARENAS_LIMIT, limit_malloc_arenas


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
