"""Content: accepting uploads of registered content, and reading stored content back.

An upload is accepted only for content a file record names (so nothing arrives that no
record would keep alive), only up to the size that record registered and the server's
limit, and is verified by :mod:`putplace.service.ingest` before it is recorded present.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from putplace import telemetry
from putplace.auth import utcnow
from putplace.blobs.base import BlobNotFoundError
from putplace.config import Settings
from putplace.metadata import MetadataStore
from putplace.models import ApiKeyRecord, BlobRecord, BlobState, FileRecord, Scope
from putplace.service import keys, quotas
from putplace.service.errors import NotFoundError, TooLargeError
from putplace.service.files import checked_sha256
from putplace.service.ingest import store_verified, with_idle_timeout
from putplace.service.stores import Stores

log = logging.getLogger("putplace.service")


@dataclass(frozen=True)
class Accepted:
    """The answer to an upload: the content's size, and whether this upload stored it."""

    size: int
    stored: bool


def check_upload_size(size: int, settings: Settings) -> None:
    if size > settings.max_upload_bytes:
        raise TooLargeError(f"upload exceeds the limit of {settings.max_upload_bytes} bytes")


async def needs_content(metadata: MetadataStore, sha256: str) -> bool:
    """True unless a verified copy of this content is stored."""
    blob = await metadata.get_blob(sha256)
    return blob is None or blob.state is not BlobState.present


async def registered_location(
    metadata: MetadataStore,
    sha256: str,
    location: tuple[str, str, str],
    writer: ApiKeyRecord,
) -> FileRecord:
    """The record at *location* (namespace, hostname, filepath) if it holds *sha256* (the
    wire protocol's ``/upload_file``), else :class:`NotFoundError`; 403 for a namespace or
    host *writer* may not write."""
    checked_sha256(sha256)
    namespace, hostname, filepath = location
    keys.authorize_namespace(writer, namespace, Scope.write)
    keys.authorize_hosts(writer, [hostname])
    record = await metadata.get_file(hostname, filepath, namespace)
    if record is None or record.sha256 != sha256:
        raise NotFoundError("File metadata not found: register it with POST /put_file first")
    return record


async def registered_content(metadata: MetadataStore, sha256: str, namespace: str) -> FileRecord:
    """Some record of *namespace* holding *sha256*, else :class:`NotFoundError`."""
    records = await metadata.list_files(
        sha256=checked_sha256(sha256), limit=1, namespaces=[namespace]
    )
    if not records:
        raise NotFoundError(
            "No file record has this content: register it with POST /put_files first"
        )
    return records[0]


async def accept(
    stores: Stores, settings: Settings, record: FileRecord, chunks: AsyncIterable[bytes]
) -> Accepted:
    """Store *chunks* as the content of *record* unless its namespace has sent it before.

    The bytes are verified against the record's hash and size as they stream in; only
    then is the blob recorded present, and the record's namespace recorded as holding it.
    Sent before by the namespace (or its trust domain): the body is not read. Stored, but
    never sent by this namespace: verified and dropped, and answered as stored, so the
    answer tells nobody what other namespaces hold.
    """
    check_upload_size(record.file_size, settings)
    sha256, namespace = record.sha256, record.namespace
    held = not await needs_content(stores.metadata, sha256)
    if held and await proven(stores.metadata, settings, namespace, [sha256]):
        # Sent by this namespace, or another of its trust domain: then it holds it too.
        await stores.metadata.add_possession(namespace, [sha256], utcnow())
        return Accepted(record.file_size, stored=False)
    room = quotas.holding_bytes(
        stores.metadata, stores.coordination, settings.quota(namespace), namespace,
        record.file_size,
    )  # fmt: skip
    async with room:
        size = await store_verified(
            None if held else stores.blobs,
            sha256,
            with_idle_timeout(chunks, settings.upload_idle_timeout_seconds),
            expected_size=record.file_size,
            max_size=settings.max_upload_bytes,
        )
        await record_sent(stores.metadata, namespace, sha256, size, stored=not held)
    return Accepted(size, stored=True)


async def record_sent(
    metadata: MetadataStore, namespace: str, sha256: str, size: int, *, stored: bool
) -> None:
    """Record that *namespace* sent this content, verified: a new blob (*stored*), or
    proof that it holds content already stored."""
    if stored:
        blob = BlobRecord(sha256=sha256, size=size, state=BlobState.present, stored_at=utcnow())
        await metadata.put_blobs([blob], sent_by=namespace)
        telemetry.stored(1, size)
    else:
        await metadata.add_possession(namespace, [sha256], utcnow())


async def proven(
    metadata: MetadataStore, settings: Settings, namespace: str, sha256s: Collection[str]
) -> dict[str, datetime]:
    """The hashes of *sha256s* that *namespace* (or its trust domain) has sent, and when."""
    return await metadata.possessed(settings.trust_domain(namespace), sha256s)


async def stored_blob(
    metadata: MetadataStore, settings: Settings, sha256: str, namespaces: Sequence[str]
) -> BlobRecord:
    """The record of content stored and verified that one of *namespaces* (or their trust
    domains; empty: any) has sent, else :class:`NotFoundError`. A record naming a hash is
    not enough: anyone can name one."""
    domains = {n for namespace in namespaces for n in settings.trust_domain(namespace)}
    if namespaces and not await metadata.possessed(sorted(domains), [checked_sha256(sha256)]):
        raise NotFoundError("Content not found")
    blob = await metadata.get_blob(checked_sha256(sha256))
    if blob is None or blob.state is not BlobState.present:
        raise NotFoundError("Content not found")
    return blob


async def open_content(
    stores: Stores, sha256: str, start: int, length: int
) -> AsyncIterator[bytes]:
    """The bytes ``[start, start + length)`` of stored content.

    Reading starts before this returns, so content recorded but missing from the blob
    store is a clean :class:`NotFoundError` rather than a response cut off mid-way.
    """
    if length == 0:
        return _chain(b"", None)
    stream = stores.blobs.read(sha256, start, length)
    try:
        first = await anext(stream)
    except BlobNotFoundError:
        log.error("blob %s is recorded present but missing from the blob store", sha256)
        raise NotFoundError("Content not found") from None
    except StopAsyncIteration:
        first = b""
    return _chain(first, stream)


async def _chain(first: bytes, rest: AsyncIterator[bytes] | None) -> AsyncIterator[bytes]:
    if first:
        yield first
    if rest is not None:
        async for chunk in rest:
            yield chunk
