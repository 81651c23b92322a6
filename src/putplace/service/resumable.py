"""Resumable uploads (the tus 1.0 protocol's rules, whatever carries them).

An upload declares the content it will deliver (its SHA-256, registered by a file record
like any upload) and its length. Bytes arrive over any number of requests, to any API
process, each continuing at the acknowledged offset; an offset is acknowledged only once
the bytes before it are durable in the staging area (:mod:`putplace.blobs.staging`).
When the last byte arrives the whole content is verified against the declared hash and
only then becomes a blob; a mismatch discards it. Partial uploads sent in parallel are
joined by a final upload, which is verified the same way.

The hash of the bytes so far is kept in this process while requests arrive in order, so a
single stream is verified without reading anything back. An upload continued by another
process (or after a restart) is verified by reading the staged bytes back instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

from putplace.auth import utcnow
from putplace.batches import LARGE_BATCHES
from putplace.blobs.base import BlobNotFoundError
from putplace.blobs.local_staging import UPLOAD_ID
from putplace.blobs.staging import StagingBusyError
from putplace.config import Settings
from putplace.digest import CHECKSUM_ALGORITHMS, INLINE_WORK_LIMIT, Checksum, new_checksum
from putplace.metadata.base import MAX_PAGE
from putplace.metadata.uploads import Upload
from putplace.models import ApiKeyRecord, Scope
from putplace.service import keys, quotas
from putplace.service.content import (
    check_upload_size,
    needs_content,
    proven,
    record_sent,
    registered_content,
    registered_location,
)
from putplace.service.errors import (
    BusyError,
    ChecksumMismatchError,
    ConflictError,
    ContentMismatchError,
    ForbiddenError,
    GoneError,
    HashMismatchError,
    InvalidInputError,
    NotFoundError,
    SizeMismatchError,
    TooLargeError,
)
from putplace.service.files import checked_sha256
from putplace.service.ingest import store_verified
from putplace.service.quotas import QuotaExceededError
from putplace.service.stores import Stores

#: Parts one final upload may join.
MAX_PARTS = 10_000
#: Later than any expiry: every upload expires by then.
LATEST = datetime(9999, 12, 31, tzinfo=UTC)
#: How long a request's hold on an upload lasts unless renewed, and how often it is
#: renewed while the request lives. After a crash the upload is free again this much
#: later.
LEASE_SECONDS = 10
LEASE_RENEW_SECONDS = 3
#: What a request refused because another holds the upload is told to wait.
BUSY_RETRY_SECONDS = 2
_BUSY = "another request is writing this upload: try again shortly"
#: Bytes of a request hashed at once on a worker thread.
HASH_BATCH = 1024 * 1024
#: Running hashes kept per process: one per upload in flight here.
_MAX_RUNNING = 4096
WHOLE = "whole"
"""``Upload-Metadata`` key of a partial upload that a final upload will join alone: it
is hashed as it arrives, and becomes the blob without being read back."""


class Body(Protocol):
    """A request body that ends, rather than fails, when the client goes away or stops
    sending: ``cut_short`` then says so (``client_gone``: it went away), and what arrived
    is kept."""

    cut_short: bool
    client_gone: bool

    def __aiter__(self) -> AsyncIterator[bytes]: ...


class _Running:
    """The hash of an upload's first ``offset`` bytes."""

    def __init__(self) -> None:
        self.offset = 0
        self.hasher = hashlib.sha256()


class RunningHashes:
    """Per API process: the hash of each upload in flight here, so far. Losing one (a
    restart, a request served by another process) costs a read-back when it completes."""

    def __init__(self, limit: int = _MAX_RUNNING) -> None:
        self._limit = limit
        self._hashes: OrderedDict[str, _Running] = OrderedDict()  # least recent first

    def take(self, upload: Upload) -> _Running | None:
        """The running hash of *upload* if it covers exactly its acknowledged bytes. A
        partial upload is hashed only when it is announced as the whole content
        (:data:`WHOLE`): the hash of one part of several proves nothing."""
        found = self._hashes.pop(upload.id, None)
        if upload.partial and WHOLE not in upload.metadata:
            return None
        if upload.offset == 0:
            return _Running()
        return found if found is not None and found.offset == upload.offset else None

    def keep(self, upload_id: str, running: _Running) -> None:
        self._hashes[upload_id] = running
        while len(self._hashes) > self._limit:
            self._hashes.popitem(last=False)


