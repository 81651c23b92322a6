"""File records: registering where files live and describing them with their content status.

``POST /put_file`` and ``POST /put_files`` both register through :func:`register`, so a
record means the same thing whichever endpoint stored it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from putplace import telemetry
from putplace.auth import utcnow
from putplace.config import Quota
from putplace.coordination import Coordinator
from putplace.digest import INVALID_SHA256, is_sha256_hex
from putplace.metadata import MetadataStore
from putplace.metadata.base import dedupe_by_location
from putplace.models import (
    ApiKeyRecord,
    BlobRecord,
    BlobState,
    FileMetadata,
    FileRecord,
    Scope,
)
from putplace.service import keys, quotas, scans
from putplace.service.errors import InvalidInputError, NotFoundError

NO_QUOTA = Quota()


def checked_sha256(sha256: str) -> str:
    """*sha256* itself when it is 64 lowercase hex digits, else :class:`InvalidInputError`."""
    if not is_sha256_hex(sha256):
        raise InvalidInputError(INVALID_SHA256)
    return sha256


def upload_url(sha256: str) -> str:
    return f"/upload_file/{sha256}"


#: A record's wire form (``FileResponse``'s fields, ``_id`` included), built as a plain
#: dict: thousands are answered per batch, and a model per record would cost more than
#: storing it.
FileAnswer = dict[str, Any]
_REPORTED = tuple(FileMetadata.model_fields)


def describe(meta: FileMetadata, record_id: str, blob: BlobRecord | None) -> FileAnswer:
    """The wire form of a stored record. Symlinks carry no content, so never need an
    upload."""
    has_content = blob is not None and blob.state is BlobState.present
    required = not has_content and not meta.is_symlink
    fields = meta.__dict__  # a FileRecord's holds more (id, timestamps): take only these
    answer = {name: fields[name] for name in _REPORTED}
    answer["_id"] = record_id
    answer["has_file_content"] = has_content
    answer["file_uploaded_at"] = blob.stored_at if has_content and blob else None
    answer["upload_required"] = required
    answer["upload_url"] = upload_url(meta.sha256) if required else None
    return answer


def if_sent(blob: BlobRecord | None, sent: Mapping[str, datetime]) -> BlobRecord | None:
    """The blob if the namespace sent its content (with the time it was first stored,
    by whichever namespace), else None."""
    return blob if blob is not None and blob.sha256 in sent else None


def as_sent(blob: BlobRecord | None, sent: Mapping[str, datetime]) -> BlobRecord | None:
    """The blob as a namespace may know it: not at all unless it sent the content, and
    uploaded when it sent it (not when another namespace did)."""
    if (blob := if_sent(blob, sent)) is None:
        return None
    when = sent[blob.sha256]
    # Its first sender sent it when it was stored: most blobs answered need no copy.
    return blob if blob.stored_at == when else blob.model_copy(update={"stored_at": when})


async def describe_all(store: MetadataStore, records: Sequence[FileRecord]) -> list[FileAnswer]:
    """Each record's answer; its content counts as held only when its own namespace sent
    it."""
    blobs = await store.get_blobs({r.sha256 for r in records})
    by_namespace: dict[str, set[str]] = {}
    for record in records:
        by_namespace.setdefault(record.namespace, set()).add(record.sha256)
    sent = {
        namespace: await store.possessed([namespace], hashes & blobs.keys())
        for namespace, hashes in by_namespace.items()
    }
    return [describe(r, r.id, as_sent(blobs.get(r.sha256), sent[r.namespace])) for r in records]


def describe_brief(meta: FileMetadata, record_id: str, blob: BlobRecord | None) -> FileAnswer:
    """Only what a client needs to go on: the record's id and whether to upload. A full
    answer repeats every field the client just sent; decoding those took 8% of the
    client's time in a first ingest."""
    has_content = blob is not None and blob.state is BlobState.present
    return {"_id": record_id, "upload_required": not has_content and not meta.is_symlink}


async def register(
    store: MetadataStore,
    files: Sequence[FileMetadata],
    writer: ApiKeyRecord,
    namespace: str,
    *,
    coordination: Coordinator,
    domain: Sequence[str] = (),
    quota: Quota = NO_QUOTA,
    brief: bool = False,
    scan_id: str | None = None,
) -> list[FileAnswer]:
    """Store *files* in one write and answer, per record, whether content is needed
    (:func:`describe`, or :func:`describe_brief` when *brief*). With *scan_id*, the
    records are seen by that scan, which must be open.

    ``answers[i]`` answers ``files[i]``. A location named twice is stored once, the last
    record sent for it winning, and both records get that stored record's answer.

    Nothing is stored unless *writer* may write *namespace* and every record's host (and
    the scan's, which must be of *namespace*).

    Content counts as held only when a namespace of *domain* (the namespace's trust
    domain; default: the namespace alone) has sent it: otherwise the answer asks for it,
    exactly as if the server did not hold it, so nobody learns what others store.
    """
    keys.authorize_namespace(writer, namespace, Scope.write)
    keys.authorize_hosts(writer, {meta.hostname for meta in files})
    if scan_id is not None:
        scan = await scans.open_scan_named(store, scan_id, writer)
        if scan.namespace != namespace:
            raise InvalidInputError(f"the scan is of namespace {scan.namespace!r}")
    unique = dedupe_by_location(files)
    locations = [(m.hostname, m.filepath) for m in unique]
    room = quotas.holding_files(store, coordination, quota, namespace, locations)
    async with room:  # held until the records are written
        stored = await store.put_files(unique, utcnow(), namespace=namespace, scan_id=scan_id)
    held = {s.blob.sha256 for s in stored if s.blob is not None}
    sent = await store.possessed(domain or (namespace,), held) if held else {}
    if len(domain) > 1 and sent:
        # Sent by another namespace of the trust domain: this one holds it now too (what
        # its searches and downloads go by). Its own first time stands.
        await store.add_possession(namespace, sent, utcnow())
    avoided = [m.file_size for m, (_, b) in zip(unique, stored, strict=True)
               if b is not None and b.sha256 in sent and not m.is_symlink]  # fmt: skip
    telemetry.duplicates_avoided(avoided)
    answer = describe_brief if brief else describe
    # A brief answer has no upload time to set: the blob is not copied to set it (a copy
    # per record was 4% of a server worker's main thread in a first ingest).
    known = if_sent if brief else as_sent
    by_location = {
        (meta.hostname, meta.filepath): answer(meta, record_id, known(blob, sent))
        for meta, (record_id, blob) in zip(unique, stored, strict=True)
    }
    return [by_location[meta.hostname, meta.filepath] for meta in files]


async def first_with_content(
    store: MetadataStore, sha256: str, namespaces: Sequence[str]
) -> FileRecord:
    """The oldest record holding *sha256* in *namespaces* (empty: any);
    :class:`NotFoundError` when none does."""
    records = await store.list_files(sha256=checked_sha256(sha256), limit=1, namespaces=namespaces)
    if not records:
        raise NotFoundError("File not found")
    return records[0]
