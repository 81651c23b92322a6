"""Small file-system helpers the local store, its pack files and its upload staging share."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import mmap
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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


def make_dir(path: Path, *, durable: bool) -> None:
    """Create the directory *path* if it is missing; *durable*: its own entry too. The
    fsync of a file made in a new directory makes durable the file's entry in it, not
    the directory's entry in its parent, which POSIX leaves to a fsync of the parent."""
    try:
        path.mkdir()
    except FileExistsError:
        return
    if durable:
        fsync_dir(path.parent)


def pwritev_all(fd: int, chunks: Sequence[bytes | memoryview], offset: int) -> int:
    """Write every byte of *chunks* in order at *offset* with ``pwritev`` (a list goes to
    the kernel without being joined first), resuming short writes; returns the count."""
    views = [memoryview(c) for c in chunks if len(c)]
    first = 0
    written = 0
    while first < len(views):
        done = os.pwritev(fd, views[first : first + IOV_MAX], offset + written)
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


#: Direct I/O moves whole blocks at block-aligned offsets from block-aligned memory; a
#: page (4 KiB) is a multiple of every block size Linux file systems use.
DIRECT_ALIGN = 4096
#: Bytes gathered in the aligned buffer before one direct write: 1-8 MiB all wrote 2 GiB
#: at 1.7-2.1 GB/s on the development disk, so the smallest that does is used.
DIRECT_BUFFER = 2 * 1024 * 1024
#: With fsync on, after each this many bytes written direct, the file's ``fdatasync``
#: starts on a helper thread (one at a time per file), so the disk flushes its write
#: cache while the next bytes arrive, and the caller's ``fsync`` at the end waits only
#: for the rest. Direct writes land in the disk's cache: on the development machine each
#: 512 MiB request of a 2 GiB tus upload ended with a 0.65-0.77 s ``fsync`` (strace)
#: while nothing was sent. With flushes alongside, 4 rounds each, alternated: every
#: 32 MiB 319-333 MiB/s, 64 MiB 246-362, 128 MiB 257-374, none 229-288. Again with the
#: huge-page buffer (2 GiB ingests, alternated, medians): 128 MiB and none 270 and 269
#: against 329 (4 rounds); 16 MiB 332 against 325 (6 rounds, within the noise).
FLUSH_STEP = 32 * 1024 * 1024
_flushers: ThreadPoolExecutor | None = None
_flushers_lock = threading.Lock()


def _start_flush(fd: int) -> Future[None]:
    """``fdatasync(fd)`` on a helper thread: made on first use, so a process that forks
    its workers before any write gives each its own."""
    global _flushers
    with _flushers_lock:
        if _flushers is None:
            _flushers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pp-flush")
        return _flushers.submit(os.fdatasync, fd)


def _forget_flushers() -> None:
    """In a forked child the pool's threads do not exist: work given to it would never
    run, and a writer waiting for its flush would wait for ever."""
    global _flushers
    _flushers = None


os.register_at_fork(after_in_child=_forget_flushers)

#: A transparent huge page on x86-64 and on arm64 with 4 KiB pages.
HUGE_PAGE = 2 * 1024 * 1024


class DirectBuffer:
    """DIRECT_BUFFER bytes (:attr:`view`) of this process's own memory, on a 2 MiB
    boundary and asked to be huge pages.

    A direct write hands the disk the buffer's physical pages. From 4 KiB pages scattered
    in memory, a 2 GiB file went to the development machine's (virtual) disk at 225-422
    MiB/s in 2 MiB writes, depending on how scattered they were, and from one 2 MiB huge
    page at 438-474 (3 rounds each, alternated; each request also took 5-6 ms against
    6-9). Private memory, not ``mmap``'s default shared mapping: shared anonymous memory
    is shmem, which the kernel backs with huge pages only where ``shmem_enabled`` says
    so (``never`` here), and a buffer made before a fork would be written by parent and
    child alike. A huge page must start on a 2 MiB boundary: Linux 6.7 and later put a
    mapping of whole huge pages on one, older kernels (6.1, 5.15) need not, so a huge
    page more is mapped and the buffer starts at the boundary inside; the rest is never
    touched and takes no memory. Where no huge page is to be had (transparent huge pages
    off or compiled out), the advice changes nothing and the buffer works as before."""

    def __init__(self) -> None:
        private = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        self._map = mmap.mmap(-1, DIRECT_BUFFER + HUGE_PAGE, flags=private)
        advice = getattr(mmap, "MADV_HUGEPAGE", None)
        if advice is not None:
            with contextlib.suppress(OSError):  # EINVAL: a kernel without huge pages
                self._map.madvise(advice)
        # The ctypes object is gone once addressof returns: no export outlives it.
        start = -ctypes.addressof(ctypes.c_char.from_buffer(self._map)) % HUGE_PAGE
        self.view = memoryview(self._map)[start : start + DIRECT_BUFFER]

    def close(self) -> None:
        self.view.release()
        self._map.close()