def _expiry(settings: Settings, now: datetime) -> datetime:
    return now + timedelta(seconds=settings.upload_expiry_seconds)


def checksum_hasher(algorithm: str) -> Checksum:
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise InvalidInputError(
            f"unsupported checksum algorithm {algorithm!r}: use one of "
            + ", ".join(CHECKSUM_ALGORITHMS)
        )
    return new_checksum(algorithm)


async def create(
    stores: Stores,
    settings: Settings,
    key: ApiKeyRecord,
    namespace: str,
    length: int,
    metadata: Mapping[str, str],
) -> Upload:
    """A new upload of the content *metadata* names (``sha256``, optionally ``hostname``
    and ``filepath`` of its file record). Content the namespace has sent before is
    answered at once, complete, with nothing to send."""
    keys.authorize_namespace(key, namespace, Scope.write)
    sha256 = await _registered(stores, settings, key, namespace, metadata, length)
    now = utcnow()
    upload = Upload(
        id=secrets.token_hex(16), namespace=namespace, length=length, offset=0,
        created_at=now, expires_at=_expiry(settings, now), sha256=sha256,
        metadata=dict(metadata),
    )  # fmt: skip
    held = not await needs_content(stores.metadata, sha256)
    if held and await proven(stores.metadata, settings, namespace, [sha256]):
        await record_sent(stores.metadata, namespace, sha256, length, stored=False)
        done = replace(upload, offset=length, completed_at=now)
        await stores.metadata.create_upload(done)
        return done
    await quotas.check_bytes(
        stores.metadata, stores.coordination, settings.quota(namespace), namespace, length
    )
    upload = await _stage(stores, upload)
    if length == 0:  # nothing will ever be sent: verify and store it now
        return await _complete_empty(stores, settings, upload)
    return upload


async def create_partial(
    stores: Stores, settings: Settings, key: ApiKeyRecord, namespace: str, length: int,
    metadata: Mapping[str, str],
) -> Upload:  # fmt: skip
    """A part of a concatenation: bytes only, verified when a final upload joins them."""
    keys.authorize_namespace(key, namespace, Scope.write)
    check_upload_size(length, settings)
    await quotas.check_bytes(
        stores.metadata, stores.coordination, settings.quota(namespace), namespace, length
    )
    now = utcnow()
    upload = Upload(
        id=secrets.token_hex(16), namespace=namespace, length=length, offset=0,
        created_at=now, expires_at=_expiry(settings, now), partial=True,
        metadata=dict(metadata),
    )  # fmt: skip
    upload = await _stage(stores, upload)
    if length == 0:
        return await _complete_empty(stores, settings, upload)
    return upload


async def _stage(stores: Stores, upload: Upload) -> Upload:
    """Record *upload*, then prepare its staging space. In this order a crash leaves at
    worst a record without space (it expires) and never space no record knows of."""
    await stores.metadata.create_upload(upload)
    staging = await stores.blobs.staging().create(upload.id, upload.length)
    staged = replace(upload, staging=staging)
    if staging and not await stores.metadata.advance_upload(upload.id, 0, staged):
        raise ConflictError("the upload changed while it was being created")
    return staged


async def concatenate(
    stores: Stores,
    settings: Settings,
    hashes: RunningHashes,
    key: ApiKeyRecord,
    namespace: str,
    part_ids: Sequence[str],
    metadata: Mapping[str, str],
) -> Upload:
    """The final upload joining *part_ids* (complete partial uploads), in order: the
    whole is verified against the declared hash and stored, and the parts freed.

    One part hashed as it arrived (created with :data:`WHOLE`) becomes the blob as it
    is, like a whole upload's last byte: no byte is read back or copied. That is how a
    client sends a large file before it knows its hash (it hashes while it sends)."""
    keys.authorize_namespace(key, namespace, Scope.write)
    if not 1 <= len(part_ids) <= MAX_PARTS:
        raise InvalidInputError(f"a final upload joins 1 to {MAX_PARTS} partial uploads")
    if len(set(part_ids)) != len(part_ids):
        raise InvalidInputError("a final upload names a partial upload twice")
    found = [await find(stores, key, part_id) for part_id in part_ids]
    # Each part is held while it is joined (423 for anyone else): a final request sent
    # again while the first still runs, or a DELETE meanwhile, must not finish it twice.
    async with contextlib.AsyncExitStack() as holding:
        parts = [(await holding.enter_async_context(_lease(stores, p))).upload for p in found]
        final = await _join(stores, settings, hashes, key, namespace, parts, metadata)
        for part in parts:
            await _forget(stores, part)
    return final


