"""glibc's allocator kept to one arena in ``ppclient``.

glibc gives each new thread an arena of its own (up to eight per core), so that threads
need not wait for each other's allocations. CPython allocates almost only while holding
the GIL, so the client's threads seldom contend; what the arenas do instead is spread
the heap: each grows to its own peak, and memory freed in one is not reused by threads
of another. Every page of that growth is a page fault, and on some virtual machines a
fault costs 40-55 us when the page's memory was handed back to the host (the README's
benchmark section: the thirty-second session). In a first ingest of 100,000
small files, with the walking, hashing, registering and uploading threads each reading
and freeing file contents, the client touched 56,000-64,000 fresh pages with glibc's
arenas and 46,000-55,000 with one, at the same CPU (7 alternated pairs).

The server keeps glibc's arenas: with two per process it touched 7,000 fewer pages but
used 0.17 CPU-s more (4.98 against 4.81 at the mean, 7 pairs; its SQLite threads
allocate without the GIL, and the event loop's thread then waits for them), which the
faults saved pay back only where each costs over 24 us.
"""

from __future__ import annotations

import ctypes
import os

#: glibc's ``mallopt`` parameter for the most arenas (``M_ARENA_MAX``, malloc.h).
M_ARENA_MAX = -8
#: The environment variable through which a user sets it instead (glibc reads it at start).
ARENA_ENV = "MALLOC_ARENA_MAX"


def one_arena() -> None:
    """Keep this process's later allocations to glibc's main arena, unless the user set
    :data:`ARENA_ENV`; call before starting threads. Nothing elsewhere (musl, macOS and
    Windows have no arenas to spread)."""
    if ARENA_ENV in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, TypeError):  # no C library to load, or no mallopt
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mallopt(M_ARENA_MAX, 1)
