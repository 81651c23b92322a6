"""One BlobStore contract, run unchanged against every backend (local disk and S3).

Content goes in through ``store_verified``, as the server stores it. Blobs of 9 MiB are
bigger than one S3 part, so on S3 they really go up as multipart uploads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest

from putplace.blobs.base import (
    BlobNotFoundError,
    BlobStore,
    InvalidBlobNameError,
    StorageUnavailableError,
)
from putplace.blobs.local import LocalBlobStore
from putplace.blobs.s3 import S3BlobStore
from putplace.service.errors import HashMismatchError, SizeMismatchError
from putplace.service.ingest import store_verified
from tests.blobs.conftest import s3_store
from tests.support.servers import free_port

MiB = 1024 * 1024
MULTIPART = 9 * MiB  # more than one S3 part


def content(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def chunks(data: bytes, step: int = 256 * 1024) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), step):
        yield data[offset : offset + step]


async def put(store: BlobStore, data: bytes) -> str:
    name = sha(data)
    assert await store_verified(store, name, chunks(data), expected_size=len(data)) == len(data)
    return name


async def read_all(store: BlobStore, name: str, start: int = 0, length: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in store.read(name, start, length)])


async def names(store: BlobStore) -> set[str]:
    return {blob.sha256 async for blob in store.list()}


# --- storing and reading -------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 100_000, MULTIPART + 12_345])
async def test_stored_blob_reads_back_whole(store: BlobStore, size: int) -> None:
    data = content(size, seed=size)
    name = await put(store, data)
    assert await store.exists(name)
    assert await store.size(name) == size
    assert await read_all(store, name) == data
    assert await names(store) == {name}


RANGE_BLOB = 7 * MiB + 333


@pytest.mark.parametrize(
    ("start", "length"),
    [
        (0, 10),
        (5, 100),
        (MiB - 3, 2 * MiB + 7),  # across chunk edges
        (3 * MiB + 10, 3 * MiB + 20),  # across S3 read segments
        (RANGE_BLOB - 10, None),  # to the end
        (1234, None),
        (42, 0),  # zero-length
        (RANGE_BLOB, None),  # at the end: nothing
        (RANGE_BLOB - 5, 100),  # longer than what is left: the rest
    ],
)
async def test_ranges_return_exactly_those_bytes(
    store: BlobStore, start: int, length: int | None
) -> None:
    data = content(RANGE_BLOB, seed=7)
    name = await put(store, data)
    end = None if length is None else start + length
    assert await read_all(store, name, start, length) == data[start:end]


async def test_missing_blob_is_absent_everywhere(store: BlobStore) -> None:
    name = sha(b"never stored")
    assert await store.size(name) is None
    assert not await store.exists(name)
    stream = store.read(name)
    with pytest.raises(BlobNotFoundError):
        await anext(stream)
    with pytest.raises(BlobNotFoundError):
        await anext(store.read(name, 0, 0))
    assert await store.delete(name) is False
    assert await store.quarantine(name) is False
    assert await names(store) == set()


async def test_delete_removes_once(store: BlobStore, leftovers: Callable[..., Any]) -> None:
    keep = await put(store, b"keep me")
    gone = await put(store, b"delete me")
    assert await store.delete(gone) is True
    assert await store.delete(gone) is False
    assert not await store.exists(gone)
    with pytest.raises(BlobNotFoundError):
        await read_all(store, gone)
    assert await names(store) == {keep}
    assert await read_all(store, keep) == b"keep me"
    assert await put(store, b"delete me") == gone  # can be stored again
    assert await read_all(store, gone) == b"delete me"


async def test_storing_existing_content_again_keeps_one_intact_blob(store: BlobStore) -> None:
    data = content(300_000, seed=3)
    name = await put(store, data)
    assert await put(store, data) == name
    assert await names(store) == {name}
    assert await read_all(store, name) == data


async def test_list_shows_only_final_blobs(store: BlobStore) -> None:
    a = await put(store, b"a")
    b = await put(store, b"b")
    bad = await put(store, b"to quarantine")
    assert await store.quarantine(bad)
    pending = content(MULTIPART, seed=9)
    writer = await store.begin(sha(pending))
    await writer.write(pending)  # in progress: not a blob yet
    try:
        assert await names(store) == {a, b}
        assert not await store.exists(sha(pending))
    finally:
        await writer.abort()


async def test_list_reports_size_and_when_written(store: BlobStore) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)  # S3 keeps whole seconds
    small, large = await put(store, b"tiny"), await put(store, content(MULTIPART, seed=3))
    listed = {blob.sha256: blob async for blob in store.list()}
    assert {name: blob.size for name, blob in listed.items()} == {small: 4, large: MULTIPART}
    for blob in listed.values():
        assert before <= blob.modified <= datetime.now(UTC) + timedelta(seconds=5)


async def test_concurrent_stores_of_the_same_blob_all_succeed(
    store: BlobStore, leftovers: Callable[..., Any]
) -> None:
    data = content(MULTIPART, seed=10)
    results = await asyncio.gather(*(put(store, data) for _ in range(10)))
    assert set(results) == {sha(data)}
    assert await names(store) == {sha(data)}
    assert await store.size(sha(data)) == len(data)
    assert sha(await read_all(store, sha(data))) == sha(data)
    assert len(await leftovers(store)) == 1  # one blob, no stray temporary copies


# --- refused and abandoned uploads leave nothing ----------------------------------------


@pytest.mark.parametrize("size", [1000, MULTIPART])
async def test_hash_mismatch_leaves_nothing(
    store: BlobStore, leftovers: Callable[..., Any], size: int
) -> None:
    data = content(size, seed=11)
    claimed = sha(data + b"x")
    with pytest.raises(HashMismatchError):
        await store_verified(store, claimed, chunks(data), expected_size=size)
    assert not await store.exists(claimed)
    assert not await store.exists(sha(data))
    assert await leftovers(store) == []


@pytest.mark.parametrize("delta", [-1, +1])
async def test_size_mismatch_leaves_nothing(
    store: BlobStore, leftovers: Callable[..., Any], delta: int
) -> None:
    data = content(MULTIPART, seed=12)
    with pytest.raises(SizeMismatchError):
        await store_verified(store, sha(data), chunks(data), expected_size=len(data) + delta)
    assert not await store.exists(sha(data))
    assert await leftovers(store) == []


async def test_failing_source_leaves_nothing(
    store: BlobStore, leftovers: Callable[..., Any]
) -> None:
    data = content(MULTIPART, seed=13)

    async def broken() -> AsyncIterator[bytes]:
        async for chunk in chunks(data[: 8 * MiB + 1]):
            yield chunk
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await store_verified(store, sha(data), broken(), expected_size=len(data))
    assert not await store.exists(sha(data))
    assert await leftovers(store) == []


@pytest.mark.parametrize("size", [10, MULTIPART])
async def test_abort_leaves_nothing(
    store: BlobStore, leftovers: Callable[..., Any], size: int
) -> None:
    data = content(size, seed=14)
    writer = await store.begin(sha(data))
    await writer.write(data)
    await writer.abort()
    await writer.abort()  # safe twice
    assert not await store.exists(sha(data))
    assert await leftovers(store) == []


async def test_cleanup_removes_stale_uploads_and_keeps_blobs(
    store: BlobStore, leftovers: Callable[..., Any]
) -> None:
    kept = await put(store, content(200_000, seed=15))
    data = content(MULTIPART, seed=16)
    writer = await store.begin(sha(data))
    await writer.write(data)  # then abandoned: never committed nor aborted
    await asyncio.sleep(0.05)
    assert await store.cleanup_temporary(0) >= 1
    assert await store.cleanup_temporary(0) == 0
    assert len(await leftovers(store)) == 1  # only the final blob
    with pytest.raises(StorageUnavailableError):  # a swept upload can never appear later
        await writer.commit()
    await writer.abort()
    assert not await store.exists(sha(data))
    assert await names(store) == {kept}
    assert await read_all(store, kept) == content(200_000, seed=15)


async def test_cleanup_keeps_uploads_younger_than_the_age(store: BlobStore) -> None:
    data = content(MULTIPART, seed=17)
    writer = await store.begin(sha(data))
    await writer.write(data)
    assert await store.cleanup_temporary(3600) == 0
    await writer.commit()
    assert await read_all(store, sha(data)) == data


async def test_quarantine_moves_blob_out_of_sight_but_keeps_bytes(
    store: BlobStore, leftovers: Callable[..., Any]
) -> None:
    other = await put(store, b"healthy")
    name = await put(store, b"suspect bytes")
    assert await store.quarantined_since(name) is None
    before = datetime.now(UTC).replace(microsecond=0)
    assert await store.quarantine(name) is True
    since = await store.quarantined_since(name)  # verify can tell moved aside from lost
    assert since is not None
    assert before <= since <= datetime.now(UTC)
    assert await store.quarantined_since(other) is None
    assert not await store.exists(name)
    assert await names(store) == {other}
    assert await store.quarantine(name) is False
    held = [path for path in await leftovers(store) if name in path and "quarantine" in path]
    assert len(held) == 1  # kept for inspection
    assert await put(store, b"suspect bytes") == name  # a good copy can be stored again
    assert await read_all(store, name) == b"suspect bytes"


# --- names -----------------------------------------------------------------------------

BAD_NAMES = [
    "../../etc/passwd",
    sha(b"x").upper(),
    sha(b"x")[:63],
    sha(b"x") + "0",
    "",
    "../" + sha(b"x")[3:],
    sha(b"x")[:2] + "/" + sha(b"x")[3:],
]


async def _begin(store: BlobStore, name: str) -> Any:
    return await store.begin(name)


async def _read(store: BlobStore, name: str) -> Any:
    return await anext(store.read(name))


async def _ingest(store: BlobStore, name: str) -> Any:
    return await store_verified(store, name, chunks(b"payload"))


OPERATIONS: dict[str, Callable[[BlobStore, str], Any]] = {
    "begin": _begin,
    "size": lambda s, n: s.size(n),
    "exists": lambda s, n: s.exists(n),
    "read": _read,
    "delete": lambda s, n: s.delete(n),
    "quarantine": lambda s, n: s.quarantine(n),
    "store_verified": _ingest,
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
async def test_invalid_names_are_refused_before_any_io(
    store: BlobStore, leftovers: Callable[..., Any], operation: str, tmp_path: Path
) -> None:
    for bad in BAD_NAMES:
        with pytest.raises(InvalidBlobNameError):
            await OPERATIONS[operation](store, bad)
    assert await leftovers(store) == []


# --- large blobs, bounded memory --------------------------------------------------------

LARGE = 96 * MiB
LARGE_STEP = MiB


def large_chunks() -> Iterator[bytes]:
    """96 MiB of distinct 1 MiB chunks, made on the fly."""
    base = content(LARGE_STEP, seed=99)
    for index in range(LARGE // LARGE_STEP):
        yield index.to_bytes(8, "big") + base[8:]


class PeakRSS:
    """Sample this process's RSS every few milliseconds; report the growth."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.baseline = self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


