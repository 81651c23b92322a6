"""S3 / S3-compatible blob store (AWS, MinIO, Ceph RGW, R2...) on ``obstore``.

Keys are ``{prefix}{sha256[:2]}/{sha256}``.

Commit after verify: a writer streams the bytes straight into an S3 *multipart upload* for
the final key, in parts of :data:`PART_SIZE` (content smaller than one part is held and sent
as a single PUT). S3 shows nothing under a key until its multipart upload is completed, and
the writer completes it only in :meth:`_S3Writer.commit`, which :func:`~.ingest.store_verified`
calls after hash and size matched. Any failure aborts the upload. So the final key holds
either nothing or the whole, verified content; no copy is needed and there is no 5 GiB copy
limit. Two uploads of the same content both complete to the same key with identical bytes.

What a crash leaves behind is an incomplete multipart upload, invisible to readers and
listing. S3's ``ListMultipartUploads`` is not reachable through obstore, so uploads
abandoned by a *dead process* are removed by the bucket lifecycle rule
``AbortIncompleteMultipartUpload`` (see the README); :meth:`S3BlobStore.cleanup_temporary`
aborts those abandoned by *this* process.

Credentials come from the standard AWS chain as object_store implements it (environment,
web identity, ECS/EKS container credentials, EC2 instance profile). Shared profiles
(``~/.aws/credentials``, ``AWS_PROFILE``) are used through boto3 when it is installed.
Credentials are never logged nor shown by :meth:`S3BlobStore.describe`.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import (
    BaseError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from putplace.blobs.base import (
    QUARANTINE_DIR,
    BlobError,
    BlobNotFoundError,
    BlobStore,
    BlobTooLargeError,
    BlobWriter,
    Contents,
    StorageFullError,
    StorageUnavailableError,
    StoredBlob,
    checked_name,
    quarantine_name,
    quarantined_when,
)
from putplace.blobs.s3_staging import S3UploadStaging
from putplace.digest import CHUNK_SIZE, is_sha256_hex

if TYPE_CHECKING:
    from obstore import AsyncWritableFile
    from obstore.store import ClientConfig, RetryConfig, S3Config, S3CredentialProvider

    from putplace.config import Settings

log = logging.getLogger("putplace.blobs.s3")

#: Multipart part size: what one upload holds in memory (times ``1 + UPLOAD_CONCURRENCY``).
_MIB = 1024 * 1024
PART_SIZE = 8 * _MIB
#: Parts of one upload in flight at once.
UPLOAD_CONCURRENCY = 2
#: Objects of one group (a bundle) uploaded at once: S3 has no group commit, but each PUT
#: is atomic, so many small ones in flight are what makes a group fast.
GROUP_CONCURRENCY = 16
#: S3 allows at most this many parts per multipart upload.
MAX_PARTS = 10_000
#: Reads fetch ranges of at most this size, one request each, so no request outlives its
#: timeout however large the blob and however slow the reader.
READ_SEGMENT_SIZE = 64 * 1024 * 1024
#: S3 refuses a single server-side copy of a larger object.
MAX_COPY_SIZE = 5 * 1024**3


#: What S3-compatible stores say when they are out of space: an error code, or HTTP 507
#: as a status (not any "507" in the text: request ids and timings contain digits).
_STORAGE_FULL = re.compile(r"StorageFull|QuotaExceeded|status code: 507\b|\b507 Insufficient")


def _normalise_prefix(prefix: str) -> str:
    """``a//b/`` -> ``a/b/``; empty stays empty."""
    parts = [part for part in prefix.split("/") if part]
    return "/".join(parts) + "/" if parts else ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _translate(exc: Exception, action: str) -> BlobError:
    """An obstore failure as the blob store error the server knows how to answer."""
    if isinstance(exc, FileNotFoundError):
        return BlobNotFoundError(action)
    detail = _first_line(exc)
    log.warning("S3 %s failed: %s", action, detail)
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError):
        return StorageUnavailableError(
            f"S3 refused {action}: check the credentials and IAM permissions"
        )
    if _STORAGE_FULL.search(str(exc)):
        return StorageFullError("the S3 blob store is full")
    return StorageUnavailableError(f"S3 {action} failed")


