"""Writing a restored tree without ever writing outside it.

Everything is done relative to directory descriptors, one path component at a time:
each directory on the way to a file is created if missing and then opened with
``O_NOFOLLOW | O_DIRECTORY``, so a symlink already in the tree (``etc -> /etc``, restored
a moment ago or planted beforehand) is refused instead of followed. Files are written to
a temporary name in their final directory, opened ``O_EXCL | O_NOFOLLOW``, and renamed
over the final name once complete; ``rename`` replaces a name and never writes through
it, so an existing symlink or hard link at that name cannot redirect the write either.

The temporary name is derived from the final name, so an interrupted run's partial file
is found again by the next run (and resumed, see :mod:`putplace.client.restore`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress

from putplace.client.cancel import check
from putplace.digest import CHUNK_SIZE

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | _CLOEXEC
_READ_FLAGS = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | _CLOEXEC
TEMP_PREFIX = ".pprestore-"
TEMP_SUFFIX = ".part"
PRIVILEGED_BITS = stat.S_ISUID | stat.S_ISGID


class UnsafeError(Exception):
    """Writing here would mean going through a symlink or a non-directory (the message
    quotes the path as it is: escape it before printing)."""


def temp_name(name: str) -> str:
    """The temporary name a file is written under before it is renamed to *name*."""
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:24]
    return f"{TEMP_PREFIX}{digest}{TEMP_SUFFIX}"


def restored_mode(mode: int, *, privileged: bool) -> int:
    """Permission bits to give a restored file: setuid and setgid only when running as
    root (anyone else would be making a set-id program of their own that nobody asked
    for); the sticky bit is harmless and kept."""
    bits = stat.S_IMODE(mode)
    return bits if privileged else bits & ~PRIVILEGED_BITS


class Destination:
    """The restore directory, held open; safe to use from several threads."""

    def __init__(self, root: str) -> None:
        os.makedirs(root, exist_ok=True)  # the user's own path: followed as given
        self.root = root
        self.fd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Destination:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def parent(self, parts: Sequence[str]) -> Iterator[int]:
        """A descriptor of the directory that holds ``parts[-1]``, creating missing
        directories; raises :class:`UnsafeError` rather than follow a symlink."""
        opened: list[int] = []
        fd = self.fd
        try:
            for index, name in enumerate(parts[:-1]):
                with suppress(FileExistsError):
                    os.mkdir(name, 0o777, dir_fd=fd)  # the umask decides, as for mkdir(1)
                try:
                    fd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                        where = "/".join(parts[: index + 1])
                        raise UnsafeError(
                            f"{where} is a symlink or not a directory; not written through"
                        ) from None
                    raise
                opened.append(fd)
            yield fd
        finally:
            for descriptor in opened:
                os.close(descriptor)


def hash_fd(fd: int, stop: threading.Event | None = None) -> tuple[int, hashlib._Hash]:
    """Size and SHA-256 of what *fd* holds from its start (reads from offset 0)."""
    hasher = hashlib.sha256()
    size = 0
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, CHUNK_SIZE):
        check(stop)
        hasher.update(chunk)
        size += len(chunk)
    return size, hasher


def same_file(
    parent: int, name: str, size: int, sha256: str, stop: threading.Event | None = None
) -> bool:
    """True when *name* is a regular file of *size* bytes with this SHA-256."""
    try:
        if not _is_regular(parent, name, size):
            return False
        fd = os.open(name, _READ_FLAGS, dir_fd=parent)
    except OSError:
        return False  # missing, unreadable, or replaced meanwhile: restore it again
    try:
        found_size, hasher = hash_fd(fd, stop)
    except OSError:
        return False
    finally:
        os.close(fd)
    return found_size == size and hasher.hexdigest() == sha256


def _is_regular(parent: int, name: str, size: int) -> bool:
    found = os.stat(name, dir_fd=parent, follow_symlinks=False)
    return stat.S_ISREG(found.st_mode) and found.st_size == size


def open_temp(parent: int, name: str) -> tuple[int, bool]:
    """A descriptor of *name*'s temporary file, read-write, and whether it holds a
    partial file left by an earlier run. A leftover that is not a plain file of our own
    (a symlink, or a file with other hard links) is removed, never written into."""
    temp = temp_name(name)
    try:
        fd = os.open(temp, os.O_RDWR | _NOFOLLOW | _CLOEXEC, dir_fd=parent)
    except FileNotFoundError:
        pass
    except OSError:
        remove(parent, temp)
    else:
        found = os.fstat(fd)
        if stat.S_ISREG(found.st_mode) and found.st_nlink == 1:
            return fd, True
        os.close(fd)
        remove(parent, temp)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
    return os.open(temp, flags, 0o600, dir_fd=parent), False


def remove(parent: int, name: str) -> None:
    """Remove *name* if it is there."""
    with suppress(FileNotFoundError):
        os.unlink(name, dir_fd=parent)


def finish_file(
    fd: int, parent: int, name: str, mode: int, mtime: float, atime: float, privileged: bool
) -> None:
    """Give the complete temporary file *fd* its mode and times, make it durable, and
    rename it to *name*. The caller closes *fd*."""
    os.fchmod(fd, restored_mode(mode, privileged=privileged))
    os.utime(fd, ns=(_ns(atime), _ns(mtime)))
    os.fsync(fd)
    os.rename(temp_name(name), name, src_dir_fd=parent, dst_dir_fd=parent)


def place_symlink(parent: int, name: str, target: str, mtime: float, atime: float) -> bool:
    """Make *name* a symlink to *target*; False when it already was one."""
    try:
        if os.readlink(name, dir_fd=parent) == target:
            return False
    except OSError:
        pass
    temp = temp_name(name)
    remove(parent, temp)
    os.symlink(target, temp, dir_fd=parent)
    try:
        if os.utime in os.supports_follow_symlinks:
            os.utime(temp, ns=(_ns(atime), _ns(mtime)), dir_fd=parent, follow_symlinks=False)
        os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
    except BaseException:
        remove(parent, temp)
        raise
    return True


def set_times_and_mode(
    parent: int, name: str, mode: int, mtime: float, atime: float, privileged: bool
) -> None:
    """Bring an existing, matching file's mode and mtime to the record's (a re-run after
    someone touched them converges); leaves it alone when they already agree."""
    fd = os.open(name, _READ_FLAGS, dir_fd=parent)
    try:
        found = os.fstat(fd)
        wanted = restored_mode(mode, privileged=privileged)
        if stat.S_IMODE(found.st_mode) != wanted:
            os.fchmod(fd, wanted)
        if found.st_mtime_ns != _ns(mtime):
            os.utime(fd, ns=(_ns(atime), _ns(mtime)))
    finally:
        os.close(fd)


def _ns(seconds: float) -> int:
    return round(seconds * 1_000_000_000)
