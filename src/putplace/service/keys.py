"""API keys: creating, listing, revoking and deleting them, and authenticating requests."""

from __future__ import annotations

from datetime import timedelta

from putplace.auth import KeyCache, generate_key, hash_key, key_matches, looks_like_key, utcnow
from putplace.metadata import MetadataStore
from putplace.models import ApiKeyCreate, ApiKeyCreated, ApiKeyInfo, ApiKeyRecord, Scope
from putplace.service.errors import ForbiddenError, NotFoundError, UnauthenticatedError

#: ``last_used_at`` is written at most this often per key, not on every request.
LAST_USED_RESOLUTION = timedelta(seconds=60)


async def create_key(store: MetadataStore, request: ApiKeyCreate) -> ApiKeyCreated:
    """Make a key, store its hash, and return the key itself (the only time it is shown)."""
    key = generate_key()
    record = await store.add_api_key(
        key_hash=hash_key(key),
        name=request.name,
        description=request.description,
        scope=request.scope,
        created_at=utcnow(),
    )
    return ApiKeyCreated(**ApiKeyInfo.from_record(record).model_dump(), api_key=key)


async def list_keys(store: MetadataStore) -> list[ApiKeyInfo]:
    return [ApiKeyInfo.from_record(r) for r in await store.list_api_keys()]


async def _existing(store: MetadataStore, cache: KeyCache | None, key_id: str) -> ApiKeyRecord:
    record = await store.get_api_key_by_id(key_id)
    if record is None:
        raise NotFoundError("API key not found")
    if cache is not None:  # this process stops honouring it at once; others within the TTL
        cache.forget(record.key_hash)
    return record


async def revoke_key(store: MetadataStore, key_id: str, cache: KeyCache | None = None) -> None:
    await store.deactivate_api_key((await _existing(store, cache, key_id)).id)


async def delete_key(store: MetadataStore, key_id: str, cache: KeyCache | None = None) -> None:
    await store.delete_api_key((await _existing(store, cache, key_id)).id)


async def authenticate(store: MetadataStore, cache: KeyCache, key: str | None) -> ApiKeyRecord:
    """The active key record for *key*, else :class:`UnauthenticatedError`."""
    if not key:
        raise UnauthenticatedError("Missing API key. Send it in the X-API-Key header.")
    if not looks_like_key(key):
        raise UnauthenticatedError("Invalid API key")
    key_hash = hash_key(key)
    record = cache.get(key_hash)
    if record is None:
        record = await store.get_api_key(key_hash)
        if record is None or not key_matches(key, record):
            raise UnauthenticatedError("Invalid API key")
        if record.is_active:
            cache.put(record)
    if not record.is_active:
        raise UnauthenticatedError("API key has been revoked")
    now = utcnow()
    if record.last_used_at is None or now - record.last_used_at >= LAST_USED_RESOLUTION:
        # Awaited (once a minute per key at most) so the time is stored when we answer.
        await store.touch_api_key(record.id, now)
        record = record.model_copy(update={"last_used_at": now})
        cache.put(record)
    return record


def authorize(record: ApiKeyRecord, needed: Scope) -> None:
    if not record.scope.allows(needed):
        raise ForbiddenError(f"This API key has '{record.scope}' scope; '{needed}' is required.")
