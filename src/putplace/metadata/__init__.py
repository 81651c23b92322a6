"""Metadata stores: SQLite (embedded default) and MongoDB (scale-out)."""

from __future__ import annotations

from urllib.parse import urlsplit

from putplace.config import Settings, sqlite_path
from putplace.metadata.base import (
    DuplicateError,
    MetadataStore,
    StoreError,
    StoreUnavailableError,
)

__all__ = [
    "DuplicateError",
    "MetadataStore",
    "StoreError",
    "StoreUnavailableError",
    "create_metadata_store",
]


def create_metadata_store(settings: Settings) -> MetadataStore:
    """The store named by ``settings.database_url`` (not yet opened)."""
    if urlsplit(settings.database_url).scheme == "sqlite":
        from putplace.metadata.sqlite import SQLiteMetadataStore

        return SQLiteMetadataStore(sqlite_path(settings.database_url))
    from putplace.metadata.mongo import MongoMetadataStore

    return MongoMetadataStore(
        settings.database_url,
        database=settings.database_name,
        max_pool_size=settings.mongo_max_pool_size,
        timeout_ms=settings.mongo_timeout_ms,
    )