def _profile_credentials() -> S3CredentialProvider | None:
    """boto3's provider when a shared profile is the only credential source on offer.

    object_store covers environment keys, web identity, container and instance
    credentials itself, but not ``~/.aws/credentials`` / ``AWS_PROFILE``.
    """
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") or env.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        return None
    if env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or env.get(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI"
    ):
        return None
    shared = Path(env.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")).expanduser()
    config = Path(env.get("AWS_CONFIG_FILE", "~/.aws/config")).expanduser()
    if not (env.get("AWS_PROFILE") or shared.is_file() or config.is_file()):
        return None
    try:
        boto3 = importlib.import_module("boto3")  # optional: only for shared profiles
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        if env.get("AWS_PROFILE"):
            raise StorageUnavailableError(
                "AWS_PROFILE is set, but shared profiles need boto3 (pip install boto3)"
            ) from None
        return None
    session = boto3.Session(profile_name=env.get("AWS_PROFILE") or None)
    if session.get_credentials() is None:
        return None
    return Boto3CredentialProvider(session)


class _S3Writer(BlobWriter):
    """One upload: a multipart upload (or a buffered single PUT) of the final key."""

    def __init__(self, store: S3BlobStore, key: str, part_size: int) -> None:
        self._store = store
        self._key = key
        self._part_size = part_size
        self._max_size = part_size * MAX_PARTS
        self._file: AsyncWritableFile | None = obstore.open_writer_async(
            store.object_store,
            key,
            buffer_size=part_size,
            max_concurrency=UPLOAD_CONCURRENCY,
        )
        self._written = 0
        self.started = time.monotonic()

    async def write(self, data: bytes) -> None:
        if self._file is None:
            raise StorageUnavailableError("write after commit or abort")
        self._written += len(data)
        if self._written > self._max_size:
            raise BlobTooLargeError(
                f"blobs larger than {self._max_size} bytes exceed the S3 limit "
                f"of {MAX_PARTS} parts of {self._part_size} bytes"
            )
        try:
            await self._file.write(data)
        except Exception as exc:
            raise _translate(exc, "upload") from exc

    async def commit(self) -> None:
        if self._file is None:
            raise StorageUnavailableError("the upload was already committed or discarded")
        file, self._file = self._file, None
        self._store.forget(self)
        try:
            await file.close()  # completes the multipart upload: the key appears, whole
        except Exception as exc:
            raise _translate(exc, "upload") from exc

    async def abort(self) -> None:
        if self._file is None:
            return
        file, self._file = self._file, None
        self._store.forget(self)
        try:  # leaving the context with an error aborts the multipart upload
            await file.__aexit__(RuntimeError, RuntimeError("upload discarded"), None)
        except Exception as exc:  # the lifecycle rule removes what this could not
            log.warning("could not abort S3 upload of %s: %s", self._key, _first_line(exc))


class S3BlobStore(BlobStore):
    kind = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        sse: str | None = None,
        sse_kms_key_id: str | None = None,
        allow_http: bool = False,
        part_size: int = PART_SIZE,
        read_segment_size: int = READ_SEGMENT_SIZE,
        max_retries: int = 5,
        retry_timeout: timedelta = timedelta(seconds=30),
    ) -> None:
        self.bucket = bucket
        self.prefix = _normalise_prefix(prefix)
        self.endpoint_url = endpoint_url
        self.region = region
        self.part_size = part_size
        self.read_segment_size = read_segment_size
        config: S3Config = {}
        if endpoint_url:
            config["endpoint"] = endpoint_url
        if region:
            config["region"] = region
        if sse:
            config["server_side_encryption"] = sse
        if sse_kms_key_id:
            config["sse_kms_key_id"] = sse_kms_key_id
        credentials = _profile_credentials()
        client: ClientConfig = {
            "allow_http": allow_http,
            "connect_timeout": timedelta(seconds=5),
            "timeout": timedelta(minutes=10),  # one part or one read segment
            "read_timeout": timedelta(seconds=60),  # a stalled connection
        }
        retry: RetryConfig = {"max_retries": max_retries, "retry_timeout": retry_timeout}
        self.object_store = S3Store(
            bucket,
            config=config,
            client_options=client,
            retry_config=retry,
            credential_provider=credentials,
        )
        # ping must answer quickly even when the endpoint is gone: no retries, short timeouts
        self._probe = S3Store(
            bucket,
            config=config,
            client_options={**client, "connect_timeout": timedelta(seconds=3),
                            "timeout": timedelta(seconds=10)},
            retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=10)},
            credential_provider=credentials,
        )  # fmt: skip
        self._writers: set[_S3Writer] = set()
        self._sse, self._sse_kms_key_id = sse, sse_kms_key_id
        self._staging = S3UploadStaging(self, self._boto3_client)

    @classmethod
    def from_settings(cls, settings: Settings) -> S3BlobStore:
        """The store named by ``settings.storage_url`` (``s3://bucket/prefix``)."""
        parts = urlsplit(settings.storage_url)
        return cls(
            parts.netloc,
            parts.path,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            sse=settings.s3_sse,
            sse_kms_key_id=settings.s3_sse_kms_key_id,
            allow_http=settings.s3_allow_http,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "bucket": self.bucket,
            "prefix": self.prefix,
            "endpoint": self.endpoint_url,
            "region": self.region,
        }

    def key_for(self, sha256: str) -> str:
        checked_name(sha256)
        return f"{self.prefix}{sha256[:2]}/{sha256}"

    def encryption_args(self) -> dict[str, str]:
        """Server-side encryption as boto3's arguments, for objects it writes."""
        args = {"ServerSideEncryption": self._sse} if self._sse else {}
        if self._sse_kms_key_id:
            args["SSEKMSKeyId"] = self._sse_kms_key_id
        return args

    def staging(self) -> S3UploadStaging:
        return self._staging

    def _boto3_client(self) -> Any:
        """A boto3 S3 client configured like the obstore one (endpoint, region, the AWS
        credential chain), for the multipart calls obstore does not expose."""
        boto3 = importlib.import_module("boto3")
        from botocore.config import Config

        config = Config(retries={"max_attempts": 5, "mode": "standard"},
                        s3={"addressing_style": "path"} if self.endpoint_url else {})  # fmt: skip
        return boto3.Session(profile_name=os.environ.get("AWS_PROFILE") or None).client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config
        )

    def forget(self, writer: _S3Writer) -> None:
        self._writers.discard(writer)

    async def open(self) -> None:
        try:
            await obstore.list_with_delimiter_async(self.object_store, self.prefix or None)
        except Exception as exc:
            raise _translate(exc, f"listing of bucket {self.bucket!r}") from exc

    async def close(self) -> None:
        for writer in list(self._writers):
            await writer.abort()

    async def ping(self) -> bool:
        try:
            await obstore.list_with_delimiter_async(self._probe, self.prefix or None)
        except Exception as exc:
            log.warning("S3 ping failed: %s", _first_line(exc))
            return False
        return True

    async def begin(self, sha256: str, size_hint: int | None = None) -> BlobWriter:
        part_size = self.part_size
        if size_hint is not None and size_hint > part_size * MAX_PARTS:
            # Larger parts for huge blobs, so they fit in S3's 10,000 parts (whole MiB).
            part_size = -(-size_hint // (MAX_PARTS * _MIB)) * _MIB
        writer = _S3Writer(self, self.key_for(sha256), part_size)  # no request yet
        self._writers.add(writer)
        return writer

    async def put_many(self, contents: Contents) -> None:
        """One atomic PUT per content, :data:`GROUP_CONCURRENCY` at a time. A PUT either
        makes the whole object visible or nothing, so a failure leaves no partial blob."""
        slots = asyncio.Semaphore(GROUP_CONCURRENCY)

        async def put(key: str, data: bytes | memoryview) -> None:
            async with slots:
                try:
                    await obstore.put_async(
                        self.object_store, key, data,
                        chunk_size=self.part_size, max_concurrency=UPLOAD_CONCURRENCY,
                    )  # fmt: skip
                except Exception as exc:
                    raise _translate(exc, "upload") from exc

        keys = [self.key_for(sha256) for sha256, _ in contents]  # all valid, or none sent
        outcomes = await asyncio.gather(
            *(put(key, data) for key, (_, data) in zip(keys, contents, strict=True)),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def size(self, sha256: str) -> int | None:
        key = self.key_for(sha256)
        try:
            meta = await obstore.head_async(self.object_store, key)
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise _translate(exc, "head") from exc
        return int(meta["size"])

    async def read(
        self, sha256: str, start: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        key = self.key_for(sha256)
        size = await self.size(sha256)
        if size is None:
            raise BlobNotFoundError(sha256)
        stop = size if length is None else min(size, start + length)
        position = start
        while position < stop:
            end = min(stop, position + self.read_segment_size)
            try:
                result = await obstore.get_async(
                    self.object_store, key, options={"range": (position, end)}
                )
                async for chunk in result.stream(min_chunk_size=CHUNK_SIZE):
                    position += len(chunk)
                    yield chunk
            except FileNotFoundError:
                raise BlobNotFoundError(sha256) from None
            except BaseError as exc:
                raise _translate(exc, "download") from exc
            if position < end:
                raise StorageUnavailableError("S3 download ended early")

    async def delete(self, sha256: str) -> bool:
        key = self.key_for(sha256)
        if await self.size(sha256) is None:
            return False
        try:
            await obstore.delete_async(self.object_store, key)
        except Exception as exc:
            raise _translate(exc, "delete") from exc
        return True

    async def list(self) -> AsyncIterator[StoredBlob]:
        stream = obstore.list(self.object_store, self.prefix or None, chunk_size=1000)
        try:
            async for batch in stream:
                for meta in batch:
                    name = meta["path"][len(self.prefix) :]
                    shard, _, sha256 = name.partition("/")
                    if is_sha256_hex(sha256) and shard == sha256[:2]:
                        yield StoredBlob(sha256, int(meta["size"]), meta["last_modified"])
        except BaseError as exc:
            raise _translate(exc, "listing") from exc

    async def cleanup_temporary(self, older_than_seconds: float) -> int:
        """Abort this process's uploads that were begun that long ago and never finished.

        Incomplete multipart uploads left by processes that died are not reachable through
        obstore: the bucket's ``AbortIncompleteMultipartUpload`` lifecycle rule removes them.
        """
        cutoff = time.monotonic() - older_than_seconds
        stale = [writer for writer in self._writers if writer.started <= cutoff]
        for writer in stale:
            await writer.abort()
        return len(stale)

    async def quarantine(self, sha256: str) -> bool:
        key = self.key_for(sha256)
        size = await self.size(sha256)
        if size is None:
            return False
        target = f"{self.prefix}{QUARANTINE_DIR}/{quarantine_name(sha256)}"
        try:
            if size <= MAX_COPY_SIZE:
                await obstore.copy_async(self.object_store, key, target)
            else:  # too large for one server-side copy: stream it through, in parts
                source = await obstore.get_async(self.object_store, key)
                await obstore.put_async(
                    self.object_store,
                    target,
                    source.stream(min_chunk_size=self.part_size),
                    chunk_size=self.part_size,
                    max_concurrency=UPLOAD_CONCURRENCY,
                )
            await obstore.delete_async(self.object_store, key)
        except FileNotFoundError:
            return False
        except Exception as exc:
            raise _translate(exc, "quarantine") from exc
        return True

    async def quarantined_since(self, sha256: str) -> datetime | None:
        # Listing is by path (not by string prefix): the few copies put aside, filtered.
        stream = obstore.list(self.object_store, f"{self.prefix}{QUARANTINE_DIR}", chunk_size=1000)
        newest: datetime | None = None
        try:
            async for batch in stream:
                for meta in batch:
                    when = quarantined_when(meta["path"].rpartition("/")[2], sha256)
                    if when is not None and (newest is None or when > newest):
                        newest = when
        except BaseError as exc:
            raise _translate(exc, "listing") from exc
        return newest
