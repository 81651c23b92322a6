"""Blob stores: local disk (embedded default) and S3 / S3-compatible."""

from __future__ import annotations

from urllib.parse import urlsplit

from putplace.blobs.base import BlobStore
from putplace.config import Settings, file_storage_path

__all__ = ["BlobStore", "create_blob_store"]


def create_blob_store(settings: Settings) -> BlobStore:
    """The store named by ``settings.storage_url`` (not yet opened)."""
    if urlsplit(settings.storage_url).scheme == "file":
        from putplace.blobs.local import LocalBlobStore

        return LocalBlobStore(file_storage_path(settings.storage_url), fsync=settings.fsync)
    from putplace.blobs.s3 import S3BlobStore

    return S3BlobStore.from_settings(settings)
