"""``gc`` finds content in the blob store that no record knows: bytes written by an upload
whose server died before recording them. Run on every stack."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

from putplace.auth import utcnow
from putplace.config import Settings
from putplace.models import BlobRecord, FileMetadata
from putplace.service.ingest import store_verified
from putplace.service.maintenance import collect_garbage
from putplace.service.stores import Stores, open_stores
from tests.support.payloads import metadata


async def once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def stored_unrecorded(stores: Stores, data: bytes) -> str:
    """Bytes in the blob store, as a crash between writing and recording leaves them."""
    sha256 = hashlib.sha256(data).hexdigest()
    await store_verified(stores.blobs, sha256, once(data), expected_size=len(data))
    return sha256


async def test_gc_collects_blobs_no_record_knows(settings: Settings) -> None:
    async with open_stores(settings) as stores:
        orphan = await stored_unrecorded(stores, b"written, then the server died")
        recorded = await stored_unrecorded(stores, b"written and recorded")
        await stores.metadata.put_blob(BlobRecord(sha256=recorded, size=20, stored_at=utcnow()))
        referenced = FileMetadata(**metadata(b"written and recorded"))
        await stores.metadata.put_files([referenced], utcnow())
        young = await collect_garbage(stores.metadata, stores.blobs)  # default minimum age
        assert young.orphaned == []  # may be an upload about to record its blob
        listed = await collect_garbage(stores.metadata, stores.blobs, min_age_seconds=0)
        assert listed.orphaned == [orphan]
        assert listed.deleted == []
        assert await stores.blobs.exists(orphan)
        swept = await collect_garbage(stores.metadata, stores.blobs, delete=True, min_age_seconds=0)
        assert swept.orphaned == [orphan]
        assert orphan in swept.deleted
        assert not await stores.blobs.exists(orphan)
        assert await stores.blobs.exists(recorded)
        assert swept.deleted == [orphan]
