"""Shared fixtures: backend stacks, a real server on loopback, API keys.

A *stack* is a metadata backend plus a blob backend. API and end-to-end tests run once
per stack: SQLite + local disk (the embedded default), MongoDB + local disk, and
SQLite + S3. MongoDB tests talk to mongoeco's wire server (or PUTPLACE_TEST_MONGODB_URI),
S3 tests to moto's S3 server (or PUTPLACE_TEST_S3_ENDPOINT); see tests/support/.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from putplace.auth import generate_key, hash_key, utcnow
from putplace.config import Settings
from putplace.models import Scope
from putplace.service.stores import open_metadata
from tests.support.servers import running_server

pytest_plugins = ["tests.support.mongo", "tests.support.s3", "tests.support.redis"]

STACKS = ["sqlite-local", "mongodb-local", "sqlite-s3"]


def make_settings(
    request: pytest.FixtureRequest, stack: str, tmp_path: Path, **extra: Any
) -> Settings:
    """Settings for *stack* with fresh, isolated storage for one test."""
    database, blobs = stack.split("-")
    values: dict[str, Any] = {"fsync": False, "key_cache_seconds": 0}
    if database == "sqlite":
        values["database_url"] = f"sqlite:///{tmp_path}/putplace.db"
    else:
        from tests.support.mongo import drop_database  # a plugin: imported by pytest first

        uri = request.getfixturevalue("mongo_uri")
        values["database_url"] = uri
        values["database_name"] = name = f"pp_{uuid.uuid4().hex[:16]}"
        request.addfinalizer(lambda: drop_database(uri, name))
    if blobs == "local":
        values["storage_url"] = f"file://{tmp_path}/blobs"
    else:
        s3: dict[str, Any] = dict(request.getfixturevalue("s3_config"))
        bucket = s3.pop("bucket")
        values["storage_url"] = f"s3://{bucket}/t-{uuid.uuid4().hex[:12]}/"
        values.update(s3)
    values.update(extra)
    return Settings(**values)


@pytest.fixture(params=STACKS)
def stack(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(request: pytest.FixtureRequest, stack: str, tmp_path: Path) -> Settings:
    return make_settings(request, stack, tmp_path)


@pytest.fixture
def server_url(settings: Settings) -> Iterator[str]:
    with running_server(settings) as url:
        yield url


@dataclass(frozen=True)
class Keys:
    read: str
    write: str
    admin: str
    revoked: str


async def seed_keys(settings: Settings) -> Keys:
    async with open_metadata(settings) as store:
        made: dict[str, str] = {}
        for name, scope in (
            ("read", Scope.read),
            ("write", Scope.write),
            ("admin", Scope.admin),
            ("revoked", Scope.admin),
        ):
            key = generate_key()
            record = await store.add_api_key(
                key_hash=hash_key(key), name=name, description=None, scope=scope,
                created_at=utcnow(),
            )  # fmt: skip
            if name == "revoked":
                await store.deactivate_api_key(record.id)
            made[name] = key
        return Keys(**made)


@pytest.fixture
async def keys(settings: Settings) -> Keys:
    """One key of each scope plus a revoked one, stored before the server starts."""
    return await seed_keys(settings)


@pytest.fixture
async def api(server_url: str, keys: Keys) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the running server, sending the write key by default."""
    async with httpx.AsyncClient(
        base_url=server_url, headers={"X-API-Key": keys.write}, timeout=60
    ) as client:
        yield client
