"""Local-disk blob store: ``root/ab/abcdef...``; uploads land in ``root/.tmp`` first.

Commit = flush, fsync, ``os.replace`` into place, fsync the directory. Renames are atomic,
so a reader or a crash sees either no blob or a whole one, and two uploads of the same
content end as one file.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from putplace.blobs.base import (
    QUARANTINE_DIR,
    BlobNotFoundError,
    BlobStore,
    BlobWriter,
    StorageFullError,
    StorageUnavailableError,
    StoredBlob,
    checked_name,
)
from putplace.digest import CHUNK_SIZE, INLINE_WORK_LIMIT, is_sha256_hex

TEMP_DIR = ".tmp"


def _translate(exc: OSError) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFullError("no space left in the blob store")
    return StorageUnavailableError(f"blob store I/O error: {exc.strerror or exc}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[[int], int] | None:
    """Linux's ``syncfs(2)``: one call makes everything written to a filesystem durable."""
    name = ctypes.util.find_library("c")
    try:
        syncfs = ctypes.CDLL(name, use_errno=True).syncfs
    except (OSError, AttributeError):  # not Linux
        return None
    syncfs.argtypes = [ctypes.c_int]
    function: Callable[[int], int] = syncfs
    return function


_SYNCFS = _load_syncfs()


def _barrier(directory: Path, written: Sequence[Path]) -> None:
    """Make *written* (files, or directories after renames) durable.

    One ``syncfs`` of the filesystem costs about what one fsync does, where fsyncing each
    of a thousand small files costs a thousand journal commits (measured: 19,000 vs
    3,600 files/s on the development machine). Without ``syncfs``, each is fsynced.
    """
    if _SYNCFS is not None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _SYNCFS(fd) == 0:
                return
        finally:
            os.close(fd)
    for path in written:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _LocalWriter(BlobWriter):
    def __init__(self, store: LocalBlobStore, sha256: str, temp: Path, handle: BinaryIO) -> None:
        self._store = store
        self._sha256 = sha256
        self._temp = temp
        self._handle: BinaryIO | None = handle

    async def write(self, data: bytes) -> None:
        if self._handle is None:
            raise StorageUnavailableError("write after commit or abort")
        try:
            if len(data) < INLINE_WORK_LIMIT:
                self._handle.write(data)
            else:
                await asyncio.to_thread(self._handle.write, data)
        except OSError as exc:
            raise _translate(exc) from exc

    def _commit_sync(self) -> None:
        assert self._handle is not None
        final = self._store.path_for(self._sha256)
        self._handle.flush()
        if self._store.fsync:
            os.fsync(self._handle.fileno())
        self._handle.close()
        self._handle = None
        final.parent.mkdir(exist_ok=True)
        os.replace(self._temp, final)
        if self._store.fsync:
            _fsync_dir(final.parent)

    async def commit(self) -> None:
        try:
            await asyncio.to_thread(self._commit_sync)
        except OSError as exc:
            raise _translate(exc) from exc

    def _abort_sync(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._temp.unlink(missing_ok=True)

    async def abort(self) -> None:
        await asyncio.to_thread(self._abort_sync)


class LocalBlobStore(BlobStore):
    kind = "local"

    def __init__(self, root: str | Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self._temp_root = self.root / TEMP_DIR

    def describe(self) -> dict[str, Any]:
        return {"type": self.kind, "path": str(self.root)}

    def path_for(self, sha256: str) -> Path:
        checked_name(sha256)
        return self.root / sha256[:2] / sha256

    async def open(self) -> None:
        try:
            await asyncio.to_thread(self._temp_root.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailableError(
                f"cannot create blob directory {self.root}: {exc}"
            ) from exc

    async def ping(self) -> bool:
        return await asyncio.to_thread(
            lambda: self._temp_root.is_dir() and os.access(self._temp_root, os.W_OK)
        )

    async def begin(self, sha256: str, size_hint: int | None = None) -> BlobWriter:
        checked_name(sha256)
        temp = self._temp_root / f"{sha256}.{uuid.uuid4().hex}.part"
        try:
            handle = await asyncio.to_thread(open, temp, "xb")
        except OSError as exc:
            raise _translate(exc) from exc
        return _LocalWriter(self, sha256, temp, handle)

    async def put_many(self, contents: Sequence[tuple[str, bytes]]) -> None:
        """Write every content under a temporary name, one barrier, rename each into place,
        one barrier for the directories: two syncs per group instead of two per file."""
        try:
            await asyncio.to_thread(self._put_many_sync, contents)
        except OSError as exc:
            raise _translate(exc) from exc

    def _put_many_sync(self, contents: Sequence[tuple[str, bytes]]) -> None:
        finals = [self.path_for(sha256) for sha256, _ in contents]  # all valid, or none
        placed: list[tuple[Path, Path]] = []
        try:
            for final, (_, data) in zip(finals, contents, strict=True):
                temp = self._temp_root / f"{final.name}.{uuid.uuid4().hex}.part"
                with open(temp, "xb") as handle:
                    placed.append((temp, final))
                    handle.write(data)
            if self.fsync:
                _barrier(self._temp_root, [temp for temp, _ in placed])
            for temp, final in placed:
                final.parent.mkdir(exist_ok=True)
                os.replace(temp, final)
        except BaseException:
            for temp, _ in placed:
                temp.unlink(missing_ok=True)
            raise
        if self.fsync:
            _barrier(self.root, sorted({final.parent for _, final in placed}))

    async def size(self, sha256: str) -> int | None:
        path = self.path_for(sha256)
        try:
            return (await asyncio.to_thread(path.stat)).st_size
        except FileNotFoundError:
            return None

    async def read(
        self, sha256: str, start: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        path = self.path_for(sha256)
        try:
            handle = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            raise BlobNotFoundError(sha256) from None
        try:
            await asyncio.to_thread(handle.seek, start)
            remaining = length
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
        try:
            await asyncio.to_thread(path.unlink)
        except FileNotFoundError:
            return False
        return True

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
            return removed

        return await asyncio.to_thread(sweep)

    async def quarantine(self, sha256: str) -> bool:
        source = self.path_for(sha256)
        target = self.root / QUARANTINE_DIR / f"{sha256}.{int(time.time())}"

        def move() -> bool:
            target.parent.mkdir(exist_ok=True)
            try:
                os.replace(source, target)
            except FileNotFoundError:
                return False
            return True

        return await asyncio.to_thread(move)
