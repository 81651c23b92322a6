"""Verified ingest: the one place where incoming content is hashed, sized and committed.

Every backend gets the same guarantees from here: the hash is computed from the bytes as
they stream in (never trusted from the client), nothing is visible under the final name
unless hash and size match, and a failure at any point discards the temporary copy.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterable, AsyncIterator, Sequence

from putplace.batches import LARGE_BATCHES
from putplace.blobs.base import BlobStore, BlobWriter, checked_name
from putplace.digest import INLINE_WORK_LIMIT
from putplace.idle_watch import Idle, idle_watch
from putplace.service.errors import (
    HashMismatchError,
    SizeMismatchError,
    StalledError,
    TooLargeError,
)


async def with_idle_timeout(chunks: AsyncIterable[bytes], seconds: float) -> AsyncIterator[bytes]:
    """Pass *chunks* through, raising :class:`StalledError` once a wait for the next one
    has lasted *seconds* (looked for by the process's :class:`IdleWatch`, not by a timer
    per chunk)."""
    iterator = aiter(chunks)
    watch = idle_watch(seconds)
    while True:
        try:
            chunk = await watch.wait(anext(iterator))
        except StopAsyncIteration:
            return
        except Idle:
            raise StalledError(f"upload stalled: no data received for {seconds:g} s") from None
        yield chunk


class _Discard(BlobWriter):
    """Keeps nothing: for bytes the server holds already, sent as proof of possession."""

    async def write(self, data: bytes) -> None:
        pass

    async def write_all(self, chunks: Sequence[bytes]) -> None:
        pass

    async def commit(self) -> None:
        pass

    async def abort(self) -> None:
        pass


async def store_verified(
    store: BlobStore | None,
    sha256: str,
    chunks: AsyncIterable[bytes],
    *,
    expected_size: int | None = None,
    max_size: int | None = None,
) -> int:
    """Stream *chunks* into *store* as blob *sha256*; return the size stored. Without a
    store, the bytes are verified the same way and dropped.

    Raises :class:`HashMismatchError`, :class:`SizeMismatchError` or :class:`TooLargeError`
    (and whatever the backend raises) with nothing stored.
    """
    checked_name(sha256)
    limit = expected_size if expected_size is not None else max_size
    if max_size is not None and limit is not None:
        limit = min(limit, max_size)
    with LARGE_BATCHES.batch_for(expected_size) as batch_bytes:
        return await _store_stream(
            store, sha256, chunks, expected_size, max_size, limit, batch_bytes
        )


async def _store_stream(
    store: BlobStore | None,
    sha256: str,
    chunks: AsyncIterable[bytes],
    expected_size: int | None,
    max_size: int | None,
    limit: int | None,
    batch_bytes: int,
) -> int:
    hasher = hashlib.sha256()
    size = 0
    pending: list[bytes] = []
    pending_size = 0
    # One batch of chunks is hashed and written while the next is received (double
    # buffering): the previous step is awaited before the next starts, so order is kept.
    # Chunks are handed on as they came, never joined: a join copies every byte once more.
    in_progress: asyncio.Task[None] | None = None

    def hash_all(batch: list[bytes]) -> None:
        for data in batch:
            hasher.update(data)  # releases the GIL for each chunk over 2 KiB

    async def consume(batch: list[bytes], batch_size: int) -> None:
        if batch_size < INLINE_WORK_LIMIT:
            hash_all(batch)
            await writer.write_all(batch)
        else:  # hash on a worker thread while the backend writes
            await asyncio.gather(asyncio.to_thread(hash_all, batch), writer.write_all(batch))

    async def flush() -> None:
        nonlocal in_progress, pending, pending_size
        batch, batch_size = pending, pending_size
        pending, pending_size = [], 0
        if in_progress is not None:
            await in_progress
        in_progress = asyncio.create_task(consume(batch, batch_size))

    writer = _Discard() if store is None else await store.begin(sha256, size_hint=expected_size)
    try:
        async for chunk in chunks:
            size += len(chunk)
            if limit is not None and size > limit:
                if expected_size is not None and (max_size is None or size <= max_size):
                    raise SizeMismatchError(
                        f"received more than the registered {expected_size} bytes"
                    )
                raise TooLargeError(f"upload exceeds the limit of {max_size} bytes")
            pending.append(chunk)
            pending_size += len(chunk)
            if pending_size >= batch_bytes:
                await flush()
        if pending:
            await flush()
        if in_progress is not None:
            await in_progress
        if expected_size is not None and size != expected_size:
            raise SizeMismatchError(
                f"received {size} bytes, but the registered size is {expected_size}"
            )
        actual = hasher.hexdigest()
        if actual != sha256:
            raise HashMismatchError(f"content hashes to {actual}, not {sha256}")
        await writer.commit()
    except BaseException:
        if in_progress is not None and not in_progress.done():
            in_progress.cancel()
            await asyncio.gather(in_progress, return_exceptions=True)
        await asyncio.shield(writer.abort())
        raise
    return size
