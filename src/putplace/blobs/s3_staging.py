"""Resumable uploads on S3: each upload is an S3 multipart upload of a staging key, so
the API servers need no local disk and any of them can continue an upload another began.

S3 parts must be at least 5 MiB (except the last) and at most 10,000, while a tus
request may carry any number of bytes. Part *n* always holds the bytes
``[(n-1)*P, n*P)`` of the upload (P fixed when it is created), so a part sent twice
holds the same bytes and simply replaces itself. Bytes past the last whole part are
kept as a small *tail object* named by the offset it ends at; the next request reads it
back and continues the part. Nothing here is in memory between requests.

The multipart API (upload ids, parts, listing unfinished uploads) is not exposed by
obstore, so this uses boto3 (on worker threads) beside the store's obstore client.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import obstore

from putplace.blobs.base import BlobNotFoundError, StorageUnavailableError
from putplace.blobs.local_staging import UPLOAD_ID, checked_upload_id
from putplace.blobs.staging import StagingState, UploadStaging
from putplace.digest import CHUNK_SIZE

if TYPE_CHECKING:
    from putplace.blobs.s3 import S3BlobStore

T = TypeVar("T")

UPLOADS_PREFIX = ".uploads/"
_MIB = 1024 * 1024
#: S3's smallest part (all but the last) and most parts per upload.
MIN_PART = 5 * _MIB
MAX_PARTS = 10_000


def part_size_for(length: int, preferred: int) -> int:
    """*preferred* (at least S3's minimum), grown in whole MiB until *length* fits in
    :data:`MAX_PARTS` parts."""
    size = max(preferred, MIN_PART)
    if length > size * MAX_PARTS:
        size = -(-length // (MAX_PARTS * _MIB)) * _MIB
    return size


class S3UploadStaging(UploadStaging):
    def __init__(self, store: S3BlobStore, client_factory: Callable[[], Any]) -> None:
        self._store = store
        self._client_factory = client_factory
        self._client: Any = None
        self._prefix = f"{store.prefix}{UPLOADS_PREFIX}"
        self._extra: dict[str, str] = store.encryption_args()

    async def _call(self, name: str, **kwargs: Any) -> Any:
        """One boto3 call on a worker thread; S3 failures as the blob store's errors."""
        if self._client is None:
            self._client = self._client_factory()
        method = getattr(self._client, name)
        try:
            return await asyncio.to_thread(functools.partial(method, Bucket=self._store.bucket,
                                                             **kwargs))  # fmt: skip
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code in ("NoSuchUpload", "NoSuchKey", "404"):
                raise BlobNotFoundError(f"staged upload: {code}") from exc
            raise StorageUnavailableError(f"S3 {name} failed: {code or exc}") from exc

    def _data_key(self, upload_id: str) -> str:
        return f"{self._prefix}{checked_upload_id(upload_id)}/data"

    def _tail_key(self, upload_id: str, end: int) -> str:
        return f"{self._prefix}{checked_upload_id(upload_id)}/tail.{end}"

    async def create(self, upload_id: str, length: int) -> StagingState:
        answer = await self._call(
            "create_multipart_upload", Key=self._data_key(upload_id), **self._extra
        )
        return {
            "s3_upload": answer["UploadId"],
            "part_size": part_size_for(length, self._store.part_size),
        }

    async def _get(self, key: str) -> bytes:
        try:
            result = await obstore.get_async(self._store.object_store, key)
            return bytes(await result.bytes_async())
        except FileNotFoundError:
            raise BlobNotFoundError(key) from None
        except Exception as exc:
            raise StorageUnavailableError(f"S3 read of a staged upload failed: {exc}") from exc

    async def _put(self, key: str, data: bytes) -> None:
        await self._call("put_object", Key=key, Body=data, **self._extra)

    async def _delete(self, key: str) -> None:
        # A stale tail left behind is removed with the upload.
        with contextlib.suppress(Exception):
            await obstore.delete_async(self._store.object_store, key)

    async def append(
        self,
        upload_id: str,
        state: StagingState,
        offset: int,
        length: int,
        chunks: AsyncIterable[bytes],
        *,
        batch: int | None = None,  # parts are the upload's own size
    ) -> tuple[int, StagingState]:
        if "s3_upload" not in state:  # its creation was cut short by a crash
            raise BlobNotFoundError("the upload's multipart upload was never recorded")
        part = int(state["part_size"])
        etags: list[str] = list(state.get("etags", []))
        await self._drop_stale_tails(upload_id, offset)
        whole = offset // part  # parts done
        buffer = bytearray()
        if offset % part:
            buffer += await self._get(self._tail_key(upload_id, offset))
            if len(buffer) != offset % part:
                raise StorageUnavailableError("staged tail does not match the upload's offset")
        position = offset

        async def send_part(data: bytes) -> None:
            nonlocal whole
            answer = await self._call(
                "upload_part", Key=self._data_key(upload_id), UploadId=state["s3_upload"],
                PartNumber=whole + 1, Body=data,
            )  # fmt: skip
            # Kept, and given back when completing: S3 then refuses to complete with a
            # part that someone else (a writer that lost its lease) replaced since.
            del etags[whole:]
            etags.append(answer["ETag"])
            whole += 1

        async for chunk in chunks:
            buffer += chunk
            position += len(chunk)
            while len(buffer) >= part:
                await send_part(bytes(buffer[:part]))
                del buffer[:part]
        if buffer and position == length:
            await send_part(bytes(buffer))  # the last part may be small
        elif buffer:
            await self._put(self._tail_key(upload_id, position), bytes(buffer))
        return position, {**state, "etags": etags}

    async def _drop_stale_tails(self, upload_id: str, offset: int) -> None:
        """Delete tails that end before *offset*: the acknowledged offset only moves
        forward, so no request will read them again. (A request's own old tail is not
        deleted by that request: it may yet be refused, and the tail still needed.)"""
        prefix = f"{self._prefix}{checked_upload_id(upload_id)}/tail."
        async for batch in obstore.list(self._store.object_store, prefix, chunk_size=1000):
            for meta in batch:
                end = meta["path"].rpartition(".")[2]
                if end.isdigit() and int(end) < offset:
                    await self._delete(meta["path"])

    async def _completed(self, upload_id: str, state: StagingState) -> str:
        """The staging key, whole: the multipart upload completed (once; again is a no-op)."""
        key = self._data_key(upload_id)
        etags: list[str] = list(state.get("etags", []))
        if not etags:  # an empty upload: S3 will not complete one without parts
            with contextlib.suppress(BlobNotFoundError):
                await self._call("abort_multipart_upload", Key=key, UploadId=state["s3_upload"])
            await self._put(key, b"")
            return key
        parts = [{"PartNumber": n, "ETag": etag} for n, etag in enumerate(etags, start=1)]
        try:  # still open? (Completing twice is an error on some S3 implementations.)
            await self._call("list_parts", Key=key, UploadId=state["s3_upload"], MaxParts=1)
        except BlobNotFoundError:  # completed before (a retry): the object is there
            return key
        with contextlib.suppress(BlobNotFoundError):  # completed meanwhile
            await self._call(
                "complete_multipart_upload", Key=key, UploadId=state["s3_upload"],
                MultipartUpload={"Parts": parts},
            )  # fmt: skip
        return key

    async def read(self, upload_id: str, state: StagingState, length: int) -> AsyncIterator[bytes]:
        key = await self._completed(upload_id, state)
        try:
            result = await obstore.get_async(self._store.object_store, key)
            async for chunk in result.stream(min_chunk_size=CHUNK_SIZE):
                yield bytes(chunk)
        except FileNotFoundError:
            raise BlobNotFoundError(key) from None

    async def promote(self, upload_id: str, state: StagingState, sha256: str) -> None:
        key = await self._completed(upload_id, state)
        target = self._store.key_for(sha256)
        if self._client is None:
            self._client = self._client_factory()
        copy = functools.partial(
            self._client.copy, {"Bucket": self._store.bucket, "Key": key},
            self._store.bucket, target, ExtraArgs=self._extra or None,
        )  # fmt: skip  # boto3's managed copy: server side, in parts when over 5 GiB
        try:
            await asyncio.to_thread(copy)
        except Exception as exc:
            if await self._store.size(sha256) is not None:  # promoted before (a retry)
                return
            raise StorageUnavailableError(f"S3 copy of a finished upload failed: {exc}") from exc
        await self.discard(upload_id, state)

    async def discard(self, upload_id: str, state: StagingState) -> None:
        key = self._data_key(upload_id)
        if "s3_upload" in state:
            ids = [state["s3_upload"]]
        else:  # an orphan gc found: whatever multipart uploads its key has
            page = await self._call("list_multipart_uploads", Prefix=key)
            ids = [u["UploadId"] for u in page.get("Uploads", []) if u["Key"] == key]
        for s3_upload in ids:
            with contextlib.suppress(BlobNotFoundError):
                await self._call("abort_multipart_upload", Key=key, UploadId=s3_upload)
        prefix = f"{self._prefix}{checked_upload_id(upload_id)}/"
        async for batch in obstore.list(self._store.object_store, prefix, chunk_size=1000):
            for meta in batch:
                await self._delete(meta["path"])

    async def list_ids(self) -> AsyncIterator[str]:
        """Uploads with staged objects or an unfinished multipart upload under the prefix
        (including those of processes that died)."""
        seen: set[str] = set()
        async for batch in obstore.list(self._store.object_store, self._prefix, chunk_size=1000):
            for meta in batch:
                name = meta["path"][len(self._prefix) :].partition("/")[0]
                if UPLOAD_ID.fullmatch(name) and name not in seen:
                    seen.add(name)
                    yield name
        marker: dict[str, str] = {}
        while True:
            page = await self._call("list_multipart_uploads", Prefix=self._prefix, **marker)
            for upload in page.get("Uploads", []):
                name = upload["Key"][len(self._prefix) :].partition("/")[0]
                if UPLOAD_ID.fullmatch(name) and name not in seen:
                    seen.add(name)
                    yield name
            if not page.get("IsTruncated"):
                return
            marker = {"KeyMarker": page["NextKeyMarker"],
                      "UploadIdMarker": page["NextUploadIdMarker"]}  # fmt: skip
