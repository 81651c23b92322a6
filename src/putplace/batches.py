"""How many bytes of an incoming content are gathered before each step (hash, write).

Small batches keep memory low; large ones cut the hand-overs between the event loop and
the threads that hash and write, which decided the speed of large uploads. Large batches
go only to large contents, and only within a budget per process.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from putplace.digest import CHUNK_SIZE

#: Batch of a large content's bytes received before it is hashed and written (while the
#: next is received). A 2 GiB PUT /blobs on the development machine, alternated: 1 MiB
#: batches 239-250 MiB/s, 4 MiB 314-326, 8 MiB 356-405, 16 MiB 408-443; the event loop's
#: CPU 2.9 -> 1.5 s (fewer hand-overs to the hashing and writing threads).
LARGE_BATCH: Final = 16 * CHUNK_SIZE
#: Contents at least this large get large batches.
LARGE_CONTENT: Final = 64 * CHUNK_SIZE
#: Bytes a process may hold in large batches at once (two per upload: the one received
#: and the one being written). Uploads beyond it use CHUNK_SIZE batches, so memory does
#: not grow with the number of large uploads at once.
LARGE_BATCH_BUDGET: Final = 4 * LARGE_BATCH


class BatchBudget:
    """Large batches handed out within a byte budget (any thread)."""

    def __init__(self, budget: int) -> None:
        self._left = budget
        self._lock = threading.Lock()

    @contextmanager
    def batch_for(self, expected_size: int | None, small: int = CHUNK_SIZE) -> Iterator[int]:
        """The batch size for a content of *expected_size* bytes (None: unknown), held
        until the block ends; *small* when it gets no large one."""
        held = 0
        if expected_size is not None and expected_size >= LARGE_CONTENT:
            with self._lock:
                if self._left >= 2 * LARGE_BATCH:
                    self._left -= 2 * LARGE_BATCH
                    held = 2 * LARGE_BATCH
        try:
            yield LARGE_BATCH if held else small
        finally:
            if held:
                with self._lock:
                    self._left += held


LARGE_BATCHES = BatchBudget(LARGE_BATCH_BUDGET)
