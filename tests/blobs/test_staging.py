"""One UploadStaging contract (resumable uploads' bytes), run against every backend.

Sizes cross S3's part size (8 MiB, and 5 MiB at least) unevenly, so on S3 appends really
fill parts, keep tails and read them back.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from putplace.blobs.base import BlobNotFoundError, BlobStore, StorageUnavailableError
from putplace.blobs.local import LocalBlobStore
from putplace.blobs.staging import StagingBusyError, StagingState
from tests.blobs.conftest import s3_store

MIB = 1024 * 1024


async def chunks(data: bytes, size: int = 300_000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def staged_bytes(store: BlobStore, upload_id: str, state: StagingState, length: int) -> bytes:
    return b"".join([chunk async for chunk in store.staging().read(upload_id, state, length)])


async def append_all(
    store: BlobStore, upload_id: str, state: StagingState, content: bytes, cuts: Sequence[int]
) -> StagingState:
    """Append *content* in requests ending at each of *cuts*; the state kept after."""
    position = 0
    for end in cuts:
        reached, state = await store.staging().append(
            upload_id, state, position, len(content), chunks(content[position:end])
        )
        assert reached == end
        position = end
    return state


@pytest.mark.parametrize(
    "cuts",
    [
        [100],  # one request, smaller than a part
        [3 * MIB, 9 * MIB + 5, 17 * MIB + 1],  # tails before, across and after parts
        [1, 2, 8 * MIB, 8 * MIB + 1, 17 * MIB + 1],  # parts ending exactly on a request
    ],
)
async def test_appends_read_back_and_promote(store: BlobStore, cuts: list[int]) -> None:
    content = os.urandom(cuts[-1])
    sha = hashlib.sha256(content).hexdigest()
    upload_id = secrets.token_hex(16)
    staging = store.staging()
    state = await staging.create(upload_id, len(content))
    assert upload_id in [u async for u in staging.list_ids()]
    state = await append_all(store, upload_id, state, content, cuts)
    assert await staged_bytes(store, upload_id, state, len(content)) == content
    await staging.promote(upload_id, state, sha)
    assert b"".join([c async for c in store.read(sha)]) == content
    assert [u async for u in staging.list_ids()] == []
    await staging.promote(upload_id, state, sha)  # a retry after success changes nothing
    assert await store.size(sha) == len(content)


async def test_bytes_past_the_acknowledged_offset_are_written_over(store: BlobStore) -> None:
    """A request that was cut short (or never acknowledged) leaves bytes behind; the next
    request from the acknowledged offset replaces them."""
    content = os.urandom(10 * MIB + 3)
    wrong = os.urandom(len(content))
    upload_id = secrets.token_hex(16)
    staging = store.staging()
    state = await staging.create(upload_id, len(content))
    state = await append_all(store, upload_id, state, content, [4 * MIB])
    # An unacknowledged request wrote other bytes further on (its state is not kept)...
    await staging.append(upload_id, state, 4 * MIB, len(content), chunks(wrong[4 * MIB : 9 * MIB]))
    # ...and the retry from the acknowledged offset sends the real ones.
    _, state = await staging.append(
        upload_id, state, 4 * MIB, len(content), chunks(content[4 * MIB :])
    )
    assert await staged_bytes(store, upload_id, state, len(content)) == content


async def test_discard_frees_everything_and_is_repeatable(store: BlobStore) -> None:
    content = os.urandom(9 * MIB)
    upload_id = secrets.token_hex(16)
    staging = store.staging()
    state = await staging.create(upload_id, len(content))
    state = await append_all(store, upload_id, state, content, [6 * MIB + 1])
    await staging.discard(upload_id, state)
    await staging.discard(upload_id, state)
    assert [u async for u in staging.list_ids()] == []
    orphan = secrets.token_hex(16)  # staged, then its state lost: discarded by id alone
    await staging.append(orphan, await staging.create(orphan, 10), 0, 10, chunks(b"x" * 5))
    await staging.discard(orphan, {})
    assert [u async for u in staging.list_ids()] == []


async def test_upload_ids_are_never_paths(store: BlobStore) -> None:
    for bad in ("../etc/passwd", "A" * 32, "0" * 31, "0" * 32 + "/x", ""):
        with pytest.raises(BlobNotFoundError):
            await store.staging().create(bad, 10)


async def test_one_writer_at_a_time_on_local_disk(tmp_path: Path) -> None:
    """A writer that lost its lease while stalled still holds the file: a second writer,
    and the promotion of the upload, must wait for it rather than mix bytes with it."""
    store = LocalBlobStore(tmp_path / "blobs", fsync=False)
    await store.open()
    staging = store.staging()
    upload_id = secrets.token_hex(16)
    state = await staging.create(upload_id, 10)
    stalled = asyncio.Event()
    release = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"12345"
        stalled.set()
        await release.wait()

    first = asyncio.create_task(staging.append(upload_id, state, 0, 10, slow()))
    await stalled.wait()
    with pytest.raises(StagingBusyError):
        await staging.append(upload_id, state, 0, 10, chunks(b"abcdefghij"))
    with pytest.raises(StagingBusyError):
        await staging.promote(upload_id, state, "ab" * 32)
    release.set()
    assert (await first)[0] == 5
    await store.close()


async def test_a_promoted_blob_is_new_to_gc_however_old_its_bytes(tmp_path: Path) -> None:
    """gc removes stored content no record knows once it is old enough: a blob promoted
    from bytes sent long ago must not look old in the moment before it is recorded."""
    store = LocalBlobStore(tmp_path / "blobs", fsync=False)
    await store.open()
    staging = store.staging()
    upload_id = secrets.token_hex(16)
    content = b"sent yesterday"
    state = await staging.create(upload_id, len(content))
    await staging.append(upload_id, state, 0, len(content), chunks(content))
    day_ago = time.time() - 86_400
    os.utime(staging.path_for(upload_id), (day_ago, day_ago))  # type: ignore[attr-defined]
    sha = hashlib.sha256(content).hexdigest()
    await staging.promote(upload_id, state, sha)
    (listed,) = [blob async for blob in store.list()]
    assert listed.sha256 == sha
    assert listed.modified.timestamp() > time.time() - 3600  # younger than gc's min age
    await store.close()


async def test_s3_refuses_to_complete_with_a_part_replaced_behind_its_back(
    s3_config: dict[str, Any],
) -> None:
    """A writer that lost its lease may still upload a part after the upload moved on:
    completing then fails (S3 checks each part's ETag) rather than store its bytes."""
    store = s3_store(s3_config)
    await store.open()
    staging = store.staging()
    content = os.urandom(9 * MIB)
    upload_id = secrets.token_hex(16)
    state = await staging.create(upload_id, len(content))
    _, state = await staging.append(upload_id, state, 0, len(content), chunks(content))
    stale = os.urandom(8 * MIB)  # part 1 again, other bytes, state not kept
    await staging.append(upload_id, {**state, "etags": []}, 0, len(content), chunks(stale))
    with pytest.raises(StorageUnavailableError):
        await staging.promote(upload_id, state, hashlib.sha256(content).hexdigest())
    await staging.discard(upload_id, state)
    await store.close()
