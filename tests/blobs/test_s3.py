"""What only the S3 store does: settings, key layout, encryption, failures, limits."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from putplace.blobs import create_blob_store
from putplace.blobs import s3 as s3_module
from putplace.blobs.base import BlobTooLargeError, StorageFullError, StorageUnavailableError
from putplace.blobs.s3 import S3BlobStore
from putplace.config import Settings
from putplace.service.ingest import store_verified
from tests.blobs.conftest import s3_store
from tests.support.s3 import s3_client
from tests.support.servers import free_port

MiB = 1024 * 1024


async def chunks(data: bytes, step: int = MiB) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), step):
        yield data[offset : offset + step]


@pytest.mark.parametrize(
    ("url", "prefix"),
    [
        ("s3://bucket", ""),
        ("s3://bucket/", ""),
        ("s3://bucket/putplace", "putplace/"),
        ("s3://bucket//a//b/", "a/b/"),
    ],
)
def test_storage_url_selects_bucket_and_normalised_prefix(url: str, prefix: str) -> None:
    store = create_blob_store(Settings(storage_url=url, s3_region="eu-west-1"))
    assert isinstance(store, S3BlobStore)
    assert store.bucket == "bucket"
    assert store.prefix == prefix
    name = hashlib.sha256(b"x").hexdigest()
    assert store.key_for(name) == f"{prefix}{name[:2]}/{name}"


def test_describe_shows_location_never_credentials(s3_config: dict[str, Any]) -> None:
    store = s3_store(s3_config)
    described = store.describe()
    assert described == {
        "type": "s3",
        "bucket": s3_config["bucket"],
        "prefix": store.prefix,
        "endpoint": s3_config["s3_endpoint_url"],
        "region": s3_config["s3_region"],
    }
    text = repr(described)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        if os.environ.get(name):
            assert os.environ[name] not in text


async def test_blob_lives_under_its_documented_key(s3_config: dict[str, Any]) -> None:
    store = s3_store(s3_config)
    data = b"where is it?"
    name = hashlib.sha256(data).hexdigest()
    await store_verified(store, name, chunks(data))
    body = s3_client(s3_config).get_object(
        Bucket=store.bucket, Key=f"{store.prefix}{name[:2]}/{name}"
    )
    assert body["Body"].read() == data


@pytest.mark.parametrize("size", [100, 9 * MiB])
async def test_server_side_encryption_is_requested(s3_config: dict[str, Any], size: int) -> None:
    store = s3_store(s3_config, s3_sse="AES256")
    data = os.urandom(size)
    name = hashlib.sha256(data).hexdigest()
    await store_verified(store, name, chunks(data))
    head = s3_client(s3_config).head_object(Bucket=store.bucket, Key=store.key_for(name))
    assert head.get("ServerSideEncryption") == "AES256"


async def test_unreachable_endpoint_is_storage_unavailable(s3_config: dict[str, Any]) -> None:
    store = S3BlobStore(
        s3_config["bucket"],
        "dead/",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region="us-east-1",
        allow_http=True,
        max_retries=1,
        retry_timeout=timedelta(seconds=2),
    )
    name = hashlib.sha256(b"x").hexdigest()
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError):
        await store.size(name)
    with pytest.raises(StorageUnavailableError):
        await store.open()
    with pytest.raises(StorageUnavailableError):
        await anext(store.read(name))
    with pytest.raises(StorageUnavailableError):
        await store_verified(store, name, chunks(b"x"))
    assert time.monotonic() - started < 30


async def test_missing_bucket_fails_open_and_ping(s3_config: dict[str, Any]) -> None:
    store = s3_store({**s3_config, "bucket": "putplace-no-such-bucket"})
    assert await store.ping() is False
    with pytest.raises(StorageUnavailableError):
        await store.open()


async def test_blob_beyond_the_part_limit_is_refused_and_discarded(
    s3_config: dict[str, Any], leftovers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = s3_store(s3_config)
    monkeypatch.setattr(s3_module, "MAX_PARTS", 1)  # one 8 MiB part allowed
    data = os.urandom(9 * MiB)
    name = hashlib.sha256(data).hexdigest()
    with pytest.raises(BlobTooLargeError):
        await store_verified(store, name, chunks(data))
    assert not await store.exists(name)
    assert await leftovers(store) == []


async def test_huge_expected_size_gets_larger_parts(s3_config: dict[str, Any]) -> None:
    store = s3_store(s3_config)
    name = "0" * 64
    normal = await store.begin(name, size_hint=5 * MiB)
    huge = await store.begin(name, size_hint=s3_module.MAX_PARTS * s3_module.PART_SIZE + 1)
    assert normal._part_size == s3_module.PART_SIZE  # type: ignore[attr-defined]
    assert huge._part_size == s3_module.PART_SIZE + MiB  # type: ignore[attr-defined]
    for writer in (normal, huge):
        await writer.abort()


async def test_close_discards_unfinished_uploads(s3_config: dict[str, Any], leftovers: Any) -> None:
    store = s3_store(s3_config)
    data = os.urandom(9 * MiB)
    writer = await store.begin(hashlib.sha256(data).hexdigest())
    await writer.write(data)
    await store.close()
    assert await leftovers(store) == []


async def test_quarantine_of_blobs_too_large_for_one_copy_streams_them(
    s3_config: dict[str, Any], leftovers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("putplace.blobs.s3.MAX_COPY_SIZE", MiB)  # stands in for 5 GiB
    store = s3_store(s3_config)
    data = os.urandom(9 * MiB + 5)
    name = hashlib.sha256(data).hexdigest()
    await store_verified(store, name, chunks(data))
    assert await store.quarantine(name) is True
    assert not await store.exists(name)
    [held] = await leftovers(store)
    assert ".quarantine/" in held
    body = s3_client(s3_config).get_object(Bucket=store.bucket, Key=held)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == name


@pytest.mark.parametrize(
    ("message", "full"),
    [
        ("Server returned non-2xx status code: 507 Insufficient Storage", True),
        ("<Code>QuotaExceeded</Code>", True),
        ("Server returned non-2xx status code: 404 Not Found (request 5072ab) in 31.507ms", False),
        ("Server returned non-2xx status code: 500 Internal Server Error", False),
    ],
)
def test_only_an_out_of_space_answer_reads_as_full(message: str, full: bool) -> None:
    translated = s3_module._translate(RuntimeError(message), "upload")
    assert isinstance(translated, StorageFullError) is full
    assert isinstance(translated, StorageUnavailableError) is not full
