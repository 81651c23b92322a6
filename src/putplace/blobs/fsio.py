"""Small file-system helpers the local store and its pack files share."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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


def _libc(name: str, *argtypes: type[ctypes._SimpleCData[Any]]) -> Callable[..., int] | None:
    """A Linux system call wrapper from the C library, or None where there is none."""
    try:
        function = getattr(ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True), name)
    except (OSError, AttributeError):  # not Linux
        return None
    function.argtypes = list(argtypes)
    typed: Callable[..., int] = function
    return typed


#: ``sync_file_range(2)``: start writeback of a range of a file without waiting.
_SYNC_FILE_RANGE = _libc(
    "sync_file_range", ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint
)
_SYNC_FILE_RANGE_WRITE = 2
#: With fsync on, writeback is started after each this many bytes of one blob.
WRITEBACK_STEP = 8 * 1024 * 1024


def start_writeback(fd: int, offset: int, length: int) -> None:
    """A hint only: durability still comes from fsync at commit, so failure is harmless."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)
