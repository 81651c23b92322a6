"""Key lifecycle rules over a real store: rotation, its races, and what the per-process
caches of several API processes see."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from putplace import auth
from putplace.auth import KeyCache
from putplace.metadata.sqlite import SQLiteMetadataStore
from putplace.models import ApiKeyCreate, Scope
from putplace.service import keys
from putplace.service.errors import ConflictError, InvalidInputError, UnauthenticatedError


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteMetadataStore]:
    opened = SQLiteMetadataStore(tmp_path / "keys.db")
    await opened.open()
    yield opened
    await opened.close()


class Clock:
    """Both clocks a key check reads (wall time for expiry, monotonic for the cache),
    moved together."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = 0.0
        wall, mono = auth.utcnow, auth.time.monotonic
        monkeypatch.setattr(keys, "utcnow", lambda: wall() + timedelta(seconds=self.offset))
        monkeypatch.setattr(auth.time, "monotonic", lambda: mono() + self.offset)

    def advance(self, seconds: float) -> None:
        self.offset += seconds


async def test_a_rotation_reaches_every_process_within_the_cache_ttl(
    store: SQLiteMetadataStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(monkeypatch)
    made = await keys.create_key(store, ApiKeyCreate(name="fleet"))
    other_process = KeyCache(ttl=120)
    await keys.authenticate(store, other_process, made.api_key)  # cached over there
    await keys.rotate_key(store, made.id, timedelta(0))
    # Used every minute, the key's last use is noted each time; that must not keep the
    # cached record (from before the rotation) alive past its TTL.
    clock.advance(61)
    await keys.authenticate(store, other_process, made.api_key)  # within the TTL: cached
    clock.advance(61)
    with pytest.raises(UnauthenticatedError, match="rotated"):
        await keys.authenticate(store, other_process, made.api_key)


async def test_rotating_twice_or_a_revoked_key_is_refused(store: SQLiteMetadataStore) -> None:
    made = await keys.create_key(store, ApiKeyCreate(name="fleet", scope=Scope.read))
    first = await keys.rotate_key(store, made.id, timedelta(days=1))
    with pytest.raises(ConflictError, match=f"rotate key {first.id}"):
        await keys.rotate_key(store, made.id, timedelta(days=1))
    assert [k.name for k in await keys.list_keys(store)] == ["fleet", "fleet"]
    # The store refuses to mark a key rotated twice or revoked, whoever asks first.
    await keys.revoke_key(store, first.id)
    assert not await store.expire_api_key(first.id, auth.utcnow(), replaced_by=made.id)
    assert not await store.expire_api_key(made.id, auth.utcnow(), replaced_by=first.id)


async def test_rotating_a_key_that_expires_at_the_end_of_time(
    store: SQLiteMetadataStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(monkeypatch)
    far = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    made = await keys.create_key(store, ApiKeyCreate(name="long", expires_at=far))
    clock.advance(10)  # the same lifetime from now would be past year 9999
    rotated = await keys.rotate_key(store, made.id, timedelta(hours=1))
    assert rotated.expires_at is not None
    assert rotated.expires_at >= far


async def test_an_admin_key_cannot_be_bound_to_hosts(store: SQLiteMetadataStore) -> None:
    with pytest.raises(InvalidInputError, match="admin key cannot be bound"):
        await keys.create_key(store, ApiKeyCreate(name="a", scope=Scope.admin, hosts=["web-*"]))
    assert await keys.list_keys(store) == []


async def test_a_revocation_heard_during_a_lookup_is_not_undone_by_it(
    store: SQLiteMetadataStore,
) -> None:
    """A request reads a key from the store just before it is revoked elsewhere; the
    revocation is heard while that read is on its way back. The old record must not then
    be cached, or the revoked key would keep working for the cache's TTL."""
    made = await keys.create_key(store, ApiKeyCreate(name="fleet"))
    cache = KeyCache(ttl=120)
    read_before_revocation = store.get_api_key

    async def forget(key_hash: str) -> None:
        cache.forget(key_hash)

    async def get_api_key(key_hash: str) -> object:
        record = await read_before_revocation(key_hash)
        await keys.revoke_key(store, made.id, forget)  # announced meanwhile
        return record

    store.get_api_key = get_api_key  # type: ignore[method-assign]
    await keys.authenticate(store, cache, made.api_key)  # answered from what it read
    del store.get_api_key
    with pytest.raises(UnauthenticatedError, match="revoked"):
        await keys.authenticate(store, cache, made.api_key)