async def _join(
    stores: Stores,
    settings: Settings,
    hashes: RunningHashes,
    key: ApiKeyRecord,
    namespace: str,
    parts: Sequence[Upload],
    metadata: Mapping[str, str],
) -> Upload:
    """The final upload of *parts* (held by this request), verified and stored."""
    for part in parts:
        if not part.partial or part.namespace != namespace:
            raise InvalidInputError(f"upload {part.id} is not a partial upload of {namespace!r}")
        if not part.complete:
            raise ConflictError(f"partial upload {part.id} is not complete")
    length = sum(part.length for part in parts)
    sha256 = await _registered(stores, settings, key, namespace, metadata, length)
    staging = stores.blobs.staging()
    held = not await needs_content(stores.metadata, sha256)
    if held and await proven(stores.metadata, settings, namespace, [sha256]):
        await record_sent(stores.metadata, namespace, sha256, length, stored=False)
    elif len(parts) == 1:
        # Finished as a whole upload would be (a mismatch frees its staged bytes).
        part = replace(parts[0], sha256=sha256, partial=False, completed_at=None)
        await _finish(stores, settings, part, hashes.take(parts[0]))
    else:

        async def joined() -> AsyncIterator[bytes]:
            for part in parts:
                async for chunk in staging.read(part.id, part.staging, part.length):
                    yield chunk

        quota = settings.quota(namespace)
        async with quotas.holding_bytes(
            stores.metadata, stores.coordination, quota, namespace, length
        ):
            await store_verified(
                None if held else stores.blobs, sha256, joined(), expected_size=length
            )
            await record_sent(stores.metadata, namespace, sha256, length, stored=not held)
    now = utcnow()
    final = Upload(
        id=secrets.token_hex(16), namespace=namespace, length=length, offset=length,
        created_at=now, expires_at=_expiry(settings, now), sha256=sha256,
        parts=tuple(part.id for part in parts), metadata=dict(metadata), completed_at=now,
    )  # fmt: skip
    await stores.metadata.create_upload(final)
    return final


async def _registered(
    stores: Stores,
    settings: Settings,
    key: ApiKeyRecord,
    namespace: str,
    metadata: Mapping[str, str],
    length: int,
) -> str:
    """The SHA-256 *metadata* declares, once a file record of *namespace* (at its
    ``hostname`` and ``filepath``, when named) holds it with this *length*."""
    if "sha256" not in metadata:
        raise InvalidInputError("Upload-Metadata must name the content: sha256 <base64 of hex>")
    sha256 = checked_sha256(metadata["sha256"])
    if "hostname" in metadata or "filepath" in metadata:
        location = (namespace, metadata.get("hostname", ""), metadata.get("filepath", ""))
        record = await registered_location(stores.metadata, sha256, location, key)
    else:
        record = await registered_content(stores.metadata, sha256, namespace)
    if record.file_size != length:
        raise SizeMismatchError(
            f"the upload is {length} bytes, but the registered size is {record.file_size}"
        )
    check_upload_size(length, settings)
    return sha256


async def find(stores: Stores, key: ApiKeyRecord, upload_id: str) -> Upload:
    """The upload *upload_id* if *key* may write to it; 404 otherwise (whether it exists
    in a namespace the key cannot see is not told), 410 once it has expired."""
    upload = await stores.metadata.get_upload(upload_id) if UPLOAD_ID.fullmatch(upload_id) else None
    if upload is None or not keys.may_use(key, upload.namespace, Scope.write):
        raise NotFoundError("no such upload")
    if upload.expires_at <= utcnow():
        raise GoneError("the upload has expired")
    return upload


async def resume(stores: Stores, settings: Settings, upload: Upload) -> Upload:
    """*upload*, finished first if all its bytes are staged but a crash stopped it
    before it was verified and stored (unless another request is at it now)."""
    if upload.complete or upload.offset < upload.length or upload.parts:
        return upload
    try:
        async with _lease(stores, upload) as lease:
            current = lease.upload
            if current.complete or current.offset < current.length:
                return current
            return await _complete(stores, settings, current, None, lease.token)
    except BusyError:
        return upload


