"""Registering file metadata and describing it with its content status.

Shared by ``POST /put_file`` and ``POST /put_files`` so a record means the same thing
whichever endpoint stored it.
"""

from __future__ import annotations

from collections.abc import Sequence

from putplace.auth import utcnow
from putplace.metadata import MetadataStore
from putplace.models import BlobRecord, BlobState, FileMetadata, FileRecord, FileResponse


def upload_url(sha256: str) -> str:
    return f"/upload_file/{sha256}"


def describe(record: FileRecord, blob: BlobRecord | None) -> FileResponse:
    """The wire form of a record. Symlinks carry no content, so never need an upload."""
    has_content = blob is not None and blob.state is BlobState.present
    required = not has_content and not record.is_symlink
    return FileResponse(
        **record.model_dump(exclude={"created_at", "updated_at"}),
        has_file_content=has_content,
        file_uploaded_at=blob.stored_at if has_content and blob else None,
        upload_required=required,
        upload_url=upload_url(record.sha256) if required else None,
    )


async def describe_all(store: MetadataStore, records: Sequence[FileRecord]) -> list[FileResponse]:
    blobs = await store.get_blobs({r.sha256 for r in records})
    return [describe(r, blobs.get(r.sha256)) for r in records]


async def register(store: MetadataStore, files: Sequence[FileMetadata]) -> list[FileResponse]:
    """Store *files* in one write and answer, per record, whether content is needed."""
    records = await store.put_files(files, utcnow())
    return await describe_all(store, records)
