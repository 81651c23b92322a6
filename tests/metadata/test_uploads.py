"""The resumable-upload records, the same on every metadata backend."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import replace
from datetime import timedelta

from putplace.auth import utcnow
from putplace.metadata.base import MetadataStore
from putplace.metadata.uploads import Upload
from tests.metadata.conftest import OpenStore


def new_upload(**overrides: object) -> Upload:
    now = utcnow().replace(microsecond=0)
    values: dict[str, object] = {
        "id": secrets.token_hex(16), "namespace": "lab", "length": 100, "offset": 0,
        "created_at": now, "expires_at": now + timedelta(hours=1), "sha256": "ab" * 32,
        "metadata": {"filename": "disk.img", "note": "é"}, "staging": {"s3_upload": "x"},
    }  # fmt: skip
    values.update(overrides)
    return Upload(**values)  # type: ignore[arg-type]


async def test_round_trip(store: MetadataStore) -> None:
    upload = new_upload(parts=("a" * 32, "b" * 32), partial=False)
    await store.create_upload(upload)
    assert await store.get_upload(upload.id) == upload
    assert await store.get_upload("0" * 32) is None
    partial = new_upload(sha256=None, partial=True, metadata={})
    await store.create_upload(partial)
    assert await store.get_upload(partial.id) == partial


async def test_offsets_only_move_forward_once(open_store: OpenStore) -> None:
    """Two processes advancing from the same offset: exactly one wins."""
    first, second = await open_store(), await open_store()
    upload = new_upload()
    await first.create_upload(upload)
    outcomes = await asyncio.gather(
        first.advance_upload(upload.id, 0, replace(upload, offset=40)),
        second.advance_upload(upload.id, 0, replace(upload, offset=60)),
    )
    assert sorted(outcomes) == [False, True]
    stored = await first.get_upload(upload.id)
    assert stored is not None
    assert stored.offset == (40 if outcomes[0] else 60)
    assert not await first.advance_upload(upload.id, 0, replace(upload, offset=100))
    done = replace(stored, offset=100, completed_at=utcnow(), staging={"s3_upload": "y"})
    assert await second.advance_upload(upload.id, stored.offset, done)
    after = await first.get_upload(upload.id)
    assert after is not None
    assert (after.offset, after.complete, after.staging) == (100, True, {"s3_upload": "y"})
    # A complete upload does not move again.
    assert not await first.advance_upload(upload.id, 100, replace(done, completed_at=None))


async def test_expiry_listing_counting_and_deletion(store: MetadataStore) -> None:
    now = utcnow()
    old = new_upload(expires_at=now - timedelta(minutes=5))
    older = new_upload(expires_at=now - timedelta(minutes=10))
    fresh = new_upload(expires_at=now + timedelta(minutes=5))
    done = new_upload(offset=100, completed_at=now)
    for upload in (old, older, fresh, done):
        await store.create_upload(upload)
    assert [u.id for u in await store.expired_uploads(now)] == [older.id, old.id]
    assert [u.id for u in await store.expired_uploads(now, limit=1)] == [older.id]
    assert await store.count_uploads() == 3  # not complete
    assert await store.delete_uploads([old.id, older.id, "0" * 32]) == 2
    assert await store.expired_uploads(now) == []
    assert await store.delete_uploads([]) == 0
    assert await store.get_upload(fresh.id) == fresh


async def test_one_lease_at_a_time(open_store: OpenStore) -> None:
    first, second = await open_store(), await open_store()
    upload = new_upload()
    await first.create_upload(upload)
    now = utcnow()
    later = now + timedelta(seconds=30)
    claims = await asyncio.gather(
        first.claim_upload(upload.id, "a", now, later),
        second.claim_upload(upload.id, "b", now, later),
    )
    assert sorted(claims) == [False, True]
    holder, other = ("a", "b") if claims[0] else ("b", "a")
    assert await first.claim_upload(upload.id, holder, now, later)  # renewal
    assert not await second.claim_upload(upload.id, other, now, later)
    # Advancing needs the lease when a token is given.
    assert not await first.advance_upload(upload.id, 0, replace(upload, offset=10), other)
    assert await first.advance_upload(upload.id, 0, replace(upload, offset=10), holder)
    await second.release_upload(upload.id, other)  # not the holder: changes nothing
    assert not await second.claim_upload(upload.id, other, now, later)
    await first.release_upload(upload.id, holder)
    assert await second.claim_upload(upload.id, other, now, later)
    # A lease not renewed lapses: a crashed holder does not block the upload forever.
    assert await first.claim_upload(upload.id, holder, later, later + timedelta(seconds=30))
    assert await first.get_upload(upload.id) == replace(upload, offset=10)
    assert not await first.claim_upload("0" * 32, holder, now, later)