#: Free buffers kept for the next writer (each DIRECT_BUFFER).
_SPARE_BUFFERS = 8
_spare: list[DirectBuffer] = []
_spare_lock = threading.Lock()


def _borrow_buffer() -> DirectBuffer:
    """A buffer for direct writes. Reused: memory touched for the first time costs page
    faults (for a huge page, the kernel may first gather a free 2 MiB block), which is
    what direct writes are here to avoid."""
    with _spare_lock:
        if _spare:
            return _spare.pop()
    return DirectBuffer()


def _return_buffer(buffer: DirectBuffer) -> None:
    with _spare_lock:
        if len(_spare) < _SPARE_BUFFERS:
            _spare.append(buffer)
            return
    buffer.close()


class FileAppender:
    """Writes batches of bytes one after another into a file from *offset* on.

    For a *durable* writer (one that fsyncs before anything counts as stored), whole
    4 KiB blocks are written with ``O_DIRECT`` from one reused page-aligned buffer:
    straight to the disk, not copied into the page cache first. Content made durable is
    not read again soon, so caching it buys nothing, while copying it there was half of
    the server's CPU in a 2 GiB upload (``perf``: ``copy_folio_from_iter_atomic``); on
    the development machine 2 GiB took 5.0 s of system time to write through the page
    cache and 0.1 s direct. The unaligned head and tail (less than a block each) go
    through the page cache, so the caller's ``fsync`` on *fd* still makes every byte
    durable. Direct writes may still sit in the disk's own cache, so every FLUSH_STEP
    bytes an ``fdatasync`` starts alongside (see there). On a file system that refuses
    ``O_DIRECT`` (tmpfs), on a platform without it, or for a writer that is not
    *durable*, every byte goes through the page cache (with writeback started as it goes
    when *durable*).

    One direct write at a time: two in flight (two buffers, the writes on helper
    threads) made a 2 GiB ingest no faster (5 alternated pairs, medians 375 against 387
    MiB/s), as what the ingest waits for is not the disk.

    One writer, one thread at a time. :meth:`close` (or leaving a ``with`` block without
    an error) writes what is still buffered and waits for a flush under way (raising its
    error); the caller then fsyncs and closes *fd*.
    """

    def __init__(
        self, path: str | os.PathLike[str], fd: int, offset: int, *, durable: bool
    ) -> None:
        self._fd = fd
        self._durable = durable
        self.position = offset
        """File offset the next byte goes to."""
        self._direct_fd: int | None = None
        self._buffer: DirectBuffer | None = None
        self._pending = 0  # bytes in the buffer; buffer[0] belongs at position - pending
        self._flushed = offset  # writeback started up to here (page-cache writes)
        self.direct_bytes = 0
        """Bytes written with ``O_DIRECT`` so far."""
        self._flushing: Future[None] | None = None
        self._flushed_direct = 0  # direct bytes when the last early flush started
        if durable and hasattr(os, "O_DIRECT"):
            try:
                self._direct_fd = os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # EINVAL: the file system has no O_DIRECT
                    raise
            else:
                self._buffer = _borrow_buffer()

    @property
    def direct(self) -> bool:
        """Are whole blocks (still) written with ``O_DIRECT``?"""
        return self._direct_fd is not None

    def write(self, chunks: Iterable[bytes | memoryview]) -> int:
        """Append *chunks*; returns the bytes taken (all of them)."""
        taken = 0
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            taken += len(view)
            if self._buffer is None or self._direct_fd is None:
                self._write_cached(view)
                continue
            if self._pending == 0 and (head := -self.position % DIRECT_ALIGN):
                self._write_cached(view[:head])  # up to the next block boundary
                view = view[head:]
            while view:
                room = DIRECT_BUFFER - self._pending
                part, view = view[:room], view[room:]
                self._buffer.view[self._pending : self._pending + len(part)] = part
                self._pending += len(part)
                self.position += len(part)
                if self._pending == DIRECT_BUFFER:
                    self._drain()
        return taken

    def __enter__(self) -> FileAppender:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        """Closed: what is buffered is written unless the block failed."""
        self.close(keep=kind is None)

    def drains(self, size: int) -> bool:
        """Would appending *size* more bytes write a buffer's worth to the disk now (work
        for a worker thread, not an event loop)?"""
        return self._buffer is not None and self._pending + size >= DIRECT_BUFFER

    def close(self, *, keep: bool = True) -> None:
        """Write what is still buffered (whole blocks direct, the rest cached), unless
        not *keep* (the file is being abandoned), and give the buffer back. The appender
        cannot be used afterwards."""
        try:
            if self._pending and keep:
                self._drain()
        finally:
            flushing, self._flushing = self._flushing, None
            failed: BaseException | None = None
            # A flush still queued behind other files' is dropped: the caller's fsync
            # does its work. One under way is waited for even when abandoning: the
            # caller closes *fd* next, and it would sync whatever file took its number.
            if flushing is not None and not flushing.cancel():
                failed = flushing.exception()
            if self._direct_fd is not None:
                os.close(self._direct_fd)
                self._direct_fd = None
            if self._buffer is not None:
                _return_buffer(self._buffer)
                self._buffer = None
        # A write error the early flush took is not reported again to the caller's fsync
        # on the same file (Linux reports each once per open file), so it is raised here.
        if failed is not None and keep:
            raise failed

    def _drain(self) -> None:
        """Write the buffer: its whole blocks direct, a partial last block cached."""
        assert self._buffer is not None
        start = self.position - self._pending
        whole = self._pending - self._pending % DIRECT_ALIGN
        done = 0
        with self._buffer.view[: self._pending] as data:
            while done < whole and self._direct_fd is not None:
                done += self._write_direct(self._direct_fd, data[done:whole], start + done)
            if done < self._pending:
                pwritev_all(self._fd, [data[done:]], start + done)
        self._pending = 0
        self._flush_early()

    def _flush_early(self) -> None:
        """Start the next early flush once FLUSH_STEP more bytes went direct and the one
        before has finished. Only a head start: the caller's fsync still decides."""
        if self.direct_bytes - self._flushed_direct < FLUSH_STEP:
            return
        if self._flushing is not None:
            if not self._flushing.done():
                return
            if (failed := self._flushing.exception()) is not None:
                raise failed
        self._flushing = _start_flush(self._fd)
        self._flushed_direct = self.direct_bytes

    def _write_direct(self, fd: int, data: memoryview, offset: int) -> int:
        """Bytes written direct; on a refusal (some file systems accept ``O_DIRECT`` at
        open but not every write) direct writing stops and the rest goes cached."""
        try:
            written = os.pwrite(fd, data, offset)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            written = 0
        if written > 0 and written % DIRECT_ALIGN == 0:
            self.direct_bytes += written
            return written
        self.direct_bytes += max(written, 0)
        os.close(fd)
        self._direct_fd = None
        return max(written, 0)

    def _write_cached(self, view: memoryview) -> None:
        self.position += pwritev_all(self._fd, [view], self.position)
        if self._durable and self.position - self._flushed >= WRITEBACK_STEP:
            start_writeback(self._fd, self._flushed, self.position - self._flushed)
            self._flushed = self.position