async def append(
    stores: Stores,
    settings: Settings,
    hashes: RunningHashes,
    upload: Upload,
    offset: int,
    body: Body,
    checksum: tuple[str, bytes] | None,
    declared: int | None = None,
) -> Upload:
    """Write *body* at *offset* (which must be the upload's); the upload as it now is.

    One request at a time writes an upload (a lease in the metadata store; 423 while
    another holds it). With *checksum* (algorithm, digest), the body's bytes are
    acknowledged only if they match it (else 460). A body cut short keeps what arrived,
    unless a checksum was given (it cannot be checked). *declared* is the body's
    Content-Length, refused at once when it runs past the upload's length. The last byte
    makes the content verified and stored."""
    if upload.parts:
        raise ForbiddenError("a final upload cannot be patched")
    async with _lease(stores, upload) as lease:
        upload, token = lease.upload, lease.token
        if offset != upload.offset:
            raise ConflictError(f"Upload-Offset is {offset}, but the upload is at {upload.offset}")
        room = upload.length - offset
        if declared is not None and declared > room:
            raise TooLargeError(f"the body runs past Upload-Length ({upload.length} bytes)")
        if upload.complete or room == 0:
            return upload  # nothing more may be sent (and an empty body is all there is)
        check = checksum_hasher(checksum[0]) if checksum else None
        running = hashes.take(upload)
        hashers = [h for h in (check, running.hasher if running else None) if h is not None]
        staging = stores.blobs.staging()
        try:
            # The same batches are hashed and written (one hold on the budget for both).
            with LARGE_BATCHES.batch_for(upload.length, small=HASH_BATCH) as batch:
                chunks = _bounded(body, room, upload.length, hashers, lease, batch)
                position, state = await staging.append(
                    upload.id, upload.staging, offset, upload.length, chunks,
                    batch=None if batch == HASH_BATCH else batch,
                )  # fmt: skip
        except BlobNotFoundError:
            await _forget(stores, upload)
            raise GoneError(_STAGED_GONE) from None
        except StagingBusyError:
            raise BusyError(_BUSY, retry_after=BUSY_RETRY_SECONDS) from None
        lease.check()  # a request that lost the upload acknowledges nothing
        if checksum is not None and check is not None:
            if body.cut_short:
                raise ChecksumMismatchError(
                    "the body was cut short: its checksum cannot be checked"
                )
            if check.digest() != checksum[1]:
                raise ChecksumMismatchError(f"the body does not match its {checksum[0]} checksum")
        advanced = replace(
            upload, offset=position, staging=state, expires_at=_expiry(settings, utcnow())
        )
        if not await stores.metadata.advance_upload(upload.id, offset, advanced, token):
            raise ConflictError("another request moved the upload on first")
        if running is not None:
            running.offset = position
        if position < upload.length or upload.partial:
            if running is not None:  # a whole partial's: for the final upload joining it
                hashes.keep(upload.id, running)
            if position < upload.length:
                return advanced
        # Every byte is staged and the offset says so (a retry finds nothing to send):
        # now verify and store, then mark it complete. A crash in between leaves it at
        # its full length, incomplete: the next request for it finishes it (find()).
        return await _complete(stores, settings, advanced, running, token)


async def _complete(
    stores: Stores, settings: Settings, upload: Upload, running: _Running | None, token: str
) -> Upload:
    """Finish an upload all of whose bytes are staged: a partial is simply complete; a
    whole content is verified and stored first."""
    if not upload.partial:
        await _finish(stores, settings, upload, running)
    done = replace(upload, completed_at=utcnow())
    if not await stores.metadata.advance_upload(upload.id, upload.length, done, token):
        raise ConflictError("another request finished the upload first")
    return done


async def _bounded(
    body: Body,
    room: int,
    length: int,
    hashers: Sequence[Checksum],
    lease: _Lease,
    batch_bytes: int,
) -> AsyncIterator[bytes]:
    """The body, bounded by the upload's length and hashed on a worker thread a batch at
    a time while the staging area writes it (in order: one batch hashing at once). A
    request that lost its lease stops."""
    received = 0
    batch: list[bytes] = []
    batch_size = 0
    hashing: asyncio.Future[None] | None = None
    try:
        async for chunk in body:
            lease.check()
            received += len(chunk)
            if received > room:
                raise TooLargeError(f"the body runs past Upload-Length ({length} bytes)")
            batch.append(chunk)
            batch_size += len(chunk)
            if batch_size >= batch_bytes:
                if hashing is not None:
                    await hashing
                hashing = asyncio.ensure_future(asyncio.to_thread(_update, hashers, batch))
                batch, batch_size = [], 0
            yield chunk
        if hashing is not None:
            await hashing
        if batch_size < INLINE_WORK_LIMIT:
            _update(hashers, batch)
        else:  # the last batch may be a large one: not on the event loop
            await asyncio.to_thread(_update, hashers, batch)
    finally:
        if hashing is not None and not hashing.done():
            await asyncio.gather(hashing, return_exceptions=True)


