"""Local-disk blob store: ``root/ab/abcdef...``; uploads land in ``root/.tmp`` first.

Commit = flush, fsync, ``os.replace`` into place, fsync the directory. Renames are atomic,
so a reader or a crash sees either no blob or a whole one, and two uploads of the same
content end as one file. Groups of small contents (bundles) go into pack files instead,
one per group (:mod:`.packs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from putplace.blobs.base import (
    QUARANTINE_DIR,
    BlobError,
    BlobNotFoundError,
    BlobStore,
    BlobWriter,
    Capacity,
    Contents,
    GroupWriter,
    StorageFullError,
    StorageUnavailableError,
    StoredBlob,
    checked_name,
    quarantine_name,
    quarantined_when,
)
from putplace.blobs.fsio import FileAppender, fsync_dir, make_dir
from putplace.blobs.local_staging import LocalUploadStaging
from putplace.blobs.packs import Packs, PackWriter
from putplace.digest import CHUNK_SIZE, INLINE_WORK_LIMIT, is_sha256_hex

TEMP_DIR = ".tmp"

T = TypeVar("T")


def _translate(exc: OSError) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFullError("no space left in the blob store")
    return StorageUnavailableError(f"blob store I/O error: {exc.strerror or exc}")


class _LocalWriter(BlobWriter):
    """Bytes written to a temporary file through a :class:`FileAppender` (with fsync on:
    straight to the disk, not through the page cache), fsynced and renamed into place at
    commit."""

    def __init__(self, store: LocalBlobStore, sha256: str, temp: Path, fd: int) -> None:
        self._store = store
        self._sha256 = sha256
        self._temp = temp
        self._fd: int | None = fd
        self._appender = FileAppender(temp, fd, 0, durable=store.fsync)

    async def write(self, data: bytes) -> None:
        await self.write_all([data])

    async def write_all(self, chunks: Sequence[bytes]) -> None:
        if self._fd is None:
            raise StorageUnavailableError("write after commit or abort")
        try:
            size = sum(map(len, chunks))
            if size < INLINE_WORK_LIMIT and not self._appender.drains(size):
                self._appender.write(chunks)
            else:
                await asyncio.to_thread(self._appender.write, chunks)
        except OSError as exc:
            raise _translate(exc) from exc

    def _commit_sync(self) -> None:
        assert self._fd is not None
        final = self._store.path_for(self._sha256)
        self._appender.close()
        if self._store.fsync:
            os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        make_dir(final.parent, durable=self._store.fsync)
        os.replace(self._temp, final)
        if self._store.fsync:
            fsync_dir(final.parent)

    async def commit(self) -> None:
        try:
            await asyncio.to_thread(self._commit_sync)
        except OSError as exc:
            raise _translate(exc) from exc

    def _abort_sync(self) -> None:
        self._appender.close(keep=False)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._temp.unlink(missing_ok=True)

    async def abort(self) -> None:
        await asyncio.to_thread(self._abort_sync)


class LocalBlobStore(BlobStore):
    """Large contents as one file each (``root/ab/abcdef...``); groups of small ones as
    pack files (``root/packs``, see :mod:`.packs`). Reads, listing and deletion see both."""

    kind = "local"

    def __init__(self, root: str | Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self._temp_root = self.root / TEMP_DIR
        self._packs = Packs(self.root, fsync=fsync)
        # Groups are written by one thread per process, one after another: the pack index
        # takes one writer at a time anyway.
        self._group_writer: ThreadPoolExecutor | None = None
        self._staging = LocalUploadStaging(self.root, self.path_for, fsync=fsync)

    def staging(self) -> LocalUploadStaging:
        return self._staging

    def describe(self) -> dict[str, Any]:
        return {"type": self.kind, "path": str(self.root)}

    async def capacity(self) -> Capacity | None:
        try:
            stats = await asyncio.to_thread(os.statvfs, self.root)
        except OSError:
            return None  # not there yet, or unreadable: the ping reports that
        # What an unprivileged writer may still use (f_bavail), as `df` shows it.
        return Capacity(free=stats.f_bavail * stats.f_frsize, total=stats.f_blocks * stats.f_frsize)

    def path_for(self, sha256: str) -> Path:
        checked_name(sha256)
        return self.root / sha256[:2] / sha256

    async def open(self) -> None:
        def prepare() -> None:
            self._temp_root.mkdir(parents=True, exist_ok=True)
            # Every shard made (and made durable) before any upload: one that made its
            # shard while another wrote into it could otherwise acknowledge a file whose
            # directory's entry was not durable yet.
            for shard in range(256):
                make_dir(self.root / f"{shard:02x}", durable=False)
            if self.fsync:
                fsync_dir(self.root)
                fsync_dir(self.root.parent)
            self._packs.open()

        try:
            await asyncio.to_thread(prepare)
        except (OSError, sqlite3.Error) as exc:
            raise StorageUnavailableError(
                f"cannot create blob directory {self.root}: {exc}"
            ) from exc
        self._group_writer = ThreadPoolExecutor(1, thread_name_prefix="blob-groups")

    async def close(self) -> None:
        writer, self._group_writer = self._group_writer, None
        if writer is not None:
            await asyncio.to_thread(writer.shutdown, wait=True)
        await asyncio.to_thread(self._packs.close)

    async def ping(self) -> bool:
        return await asyncio.to_thread(
            lambda: self._temp_root.is_dir() and os.access(self._temp_root, os.W_OK)
        )

    async def begin(self, sha256: str, size_hint: int | None = None) -> BlobWriter:
        checked_name(sha256)
        temp = self._temp_root / f"{sha256}.{uuid.uuid4().hex}.part"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = await asyncio.to_thread(os.open, temp, flags, 0o644)
        except OSError as exc:
            raise _translate(exc) from exc
        return _LocalWriter(self, sha256, temp, fd)

    def group(self) -> GroupWriter:
        """One pack file for the whole group: one file created and two fsyncs (pack, then
        index) per group, where a file per content costs a create and a rename each."""
        return _PackGroup(self, self._packs.writer())

    async def put_many(self, contents: Contents) -> None:
        group = self.group()
        try:
            await group.add(contents)
            await group.commit()
        except BaseException:
            await group.abort()
            raise

    async def _in_group_writer(self, fn: Callable[[], None]) -> None:
        """Run *fn* on the thread that writes groups; store failures become
        :class:`BlobError`s."""
        if self._group_writer is None:
            raise StorageUnavailableError("the blob store is not open")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._group_writer, fn)
        except OSError as exc:
            raise _translate(exc) from exc
        except sqlite3.Error as exc:
            raise StorageUnavailableError(f"pack index write failed: {exc}") from exc

    async def size(self, sha256: str) -> int | None:
        path = self.path_for(sha256)

        def find() -> int | None:
            location = self._packs.locate(sha256)
            if location is not None:
                return location.size
            try:
                return path.stat().st_size
            except FileNotFoundError:
                return None

        return await self._guarded(find)

    async def _guarded(self, fn: Callable[[], T]) -> T:
        """Run blocking *fn* in a thread; store failures become :class:`BlobError`s."""
        try:
            return await asyncio.to_thread(fn)
        except OSError as exc:
            raise _translate(exc) from exc
        except sqlite3.Error as exc:
            raise StorageUnavailableError(f"pack index failed: {exc}") from exc

    async def read(
        self, sha256: str, start: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        path = self.path_for(sha256)

        def open_range() -> tuple[BinaryIO, int | None]:
            packed = self._packs.open_range(sha256, start, length)
            if packed is not None:
                return packed
            try:
                handle = open(path, "rb")  # noqa: SIM115 - closed below
            except FileNotFoundError:
                raise BlobNotFoundError(sha256) from None
            handle.seek(start)
            return handle, length

        handle, remaining = await self._guarded(open_range)
        try:
            while remaining is None or remaining > 0:
                want = CHUNK_SIZE if remaining is None else min(CHUNK_SIZE, remaining)
                data = await asyncio.to_thread(handle.read, want)
                if not data:
                    break
                if remaining is not None:
                    remaining -= len(data)
                yield data
        finally:
            handle.close()

    async def delete(self, sha256: str) -> bool:
        path = self.path_for(sha256)

        def remove() -> bool:
            packed = self._packs.remove(sha256)
            try:
                path.unlink()
            except FileNotFoundError:
                return packed
            return True

        return await self._guarded(remove)

    async def list(self) -> AsyncIterator[StoredBlob]:
        def shard_names() -> list[Path]:
            return sorted(p for p in self.root.iterdir() if len(p.name) == 2 and p.is_dir())

        def blobs_in(shard: Path) -> list[StoredBlob]:
            found = []
            for entry in os.scandir(shard):
                if not (is_sha256_hex(entry.name) and entry.name.startswith(shard.name)):
                    continue
                try:
                    st = entry.stat()
                except FileNotFoundError:  # deleted meanwhile
                    continue
                modified = datetime.fromtimestamp(st.st_mtime, UTC)
                found.append(StoredBlob(entry.name, st.st_size, modified))
            return found

        for shard in await asyncio.to_thread(shard_names):
            for blob in await asyncio.to_thread(blobs_in, shard):
                yield blob
        after = b""
        while page := await self._guarded(functools.partial(self._packs.listing, after)):
            for digest, size, stored_at in page:
                yield StoredBlob(digest.hex(), size, datetime.fromtimestamp(stored_at, UTC))
            after = page[-1][0]

    async def cleanup_temporary(self, older_than_seconds: float) -> int:
        def sweep() -> int:
            cutoff = time.time() - older_than_seconds
            removed = 0
            for entry in os.scandir(self._temp_root):
                try:
                    if entry.stat().st_mtime <= cutoff:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    continue
            return removed + self._packs.sweep(older_than_seconds)

        return await self._guarded(sweep)

    async def quarantine(self, sha256: str) -> bool:
        source = self.path_for(sha256)
        target = self.root / QUARANTINE_DIR / quarantine_name(sha256)

        def move() -> bool:
            target.parent.mkdir(exist_ok=True)
            packed = self._packs.open_range(sha256, 0, None)
            if packed is not None:  # the bytes are copied out, then the entry dropped
                handle, size = packed
                with handle:
                    target.write_bytes(handle.read(size))
                return self._packs.remove(sha256)
            try:
                os.replace(source, target)
            except FileNotFoundError:
                return False
            return True

        return await self._guarded(move)

    async def quarantined_since(self, sha256: str) -> datetime | None:
        def newest() -> datetime | None:
            try:
                with os.scandir(self.root / QUARANTINE_DIR) as entries:
                    times = [quarantined_when(entry.name, sha256) for entry in entries]
            except FileNotFoundError:
                return None
            return max((t for t in times if t is not None), default=None)

        return await self._guarded(newest)


class _PackGroup(GroupWriter):
    """A group written into one new pack as its parts are added, on the store's group
    writer thread (so a part's bytes are copied out in the order parts come)."""

    def __init__(self, store: LocalBlobStore, writer: PackWriter) -> None:
        self._store = store
        self._writer = writer
        self._added: set[str] = set()

    async def add(self, contents: Contents) -> None:
        for sha256, _ in contents:
            checked_name(sha256)  # all valid, or none added
        await self._store._in_group_writer(functools.partial(self._append, contents))

    def _append(self, contents: Contents) -> None:
        fresh = [c for c in self._store._packs.unpacked(contents) if c[0] not in self._added]
        self._writer.append(fresh)
        self._added.update(sha256 for sha256, _ in fresh)

    async def commit(self) -> None:
        await self._store._in_group_writer(
            functools.partial(self._store._packs.commit, self._writer)
        )

    async def abort(self) -> None:
        # Shielded: a cancelled request still removes its pack, once the thread gets to it.
        # A pack this fails to remove is swept once old (:meth:`Packs.sweep`).
        with contextlib.suppress(BlobError):
            await asyncio.shield(self._store._in_group_writer(self._writer.discard))
