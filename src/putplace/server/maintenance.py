"""Scrubbing and garbage collection of stored content (``ppserver verify`` / ``gc``)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta

from putplace.auth import utcnow
from putplace.blobs import BlobStore
from putplace.blobs.base import BlobNotFoundError
from putplace.metadata import MetadataStore
from putplace.models import BlobRecord, BlobState

Progress = Callable[[BlobRecord], None]


async def blob_records(store: MetadataStore, page: int = 1000) -> AsyncIterator[BlobRecord]:
    """Every blob record, in hash order, a page at a time."""
    after: str | None = None
    while records := await store.list_blobs(after=after, limit=page):
        for record in records:
            yield record
        after = records[-1].sha256


@dataclass
class VerifyReport:
    checked: int = 0
    corrupt: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.corrupt or self.missing)


async def verify(
    metadata: MetadataStore,
    blobs: BlobStore,
    *,
    sample: int | None = None,
    progress: Progress | None = None,
) -> VerifyReport:
    """Re-hash stored blobs (all, or a random *sample*); quarantine the corrupt ones.

    A blob whose bytes no longer hash to its name is moved aside and its record marked
    ``quarantined``, so clients are asked to upload it again. A blob recorded but missing
    from the store is reported (its record is left for an operator to decide).
    """
    records = [r async for r in blob_records(metadata) if r.state is BlobState.present]
    if sample is not None and sample < len(records):
        records = random.sample(records, sample)
    report = VerifyReport()
    for record in records:
        hasher = hashlib.sha256()
        try:
            async for chunk in blobs.read(record.sha256):
                hasher.update(chunk)
        except BlobNotFoundError:
            report.missing.append(record.sha256)
        else:
            if hasher.hexdigest() != record.sha256:
                await blobs.quarantine(record.sha256)
                await metadata.set_blob_state(record.sha256, BlobState.quarantined)
                report.corrupt.append(record.sha256)
        report.checked += 1
        if progress is not None:
            progress(record)
    return report


@dataclass
class GcReport:
    unreferenced: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    kept_after_recheck: list[str] = field(default_factory=list)


async def collect_garbage(
    metadata: MetadataStore,
    blobs: BlobStore,
    *,
    delete: bool = False,
    min_age_seconds: float = 3600,
) -> GcReport:
    """Find (and with *delete*, remove) blobs no file record references.

    Only blobs stored more than *min_age_seconds* ago are considered, so content whose
    file record is still on its way is left alone. Deletion is ordered so that a file
    registered meanwhile never ends with a record whose content is gone: the blob record
    is removed first (new registrations then ask for an upload), references are checked
    again (and the record restored if one appeared), and only then are the bytes
    deleted. If a client re-uploaded the same content in the instant between that check
    and the deletion, its blob record is removed again so the next registration asks for
    the content once more.
    """
    cutoff = utcnow() - timedelta(seconds=min_age_seconds)
    report = GcReport()
    candidates = [
        r
        async for r in blob_records(metadata)
        if r.stored_at <= cutoff and r.state is BlobState.present
    ]
    for record in candidates:
        if await metadata.is_referenced(record.sha256):
            continue
        report.unreferenced.append(record.sha256)
        if not delete:
            continue
        await metadata.delete_blob(record.sha256)
        if await metadata.is_referenced(record.sha256):
            await metadata.add_blob(record)
            report.kept_after_recheck.append(record.sha256)
            continue
        await blobs.delete(record.sha256)
        if await metadata.get_blob(record.sha256) is not None and not await blobs.exists(
            record.sha256
        ):
            await metadata.delete_blob(record.sha256)
        report.deleted.append(record.sha256)
    return report
