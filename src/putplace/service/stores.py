"""Opening and closing the stores: the one way the app, ``ppserver`` and tests get them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from putplace.blobs import BlobStore, create_blob_store
from putplace.config import Settings
from putplace.metadata import MetadataStore, create_metadata_store


@dataclass(frozen=True)
class Stores:
    metadata: MetadataStore
    blobs: BlobStore


@asynccontextmanager
async def open_metadata(settings: Settings) -> AsyncIterator[MetadataStore]:
    """The metadata store alone (key management needs nothing else)."""
    metadata = create_metadata_store(settings)
    await metadata.open()
    try:
        yield metadata
    finally:
        await metadata.close()


@asynccontextmanager
async def open_stores(settings: Settings) -> AsyncIterator[Stores]:
    """Both stores, opened in order and closed in reverse, whatever happens between."""
    async with open_metadata(settings) as metadata:
        blobs = create_blob_store(settings)
        await blobs.open()
        try:
            yield Stores(metadata, blobs)
        finally:
            await blobs.close()
