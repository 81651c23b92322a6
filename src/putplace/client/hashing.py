"""Streaming SHA-256 of files, with detection of files that change while being read.

Files are read in :data:`putplace.digest.CHUNK_SIZE` chunks into one reused buffer, so
memory does not grow with file size. A symlink's hash is that of its target path
(``os.fsencode(link_target)``), never of the file it points to. Small files may instead be
read whole with :func:`read_whole`, so that their bytes can be uploaded without a second
read.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import threading

from putplace.client.cancel import check
from putplace.client.scanner import FileEntry
from putplace.digest import CHUNK_SIZE


class FileChangedError(Exception):
    """The file's size or mtime changed since it was scanned: the hash would be wrong."""


def link_bytes(entry: FileEntry) -> bytes:
    """What a symlink's ``sha256`` and ``file_size`` describe: its target path's bytes."""
    assert entry.link_target is not None
    return os.fsencode(entry.link_target)


def hash_entry(entry: FileEntry, stop: threading.Event | None = None) -> str:
    """Hex SHA-256 of a file's bytes, or of a symlink's target path.

    Raises :class:`FileChangedError` when size or ``mtime_ns`` after reading differ from
    the scanned ``lstat``, ``OSError`` when the file cannot be read, and
    :class:`~putplace.client.cancel.Cancelled` once *stop* is set.
    """
    if entry.is_symlink:
        return hashlib.sha256(link_bytes(entry)).hexdigest()
    hasher = hashlib.sha256()
    buffer = bytearray(min(CHUNK_SIZE, entry.stat.st_size + 1))  # small file: small buffer
    view = memoryview(buffer)
    with open_scanned(entry) as handle:
        while count := handle.readinto(buffer):
            check(stop)
            hasher.update(view[:count])
        after = os.fstat(handle.fileno())
    if _changed(entry.stat, after):
        raise FileChangedError("changed while being read (size or mtime differ); not sent")
    return hasher.hexdigest()


def read_whole(entry: FileEntry) -> bytes:
    """The bytes of the regular file *entry* (meant for small files: all in memory; one
    read, so the caller checks for a stop before it, not this).

    Raises like :func:`hash_entry`: :class:`FileChangedError` when the file is not the
    size and mtime it was scanned with, ``OSError`` when it cannot be read.
    """
    size = entry.stat.st_size
    # One fstat, after the read, checks both that this is the scanned file and that it did
    # not change meanwhile: each system call also hands the GIL to another thread. Reading
    # first is safe: no symlink is followed, no FIFO blocks, and at most *size* bytes come.
    fd = open_nofollow(entry)
    try:
        data = os.read(fd, size) if size else b""
        while len(data) < size and (more := os.read(fd, size - len(data))):
            data += more
        after = os.fstat(fd)
    finally:
        os.close(fd)
    _check_same(entry, after)
    if len(data) != size or _changed(entry.stat, after):
        raise FileChangedError("changed while being read (size or mtime differ); not sent")
    return data


#: ``preadv2``'s flag to fail a read the page cache cannot answer at once (Linux only).
_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)


def in_page_cache(entry: FileEntry) -> bool | None:
    """Whether the first bytes of the regular file *entry* are in the page cache (a read
    would not wait for the disk); None where the OS cannot tell (no ``RWF_NOWAIT``, or a
    file system that refuses it). A file that cannot be opened counts as cached: reading
    it fails at once, where its error is reported."""
    if _NOWAIT is None:
        return None
    try:
        # Not open_nofollow, where every read of a file's content starts: this reads no
        # content (one byte at most, dropped), so it is not counted as a read.
        fd = os.open(entry.path, _READ_FLAGS)
    except OSError:
        return True
    try:
        os.preadv(fd, [bytearray(1)], 0, _NOWAIT)
    except BlockingIOError:
        return False
    except OSError:  # EOPNOTSUPP, EINVAL: this file system cannot say
        return None
    finally:
        os.close(fd)
    return True


def check_unchanged(entry: FileEntry) -> None:
    """Raise :class:`FileChangedError` unless *entry* is still the file it was scanned
    as, with the same size and mtime (after reading it some other way)."""
    now = os.lstat(entry.path)
    _check_same(entry, now)
    if _changed(entry.stat, now):
        raise FileChangedError("changed while being read (size or mtime differ); not sent")


def open_scanned(entry: FileEntry) -> io.FileIO:
    """Open the regular file *entry* for reading, unbuffered.

    Never follows a symlink and never blocks on a FIFO, so a path replaced since the scan
    cannot make the client read something else or hang: that raises
    :class:`FileChangedError`.
    """
    return open(open_descriptor(entry), "rb", buffering=0)


def open_descriptor(entry: FileEntry) -> int:
    """A descriptor of the regular file *entry*, opened as :func:`open_scanned` says."""
    fd = open_nofollow(entry)
    try:
        _check_same(entry, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return fd


#: Never through a symlink, never blocking (each where the OS has the flag).
_READ_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_BINARY", 0)
)


def open_nofollow(entry: FileEntry) -> int:
    """Every read of a file starts here: never through a symlink, never blocking."""
    try:
        return os.open(entry.path, _READ_FLAGS)
    except OSError as exc:
        if os.path.islink(entry.path):
            raise FileChangedError("replaced by a symlink since it was scanned") from exc
        raise


def _check_same(entry: FileEntry, now: os.stat_result) -> None:
    if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (
        entry.stat.st_dev,
        entry.stat.st_ino,
    ):
        raise FileChangedError("replaced by another file since it was scanned")


def _changed(before: os.stat_result, after: os.stat_result) -> bool:
    return (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns)