@dataclass
class _Lease:
    """A request's hold on an upload, renewed in the background while the request lives
    (however slowly its body arrives); ``lost`` once a renewal failed."""

    token: str
    upload: Upload
    lost: bool = False

    def check(self) -> None:
        if self.lost:
            raise ConflictError("the upload was taken over by another request")


@asynccontextmanager
async def _lease(stores: Stores, upload: Upload) -> AsyncIterator[_Lease]:
    """Hold the upload's lease (423 while another request holds it) and yield it with
    the upload as it is now that no one else writes it."""
    token = secrets.token_hex(8)
    if not await _claim(stores, upload.id, token):
        raise BusyError(_BUSY, retry_after=BUSY_RETRY_SECONDS)
    current = await stores.metadata.get_upload(upload.id)
    if current is None:
        await stores.metadata.release_upload(upload.id, token)
        raise NotFoundError("no such upload")
    lease = _Lease(token, current)

    async def keep() -> None:
        while not lease.lost:
            await asyncio.sleep(LEASE_RENEW_SECONDS)
            lease.lost = not await _claim(stores, upload.id, token)

    renewing = asyncio.create_task(keep())
    try:
        yield lease
    finally:
        renewing.cancel()
        await asyncio.gather(renewing, return_exceptions=True)
        await stores.metadata.release_upload(upload.id, token)


async def _claim(stores: Stores, upload_id: str, token: str) -> bool:
    now = utcnow()
    return await stores.metadata.claim_upload(
        upload_id, token, now, now + timedelta(seconds=LEASE_SECONDS)
    )


async def _finish(
    stores: Stores, settings: Settings, upload: Upload, running: _Running | None
) -> None:
    """Verify the whole content of *upload* and make it a blob (or proof the namespace
    holds it); a mismatch discards the upload. Safe to run again after a crash part-way:
    if the staged bytes were already made the blob, the blob is verified instead."""
    assert upload.sha256 is not None
    sha256, namespace = upload.sha256, upload.namespace
    staging = stores.blobs.staging()
    held = not await needs_content(stores.metadata, sha256)
    async with contextlib.AsyncExitStack() as reserved:
        try:
            if not held:  # room in the quota, held until the content is recorded
                room = quotas.holding_bytes(
                    stores.metadata, stores.coordination, settings.quota(namespace), namespace,
                    upload.length,
                )  # fmt: skip
                await reserved.enter_async_context(room)
            if running is not None:  # hashed as it arrived: nothing to read back
                actual = running.hasher.hexdigest()
                if actual != sha256:
                    raise HashMismatchError(f"content hashes to {actual}, not {sha256}")
                if held:
                    await staging.discard(upload.id, upload.staging)
                else:
                    try:
                        await staging.promote(upload.id, upload.staging, sha256)
                    except StagingBusyError:
                        raise BusyError(_BUSY, retry_after=BUSY_RETRY_SECONDS) from None
            else:  # continued here after another process or a restart: read it back
                try:
                    chunks = staging.read(upload.id, upload.staging, upload.length)
                    await store_verified(
                        None if held else stores.blobs, sha256, chunks, expected_size=upload.length
                    )
                except BlobNotFoundError:
                    if held:  # the bytes are gone and cannot prove anything now
                        raise GoneError(
                            "the upload's staged bytes are gone: start it again"
                        ) from None
                    await _verify_promoted(stores, sha256, upload.length)
                await staging.discard(upload.id, upload.staging)
        except (ContentMismatchError, GoneError, QuotaExceededError):
            await _forget(stores, upload)
            raise
        await record_sent(stores.metadata, namespace, sha256, upload.length, stored=not held)


_STAGED_GONE = "the upload's staged bytes are gone: start it again"


