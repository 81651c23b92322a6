"""Scrubbing and garbage collection of stored content (``ppserver verify`` / ``gc``), and
the sweep of abandoned temporary uploads at start-up."""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from putplace.auth import utcnow
from putplace.blobs import BlobStore
from putplace.blobs.base import BlobNotFoundError, StoredBlob
from putplace.metadata import MetadataStore
from putplace.metadata.base import MaintenanceRun
from putplace.models import BlobRecord, BlobState

log = logging.getLogger("putplace.service")

Progress = Callable[[BlobRecord], None]

#: ``gc`` leaves content younger than this alone: its file record may still be on its way,
#: or its upload between writing the bytes and recording them.
GC_MIN_AGE_SECONDS = 3600.0
#: Temporary uploads older than this are abandoned, and removed when the server starts.
STALE_UPLOAD_SECONDS = 24 * 3600
#: Blobs listed from the store are checked against the records this many at a time.
_LOOKUP_BATCH = 1000


async def sweep_temporary(blobs: BlobStore) -> int:
    """Remove temporary uploads abandoned long ago (a crash or kill mid-upload)."""
    removed = await blobs.cleanup_temporary(STALE_UPLOAD_SECONDS)
    if removed:
        log.info("removed %d abandoned temporary uploads", removed)
    return removed


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
    The outcome is recorded for ``/metrics`` (the last run and what it found), as task
    ``verify``, or ``verify_sample`` for a sample.

    A blob whose bytes no longer hash to its name is moved aside and its record marked
    ``quarantined``, so clients are asked to upload it again. A blob recorded but missing
    from the store is reported (its record is left for an operator to decide), unless a
    copy of it was put aside: then an earlier run was cut short, and this one finishes.
    """
    records = [r async for r in blob_records(metadata) if r.state is BlobState.present]
    # A sample is recorded apart: it must not stand for a full check (nor clear what a
    # full one found).
    task = "verify" if sample is None else "verify_sample"
    if sample is not None and sample < len(records):
        records = random.sample(records, sample)
    report = VerifyReport()
    for record in records:
        hasher = hashlib.sha256()
        try:
            async for chunk in blobs.read(record.sha256):
                hasher.update(chunk)
        except BlobNotFoundError:
            since = await blobs.quarantined_since(record.sha256)
            # Put aside since it was stored (a copy from before is an older, finished
            # quarantine): one cut short between moving the bytes and marking the
            # record. Finished now, so clients are asked for the content again.
            if since is not None and since >= record.stored_at.replace(microsecond=0):
                await metadata.set_blob_state(record.sha256, BlobState.quarantined)
                report.corrupt.append(record.sha256)
            else:
                report.missing.append(record.sha256)
        else:
            if hasher.hexdigest() != record.sha256:
                await blobs.quarantine(record.sha256)
                await metadata.set_blob_state(record.sha256, BlobState.quarantined)
                report.corrupt.append(record.sha256)
        report.checked += 1
        if progress is not None:
            progress(record)
    problems = {"corrupt": len(report.corrupt), "missing": len(report.missing)}
    await metadata.record_maintenance(MaintenanceRun(task, utcnow(), problems))
    return report


@dataclass(frozen=True)
class Retention:
    """How long past versions are kept, and whether they keep their content stored."""

    keep_versions: int = 0
    """Past versions kept per location, newest first; 0 keeps all."""
    keep_days: float = 0
    """Past versions that ended longer ago are dropped; 0 keeps them forever."""
    history_keeps_content: bool = True
    """Content held only by past versions or deleted records stays stored (restorable
    "as of" a time); off, only live records keep content."""


@dataclass
class GcReport:
    #: Past file versions dropped under the retention settings (with ``delete``).
    history_pruned: int = 0
    #: Recorded content no file record references.
    unreferenced: list[str] = field(default_factory=list)
    #: Content in the blob store that no blob record knows (written, then never recorded:
    #: a crash between the two steps).
    orphaned: list[str] = field(default_factory=list)
    #: What was removed, of both kinds (with ``delete``).
    deleted: list[str] = field(default_factory=list)
    kept_after_recheck: list[str] = field(default_factory=list)


async def _unrecorded(
    metadata: MetadataStore, blobs: BlobStore, cutoff: datetime
) -> AsyncIterator[StoredBlob]:
    """Blobs in the store, last written before *cutoff*, that no blob record knows."""
    batch: list[StoredBlob] = []

    async def unknown() -> list[StoredBlob]:
        recorded = await metadata.get_blobs([b.sha256 for b in batch])
        return [b for b in batch if b.sha256 not in recorded]

    async for stored in blobs.list():
        if stored.modified <= cutoff:
            batch.append(stored)
        if len(batch) >= _LOOKUP_BATCH:
            for found in await unknown():
                yield found
            batch = []
    if batch:
        for found in await unknown():
            yield found


async def collect_garbage(
    metadata: MetadataStore,
    blobs: BlobStore,
    *,
    delete: bool = False,
    min_age_seconds: float = GC_MIN_AGE_SECONDS,
    retention: Retention = Retention(),
) -> GcReport:
    """Find (and with *delete*, remove) content nothing needs: recorded blobs no file
    record references, and blobs in the store that no record knows at all.

    With *delete*, past versions beyond *retention* are dropped first. Content that only
    past versions or deleted records hold is kept while ``retention.history_keeps_content``
    (so a restore "as of" a time finds it).

    Only blobs stored more than *min_age_seconds* ago are considered, so content whose
    file record is still on its way is left alone. Deletion is ordered so that a file
    registered meanwhile never ends with a record whose content is gone: the blob record
    is removed first, only while no file references it (:meth:`delete_unreferenced_blob`;
    new registrations then ask for an upload), and only then are the bytes deleted. If a
    client re-uploaded the same content in the instant between, its blob record is
    removed again so the next registration asks for the content once more.

    What it found is recorded for ``/metrics``.
    """
    cutoff = utcnow() - timedelta(seconds=min_age_seconds)
    report = GcReport()
    if delete:  # first, so content only the dropped versions held is collected below
        ended_before = (
            utcnow() - timedelta(days=retention.keep_days) if retention.keep_days else None
        )
        report.history_pruned = await metadata.prune_history(retention.keep_versions, ended_before)
    by_history = retention.history_keeps_content
    candidates = [
        r
        async for r in blob_records(metadata)
        if r.stored_at <= cutoff and r.state is BlobState.present
    ]
    for record in candidates:
        if await metadata.is_referenced(record.sha256, by_history=by_history):
            continue
        report.unreferenced.append(record.sha256)
        if not delete:
            continue
        if not await metadata.delete_unreferenced_blob(record.sha256, by_history=by_history):
            report.kept_after_recheck.append(record.sha256)  # registered meanwhile
            continue
        await _delete_bytes(metadata, blobs, record.sha256)
        report.deleted.append(record.sha256)
    # Listed after the records were handled, so blobs just collected above are gone.
    async for stored in _unrecorded(metadata, blobs, cutoff):
        report.orphaned.append(stored.sha256)
        if delete:
            await _delete_bytes(metadata, blobs, stored.sha256)
            report.deleted.append(stored.sha256)
    problems = {"unreferenced": len(report.unreferenced), "orphaned": len(report.orphaned)}
    await metadata.record_maintenance(MaintenanceRun("gc", utcnow(), problems))
    return report


async def _delete_bytes(metadata: MetadataStore, blobs: BlobStore, sha256: str) -> None:
    """Delete stored bytes. Should an upload of the same content have recorded it in the
    instant before, its record is dropped too, so the next registration asks for it."""
    await blobs.delete(sha256)
    if await metadata.get_blob(sha256) is not None and not await blobs.exists(sha256):
        await metadata.delete_blob(sha256)
