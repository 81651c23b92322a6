"""Small file-system helpers the local store and its pack files share."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

#: Most buffers one ``writev`` takes (Linux's IOV_MAX).
IOV_MAX = 1024


def fsync_dir(path: Path) -> None:
    """Make the directory entries of *path* (files created or renamed into it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def writev_all(fd: int, chunks: Sequence[bytes | memoryview]) -> int:
    """Write every byte of *chunks* in order with ``writev`` (a list goes to the kernel
    without being joined first), resuming short writes; returns the bytes written."""
    views = [memoryview(c) for c in chunks if len(c)]
    first = 0
    written = 0
    while first < len(views):
        done = os.writev(fd, views[first : first + IOV_MAX])
        written += done
        while first < len(views) and done >= len(views[first]):  # drop what went
            done -= len(views[first])
            first += 1
        if done:  # keep the rest of a buffer the kernel took only part of
            views[first] = views[first][done:]
    return written
