"""The metadata store interface every backend implements, and the logic they share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

from putplace.metadata.inventory import (
    CURRENT,
    Cursor,
    DuplicateGroup,
    FileQuery,
    FileState,
    Found,
    Listed,
    Totals,
)
from putplace.metadata.uploads import Upload
from putplace.models import (
    DEFAULT_NAMESPACE,
    ApiKeyRecord,
    BlobRecord,
    BlobState,
    FileMetadata,
    FileRecord,
    FileVersion,
    Location,
    ScanRecord,
    ScanState,
    Scope,
)

T = TypeVar("T")

#: Fields of a file record as the client reports them, in wire-protocol order.
FILE_FIELDS: tuple[str, ...] = tuple(FileMetadata.model_fields)
MAX_PAGE = 10_000


class StoreError(Exception):
    """Base class of the errors every metadata backend raises alike."""


class StoreUnavailableError(StoreError):
    """The metadata store cannot be reached or refused the operation for a transient reason."""


class DuplicateError(StoreError):
    """A unique value (an API key hash) is already recorded; nothing was written."""


@dataclass(frozen=True)
class MaintenanceRun:
    """The outcome of the last run of a maintenance task (``verify``, ``gc``), kept so
    every server can export it as a metric and an alert can fire on it."""

    task: str
    finished_at: datetime
    #: Problems found, by kind (``corrupt``, ``missing``, ``orphaned``...): counts only.
    problems: Mapping[str, int]


class StoredFile(NamedTuple):
    """A file record just stored: its id, and its content's blob record if there is one."""

    id: str
    blob: BlobRecord | None


def dedupe_by_location(files: Sequence[FileMetadata]) -> list[FileMetadata]:
    """Last record wins when a batch names the same ``(hostname, filepath)`` twice."""
    latest: dict[tuple[str, str], FileMetadata] = {}
    for meta in files:
        key = (meta.hostname, meta.filepath)
        latest.pop(key, None)
        latest[key] = meta
    return list(latest.values())


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}")
    return limit