async def test_large_blob_round_trip_uses_bounded_memory(store: BlobStore) -> None:
    hasher = hashlib.sha256()
    for chunk in large_chunks():
        hasher.update(chunk)
    name = hasher.hexdigest()

    async def source() -> AsyncIterator[bytes]:
        for chunk in large_chunks():
            yield chunk

    started = time.monotonic()
    with PeakRSS() as upload:
        assert await store_verified(store, name, source(), expected_size=LARGE) == LARGE
    assert await store.size(name) == LARGE

    check = hashlib.sha256()
    received = 0
    with PeakRSS() as download:
        async for chunk in store.read(name):
            check.update(chunk)
            received += len(chunk)
    assert received == LARGE
    assert check.hexdigest() == name
    assert upload.growth < 48 * MiB, f"upload grew RSS by {upload.growth / MiB:.1f} MiB"
    assert download.growth < 48 * MiB, f"download grew RSS by {download.growth / MiB:.1f} MiB"
    assert time.monotonic() - started < 60


# --- health ----------------------------------------------------------------------------


async def test_ping_answers_true(store: BlobStore) -> None:
    assert await store.ping() is True


async def test_ping_is_false_when_the_store_is_gone(
    store: BlobStore, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    dead: BlobStore
    if isinstance(store, LocalBlobStore):
        blocker = tmp_path / "not-a-directory"
        blocker.write_bytes(b"")
        dead = LocalBlobStore(blocker / "blobs", fsync=False)
    else:
        assert isinstance(store, S3BlobStore)
        config = dict(request.getfixturevalue("s3_config"))
        dead = s3_store(config, s3_endpoint_url=f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    assert await dead.ping() is False
    assert time.monotonic() - started < 15


async def test_put_many_stores_a_group_durably(
    store: BlobStore, leftovers: Callable[..., Any]
) -> None:
    group = [content(size, seed=size) for size in (0, 1, 5000, 70_000, MULTIPART)]
    await store.put_many([(sha(data), data) for data in group])
    for data in group:
        assert await read_all(store, sha(data)) == data
    assert await names(store) == {sha(data) for data in group}
    assert len(await leftovers(store)) == len(group)  # nothing temporary left
    await store.put_many([(sha(group[2]), group[2])])  # again: still one intact blob
    assert await read_all(store, sha(group[2])) == group[2]
    await store.put_many([])


async def test_put_many_refuses_a_bad_name_before_storing_any(
    store: BlobStore, leftovers: Callable[..., Any]
) -> None:
    good = content(3000, seed=1)
    with pytest.raises(InvalidBlobNameError):
        await store.put_many([(sha(good), good), ("../not-a-hash", b"x")])
    assert await leftovers(store) == []


async def test_a_group_added_in_parts_is_stored_whole_on_commit(
    store: BlobStore, leftovers: Callable[..., Any]
) -> None:
    """A bundle adds its members a slice at a time from one buffer, which it writes the
    next slice over as soon as ``add`` returns: the group must have its bytes by then."""
    parts = [[content(size, seed=size) for size in sizes] for sizes in ((1, 5000), (70_000,))]
    group = store.group()
    for part in parts:
        buffer = bytearray(b"".join(part))
        views, start = [], 0
        for data in part:
            views.append((sha(data), memoryview(buffer)[start : start + len(data)]))
            start += len(data)
        await group.add(views)
        buffer[:] = bytes(len(buffer))  # the next slice, written over this one
    await group.commit()
    every = [data for part in parts for data in part]
    for data in every:
        assert await read_all(store, sha(data)) == data
    assert len(await leftovers(store)) == len(every)  # nothing temporary left


async def test_an_aborted_group_leaves_nothing_partial(
    store: BlobStore, leftovers: Callable[..., Any]
) -> None:
    """A bundle refused after some members were added (its body went on after its last
    member): each is gone (local disk: the pack is removed) or whole, never partial."""
    added = [content(size, seed=size + 7) for size in (3000, 90_000)]
    group = store.group()
    await group.add([(sha(data), data) for data in added])
    await group.abort()
    await group.abort()  # again: harmless
    for data in added:
        with contextlib.suppress(BlobNotFoundError):
            assert await read_all(store, sha(data)) == data
    kept = await leftovers(store)
    assert len(kept) <= len(added)
    if isinstance(store, LocalBlobStore):
        assert kept == []


async def test_capacity_is_the_disk_or_none(store: BlobStore, tmp_path: Path) -> None:
    """Local disk reports the filesystem's free and total bytes (an alert watches them);
    an object store has no capacity the server can see."""
    capacity = await store.capacity()
    if store.kind == "s3":
        assert capacity is None
        return
    assert capacity is not None
    usage = shutil.disk_usage(tmp_path)
    assert capacity.total == usage.total
    assert 0 < capacity.free <= capacity.total
    assert abs(capacity.free - usage.free) < 256 * 1024 * 1024  # others write meanwhile