async def _verify_promoted(stores: Stores, sha256: str, length: int) -> None:
    """The staged bytes were made the blob before a crash: check the blob instead."""
    try:
        await store_verified(None, sha256, stores.blobs.read(sha256), expected_size=length)
    except BlobNotFoundError:
        raise GoneError(_STAGED_GONE) from None


async def terminate(stores: Stores, upload: Upload) -> None:
    """Stop an upload and free its space (tus ``termination``); 423 while a request is
    writing it."""
    async with _lease(stores, upload) as lease:
        await _forget(stores, lease.upload)


async def append_to_new(
    stores: Stores,
    settings: Settings,
    hashes: RunningHashes,
    upload: Upload,
    body: Body,
    checksum: tuple[str, bytes] | None,
    declared: int | None,
) -> Upload | None:
    """:func:`append` the body of the request that created *upload* (tus
    creation-with-upload). Its client learns the upload's URL only from the answer: if
    the append fails, or the client went away (None: nobody to answer), the upload is
    discarded, since nobody could ever continue or free it."""
    try:
        appended = await append(stores, settings, hashes, upload, 0, body, checksum, declared)
    except BaseException:
        await discard_new(stores, upload)
        raise
    if body.client_gone:
        await discard_new(stores, appended)
        return None
    return appended


async def discard_new(stores: Stores, upload: Upload) -> None:
    """Free an upload whose creation failed part-way (its URL was never given out)."""
    current = await stores.metadata.get_upload(upload.id)
    if current is not None and not current.complete:
        await _forget(stores, current)


async def _forget(stores: Stores, upload: Upload) -> None:
    if not upload.complete or upload.partial:
        await stores.blobs.staging().discard(upload.id, upload.staging)
    await stores.metadata.delete_uploads([upload.id])


async def reclaim_expired(stores: Stores, now: datetime | None = None) -> int:
    """Forget uploads that have expired and free their space; how many."""
    removed = 0
    while expired := await stores.metadata.expired_uploads(now or utcnow()):
        for upload in expired:
            await _forget(stores, upload)
        removed += len(expired)
    return removed


@dataclass
class UploadsReport:
    """What ``ppserver gc`` found of resumable uploads."""

    #: Uploads still being sent (not expired): ``id namespace offset/length``.
    unfinished: list[str] = field(default_factory=list)
    #: Expired uploads, whose space is reclaimed with ``delete``.
    expired: list[str] = field(default_factory=list)
    #: Staged bytes no upload record knows (records removed by other means).
    orphaned: list[str] = field(default_factory=list)


async def sweep_uploads(stores: Stores, *, delete: bool) -> UploadsReport:
    """List unfinished, expired and orphaned uploads; with *delete*, free the expired
    and orphaned ones (unfinished uploads keep going until they expire)."""
    report = UploadsReport()
    now = utcnow()
    for upload in await stores.metadata.expired_uploads(LATEST, limit=MAX_PAGE):
        if upload.expires_at <= now:
            report.expired.append(upload.id)
        elif not upload.complete:
            report.unfinished.append(
                f"{upload.id} {upload.namespace} {upload.offset}/{upload.length}"
            )
    report.orphaned = await orphaned_staging(stores)
    if delete:
        await reclaim_expired(stores, now)
        staging = stores.blobs.staging()
        for upload_id in report.orphaned:
            await staging.discard(upload_id, {})
    return report


async def orphaned_staging(stores: Stores) -> list[str]:
    """Staged uploads no record knows (left by records deleted by other means: the
    staging space of an upload is made after its record and freed before it)."""
    orphans = []
    async for upload_id in stores.blobs.staging().list_ids():
        if await stores.metadata.get_upload(upload_id) is None:
            orphans.append(upload_id)
    return orphans


def _update(hashers: Sequence[Checksum], chunks: Sequence[bytes]) -> None:
    for hasher in hashers:
        for chunk in chunks:
            hasher.update(chunk)  # releases the GIL for each chunk over 2 KiB


async def _complete_empty(stores: Stores, settings: Settings, upload: Upload) -> Upload:
    """An upload of nothing: complete (and for content, verified) at once."""
    async with _lease(stores, upload) as lease:
        running = None if lease.upload.partial else _Running()
        return await _complete(stores, settings, lease.upload, running, lease.token)


class _Empty:
    cut_short = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        nothing: tuple[bytes, ...] = ()
        for chunk in nothing:  # an async generator that yields nothing
            yield chunk
