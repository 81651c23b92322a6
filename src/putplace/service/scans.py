"""Scans: how deletions are found.

A client opens a scan per root it walks, reports what it saw (the records it sends, and
the paths of unchanged files it skips), and completes it only when the walk finished.
Completing marks deleted every live record of that host under that root the scan did not
see, unless an exclude pattern of the scan covers it. An abandoned or never completed
scan deletes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from putplace.auth import utcnow
from putplace.metadata import MetadataStore
from putplace.models import ApiKeyRecord, ScanRecord, ScanState, Scope
from putplace.patterns import Excluder, excluder
from putplace.service import keys
from putplace.service.errors import ConflictError, InvalidInputError, NotFoundError

MAX_EXCLUDES = 1000
MAX_SEEN_PATHS = 10_000
_DELETE_PAGE = 1000


async def open_scan(
    store: MetadataStore,
    writer: ApiKeyRecord,
    namespace: str,
    hostname: str,
    root: str,
    excludes: Sequence[str],
) -> ScanRecord:
    keys.authorize_namespace(writer, namespace, Scope.write)
    keys.authorize_hosts(writer, [hostname])
    if not root.startswith("/"):
        raise InvalidInputError("root must be an absolute path")
    if len(excludes) > MAX_EXCLUDES:
        raise InvalidInputError(f"at most {MAX_EXCLUDES} exclude patterns")
    return await store.create_scan(hostname, root, excludes, utcnow(), namespace)


async def open_scan_named(store: MetadataStore, scan_id: str, writer: ApiKeyRecord) -> ScanRecord:
    """The scan, which must still be open: 404 unknown, 409 finished, 403 of a host the
    key may not write."""
    scan = await get_scan(store, scan_id, writer)
    if scan.state is not ScanState.open:
        raise ConflictError(f"the scan is {scan.state.value}, not open")
    return scan


async def get_scan(store: MetadataStore, scan_id: str, writer: ApiKeyRecord) -> ScanRecord:
    scan = await store.get_scan(scan_id)
    if scan is None:
        raise NotFoundError("no such scan")
    if not keys.may_use(writer, scan.namespace, Scope.write):
        raise NotFoundError("no such scan")  # another namespace's scan: not ours to know of
    keys.authorize_hosts(writer, [scan.hostname])
    return scan


async def mark_seen(
    store: MetadataStore, writer: ApiKeyRecord, scan_id: str, filepaths: Sequence[str]
) -> int:
    """Unchanged files the client did not send again, seen by the scan; how many of them
    the server holds live (fewer means the client should send the others in full)."""
    if len(filepaths) > MAX_SEEN_PATHS:
        raise InvalidInputError(f"at most {MAX_SEEN_PATHS} paths per request")
    scan = await open_scan_named(store, scan_id, writer)
    return await store.mark_seen(scan, filepaths)


async def complete_scan(store: MetadataStore, writer: ApiKeyRecord, scan_id: str) -> ScanRecord:
    """Mark deleted what the scan did not see under its root (not what its excludes
    cover, nor what was recorded since it started), then close it. Deletions are written
    a page at a time; a completion cut off part-way leaves the scan open and is simply
    repeated."""
    scan = await open_scan_named(store, scan_id, writer)
    excluded = excluder(scan.excludes)
    prefix = scan.root.rstrip("/") + "/"
    deleted, after = 0, ""
    # A scan of a root that held no live records (a host's first ingest) finds nothing
    # to delete: the records under it were written after it opened (see
    # ScanRecord.had_records). Looking cost a pass over all of them at the very end of
    # the run, 0.11 s of a 6 s first ingest of 100,000 files.
    while scan.had_records and (page := await store.unseen_under(scan, after, _DELETE_PAGE)):
        after = page[-1].filepath
        gone = [
            record
            for record in page
            # Recorded after the walk began (another run, another client): the walk may
            # have passed its directory before it existed; it is there, not gone.
            if record.updated_at < scan.started_at
            and not _covered(excluded, record.filepath, prefix)
        ]
        deleted += await store.delete_files(gone, utcnow())
    if not await store.finish_scan(scan.id, ScanState.completed, deleted, utcnow()):
        raise ConflictError("the scan was finished by another request")
    return await get_scan(store, scan.id, writer)


def _covered(excluded: Excluder, filepath: str, prefix: str) -> bool:
    """Whether an exclude pattern covers *filepath* or one of its directories, as the
    client's walk would have skipped it."""
    relative = filepath[len(prefix) :] if filepath.startswith(prefix) else ""
    if not relative:
        return False
    parts = relative.split("/")
    return any(excluded("/".join(parts[: i + 1]), i < len(parts) - 1) for i in range(len(parts)))


async def abandon_scan(store: MetadataStore, writer: ApiKeyRecord, scan_id: str) -> ScanRecord:
    scan = await open_scan_named(store, scan_id, writer)
    if not await store.finish_scan(scan.id, ScanState.abandoned, 0, utcnow()):
        raise ConflictError("the scan was finished by another request")
    return await get_scan(store, scan.id, writer)
