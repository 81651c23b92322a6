"""A fresh, opened blob store per test, once per backend, and a look behind its back."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import obstore
import pytest

from putplace.blobs.base import BlobStore
from putplace.blobs.local import LocalBlobStore
from putplace.blobs.packs import INDEX_NAME, PACK_DIR, pack_name
from putplace.blobs.s3 import S3BlobStore
from putplace.config import Settings
from tests.support.s3 import s3_client

BACKENDS = ["local", "s3"]

#: Small read segments for the S3 store under test, so ranged reads cross segment edges.
TEST_READ_SEGMENT = 3 * 1024 * 1024 + 17


def s3_store(config: dict[str, Any], **overrides: Any) -> S3BlobStore:
    """An S3 store on the test S3 under a fresh prefix, built the way the server does."""
    values = {k: v for k, v in config.items() if k != "bucket"}
    values.update(overrides)
    settings = Settings(storage_url=f"s3://{config['bucket']}/t-{uuid.uuid4().hex[:12]}/", **values)
    return S3BlobStore.from_settings(settings)


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    blobs: BlobStore
    if request.param == "local":
        blobs = LocalBlobStore(tmp_path / "blobs", fsync=False)
    else:
        blobs = s3_store(request.getfixturevalue("s3_config"))
        blobs.read_segment_size = TEST_READ_SEGMENT
    await blobs.open()
    try:
        yield blobs
    finally:
        await blobs.close()
        if isinstance(blobs, S3BlobStore):  # leave a real test bucket as found
            keys = [m["path"] for b in obstore.list(blobs.object_store, blobs.prefix) for m in b]
            if keys:
                await obstore.delete_async(blobs.object_store, keys)


@pytest.fixture
def leftovers(request: pytest.FixtureRequest) -> Any:
    """``await leftovers(store)``: everything the store holds, final or not.

    Local: every file under the root, except that a pack file counts as the blobs its
    index points into (``pack:<sha256>``) and the index itself is the store's own
    bookkeeping; a pack no index row points to is a leftover (``packs/<name>``). S3:
    every object under the prefix plus every multipart upload still open under it (what a
    user would pay for and never see).
    """

    async def look(blobs: BlobStore) -> list[str]:
        if isinstance(blobs, LocalBlobStore):
            index = blobs.root / PACK_DIR / INDEX_NAME
            with closing(sqlite3.connect(index)) as db:
                packed = db.execute("SELECT digest, pack FROM packed").fetchall()
            used = {pack_name(pack) for _, pack in packed}
            files = [
                str(p.relative_to(blobs.root))
                for p in blobs.root.rglob("*")
                if p.is_file() and not p.name.startswith(INDEX_NAME) and p.name not in used
            ]
            return sorted(files + [f"pack:{digest.hex()}" for digest, _ in packed])
        assert isinstance(blobs, S3BlobStore)
        found = [
            meta["path"]
            for batch in obstore.list(blobs.object_store, blobs.prefix)
            for meta in batch
        ]
        client = s3_client(request.getfixturevalue("s3_config"))
        uploads = client.list_multipart_uploads(Bucket=blobs.bucket, Prefix=blobs.prefix)
        found += [f"multipart:{u['Key']}" for u in uploads.get("Uploads", [])]
        return sorted(found)

    return look
