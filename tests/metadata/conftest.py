"""Metadata stores for the conformance suite: one per backend, fresh storage per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from putplace.metadata.base import MetadataStore
from putplace.metadata.mongo import MongoMetadataStore
from putplace.metadata.sqlite import SQLiteMetadataStore
from tests.support.mongo import drop_database

BACKENDS = ["sqlite", "mongodb"]

#: ``await open_store()``: another opened store on the same database, as a second API
#: process would have. Closed at the end of the test.
OpenStore = Callable[[], Awaitable[MetadataStore]]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def open_store(
    request: pytest.FixtureRequest, backend: str, tmp_path: Path
) -> AsyncIterator[OpenStore]:
    opened: list[MetadataStore] = []
    if backend == "mongodb":
        uri = request.getfixturevalue("mongo_uri")
        database = f"pp_{uuid.uuid4().hex[:16]}"

    async def make() -> MetadataStore:
        store: MetadataStore
        if backend == "sqlite":
            store = SQLiteMetadataStore(tmp_path / "meta" / "putplace.db")
        else:
            store = MongoMetadataStore(uri, database=database, max_pool_size=20, timeout_ms=5000)
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()
    if backend == "mongodb" and opened:
        drop_database(uri, database)


@pytest.fixture
async def store(open_store: OpenStore) -> MetadataStore:
    return await open_store()