class MetadataStore(ABC):
    """Where files, blobs and API keys are recorded.

    Implementations resolve races in the database (unique indexes, upserts), never by
    read-then-write, so any number of API processes can share one store.
    """

    #: Short backend name shown by ``/health``: ``sqlite`` or ``mongodb``.
    kind: str

    # -- lifecycle -------------------------------------------------------------------
    @abstractmethod
    async def open(self) -> None:
        """Connect and create tables/collections and indexes (idempotent)."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> bool:
        """True when the store answers a trivial query."""

    # -- files -----------------------------------------------------------------------
    @abstractmethod
    async def put_files(
        self,
        files: Sequence[FileMetadata],
        now: datetime,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        scan_id: str | None = None,
    ) -> list[StoredFile]:
        """Insert or update each ``(hostname, filepath)`` of *namespace* in one
        transaction / bulk write.

        A record whose content or metadata changed (``inventory.plan_puts``) ends its
        previous version, which is kept in the history; a deleted record comes back live.
        Each record is marked seen by *scan_id* when given.

        Returns, in the order of ``dedupe_by_location(files)``, each record's id and the
        blob record of its content (what the caller answers next, so a backend can look it
        up in the same round trip). A stored record holds exactly what was sent (plus its
        timestamps), so callers describe it from what they sent rather than reading it back.
        """

    @abstractmethod
    async def get_file(
        self, hostname: str, filepath: str, namespace: str = DEFAULT_NAMESPACE
    ) -> FileRecord | None: ...

    @abstractmethod
    async def registered_sizes(
        self, sha256s: Collection[str], namespace: str = DEFAULT_NAMESPACE
    ) -> dict[str, int]:
        """For each hash some file record of *namespace* holds, the size its oldest such
        record gives."""

    @abstractmethod
    async def count_live(self, namespace: str, locations: Collection[tuple[str, str]]) -> int:
        """How many of these (hostname, filepath) locations hold a live record in
        *namespace*."""

    # -- possession: which namespaces have proven they hold a content -------------------
    @abstractmethod
    async def add_possession(self, namespace: str, sha256s: Collection[str], now: datetime) -> None:
        """Record that *namespace* sent these contents' bytes, verified, at *now* (a
        content it sent before keeps its first time)."""

    @abstractmethod
    async def possessed(
        self, namespaces: Sequence[str], sha256s: Collection[str]
    ) -> dict[str, datetime]:
        """For the hashes of *sha256s* that one of *namespaces* has sent, when it first
        did (the earliest of them)."""

    @abstractmethod
    async def held_totals(self, namespaces: Sequence[str]) -> tuple[int, int]:
        """How many stored contents *namespaces* have sent, and their bytes."""

    async def list_files(
        self,
        *,
        hostname: str | None = None,
        sha256: str | None = None,
        after: str | None = None,
        limit: int = 100,
        namespaces: Sequence[str] = (),
    ) -> list[FileRecord]:
        """Records, live or deleted, matching every filter given (in any of *namespaces*;
        empty: any), in insertion order, after the record whose id is *after*. ValueError
        for an id this backend never issued."""
        query = FileQuery(
            namespaces=tuple(namespaces), hostnames=() if hostname is None else (hostname,),
            sha256=sha256, state=FileState.all,
        )  # fmt: skip
        cursor = None if after is None else Cursor(None, CURRENT, after)
        return [found.record for found in await self.search_files(query, cursor, limit)]

    @abstractmethod
    async def search_files(self, query: FileQuery, after: Cursor | None, limit: int) -> list[Found]:
        """Records matching *query*, in its order, after *after*; each with the cursor
        that resumes after it. With ``query.as_of``, the versions live at that time
        (current records and history). ValueError for a cursor this backend never
        issued."""

    # -- scans, deletions and history -------------------------------------------------
    @abstractmethod
    async def create_scan(
        self,
        hostname: str,
        root: str,
        excludes: Sequence[str],
        now: datetime,
        namespace: str = DEFAULT_NAMESPACE,
    ) -> ScanRecord: ...

    @abstractmethod
    async def get_scan(self, scan_id: str) -> ScanRecord | None: ...

    @abstractmethod
    async def finish_scan(
        self, scan_id: str, state: ScanState, deleted: int, now: datetime
    ) -> bool:
        """Close an open scan; False when it is not open (finished by someone else)."""

    @abstractmethod
    async def mark_seen(self, scan: ScanRecord, filepaths: Sequence[str]) -> int:
        """Keep these paths as seen by the scan (``put_files`` with the scan does the same
        for the records it stores); how many are live records of its host."""

    @abstractmethod
    async def unseen_under(self, scan: ScanRecord, after: str, limit: int) -> list[Listed]:
        """Live records of the scan's namespace and host at or under its root that the
        scan has not seen (``mark_seen``, or ``put_files`` with the scan), in path order,
        with paths after *after*: at most *limit*."""

    @abstractmethod
    async def delete_files(self, records: Sequence[Listed | FileRecord], now: datetime) -> int:
        """Mark these records deleted (``inventory.plan_deletes``), in one write, if they
        are still live and as listed (same ``updated_at``); how many were."""

    @abstractmethod
    async def history(
        self, hostname: str, filepath: str, namespace: str = DEFAULT_NAMESPACE
    ) -> list[FileVersion]:
        """Every version of a location, newest first (the current state first); empty
        when it was never recorded."""

    @abstractmethod
    async def locations(
        self, sha256: str, *, include_past: bool, namespaces: Sequence[str] = ()
    ) -> list[Location]:
        """Where the content lives now (and, with *include_past*, lived before), in any of
        *namespaces* (empty: any), in (namespace, hostname, filepath) order."""

    @abstractmethod
    async def totals(self, hostname: str | None, namespaces: Sequence[str] = ()) -> Totals:
        """Counters for ``GET /stats``: growth per day and host and blob totals, kept at
        each write (not counted)."""

    @abstractmethod
    async def duplicate_groups(
        self, hostname: str | None, top: int, namespaces: Sequence[str] = ()
    ) -> list[DuplicateGroup]:
        """The *top* contents held by more than one live record (of *hostname*, in any of
        *namespaces*; empty: any), most
        bytes held more than once first. Grouped from the records: callers cache it."""

    @abstractmethod
    async def prune_history(self, keep_versions: int, ended_before: datetime | None) -> int:
        """Drop past versions beyond the newest *keep_versions* of each location (0: keep
        all) and those that ended before *ended_before*; how many were dropped."""

    # -- blobs -----------------------------------------------------------------------
    @abstractmethod
    async def get_blobs(self, sha256s: Collection[str]) -> dict[str, BlobRecord]:
        """Blob records for the hashes that have one."""

    @abstractmethod
    async def put_blobs(
        self, blobs: Sequence[BlobRecord], *, sent_by: str | None = None
    ) -> list[bool]:
        """Record verified content as stored, in one write; one answer per blob. With
        *sent_by*, that namespace is recorded as having sent each of them (as
        :meth:`add_possession` does, at each blob's ``stored_at``), in the same write.

        True when the record was written: the hash was new, or recorded in another state
        (a quarantined blob stored again). False when it was already recorded present;
        that record stands unchanged.
        """

    @abstractmethod
    async def set_blob_state(self, sha256: str, state: BlobState) -> bool: ...

    @abstractmethod
    async def delete_blob(self, sha256: str) -> bool: ...

    @abstractmethod
    async def delete_unreferenced_blob(self, sha256: str, *, by_history: bool = True) -> bool:
        """Delete the blob record, and who sent it, unless a file record references the
        content (:meth:`is_referenced`); True when deleted. A file registered meanwhile
        finds either the record as it was (its sender and possession kept) or none."""

    @abstractmethod
    async def list_blobs(self, *, after: str | None = None, limit: int = 1000) -> list[BlobRecord]:
        """Blob records ordered by hash, after *after*."""

    @abstractmethod
    async def is_referenced(
        self, sha256: str, *, by_history: bool = True, namespaces: Sequence[str] = ()
    ) -> bool:
        """True when a live file record (in *namespaces*; empty: any) has this content,
        or (with *by_history*) a deleted record or a past version does."""

    # -- API keys --------------------------------------------------------------------
    @abstractmethod
    async def add_api_key(
        self,
        *,
        key_hash: str,
        name: str,
        description: str | None,
        scope: Scope,
        created_at: datetime,
        hosts: Sequence[str] = (),
        expires_at: datetime | None = None,
        grants: Mapping[str, Scope] | None = None,
    ) -> ApiKeyRecord:
        """Store a key; :class:`DuplicateError` when *key_hash* is already recorded."""

    @abstractmethod
    async def get_api_key(self, key_hash: str) -> ApiKeyRecord | None: ...

    @abstractmethod
    async def get_api_key_by_id(self, key_id: str) -> ApiKeyRecord | None: ...

    @abstractmethod
    async def list_api_keys(self) -> list[ApiKeyRecord]:
        """Every key, oldest first."""

    @abstractmethod
    async def touch_api_key(self, key_id: str, when: datetime, ip: str | None) -> None:
        """Note the key's last use, and the client address it came from."""

    @abstractmethod
    async def expire_api_key(self, key_id: str, when: datetime, *, replaced_by: str) -> bool:
        """Make the key stop working at *when* (a rotation: *replaced_by* is the new key),
        if it is active and was not rotated before; True if it was."""

    @abstractmethod
    async def deactivate_api_key(self, key_id: str) -> bool:
        """Revoke. True if the key exists (revoking twice is not an error)."""

    @abstractmethod
    async def delete_api_key(self, key_id: str) -> bool: ...

    @abstractmethod
    async def count_api_keys(self) -> int: ...

    # -- resumable uploads (tus) -------------------------------------------------------
    @abstractmethod
    async def create_upload(self, upload: Upload) -> None: ...

    @abstractmethod
    async def get_upload(self, upload_id: str) -> Upload | None: ...

    @abstractmethod
    async def advance_upload(
        self, upload_id: str, from_offset: int, upload: Upload, token: str | None = None
    ) -> bool:
        """Store *upload* (its offset, expiry, staging state, completion) if the stored
        offset is still *from_offset*, it is not complete and (given *token*) the caller
        still holds its lease; False otherwise. Offsets only move forward this way,
        whoever else writes."""

    @abstractmethod
    async def claim_upload(
        self, upload_id: str, token: str, now: datetime, until: datetime
    ) -> bool:
        """Take (or renew) the upload's lease for *token* until *until*: only one request
        at a time writes an upload, in any process. False while another token holds an
        unexpired lease."""

    @abstractmethod
    async def release_upload(self, upload_id: str, token: str) -> None:
        """Give the lease back (if *token* still holds it)."""

    @abstractmethod
    async def delete_uploads(self, upload_ids: Collection[str]) -> int:
        """Forget these uploads; how many there were."""

    @abstractmethod
    async def expired_uploads(self, now: datetime, limit: int = 1000) -> list[Upload]:
        """Uploads whose expiry is at or before *now*, oldest first."""

    @abstractmethod
    async def count_uploads(self) -> int:
        """Uploads not yet complete."""

    # -- operations -------------------------------------------------------------------
    @abstractmethod
    async def count_open_scans(self) -> int:
        """Scans begun and neither completed nor abandoned."""

    @abstractmethod
    async def record_maintenance(self, run: MaintenanceRun) -> None:
        """Keep *run* as the last run of its task (replacing the one before)."""

    @abstractmethod
    async def maintenance_runs(self) -> list[MaintenanceRun]:
        """The last run of each task that has run, by task name."""

    # -- shared conveniences ---------------------------------------------------------
    async def get_blob(self, sha256: str) -> BlobRecord | None:
        return (await self.get_blobs([sha256])).get(sha256)

    async def put_blob(self, blob: BlobRecord) -> bool:
        (written,) = await self.put_blobs([blob])
        return written

    def describe(self) -> dict[str, Any]:
        """Safe-to-show description (no credentials)."""
        return {"type": self.kind}
