"""Opening and closing the stores: the one way the app, ``ppserver`` and tests get them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from putplace.blobs import BlobStore, create_blob_store
from putplace.config import Settings
from putplace.coordination import Coordinator, LocalCoordinator, create_coordinator
from putplace.metadata import MetadataStore, create_metadata_store


@dataclass(frozen=True)
class Stores:
    metadata: MetadataStore
    blobs: BlobStore
    #: Limits the server's processes share (rate, quota reservations, key revocations).
    coordination: Coordinator = field(default_factory=LocalCoordinator)


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
        coordination = create_coordinator(settings)
        try:
            yield Stores(metadata, blobs, coordination)
        finally:
            await coordination.close()
            await blobs.close()
