"""API key management (admin scope): create, list, revoke, delete."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from putplace.auth import generate_key, hash_key, utcnow
from putplace.metadata import MetadataStore
from putplace.models import ApiKeyCreate, ApiKeyCreated, ApiKeyInfo
from putplace.server.deps import AdminKey, State

router = APIRouter(prefix="/api_keys", tags=["api keys"])


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


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ApiKeyCreated,
    summary="Create a key (shown once in the answer)",
)
async def create(body: ApiKeyCreate, state: State, _: AdminKey) -> ApiKeyCreated:
    return await create_key(state.metadata, body)


@router.get("", response_model=list[ApiKeyInfo], summary="List keys (never the keys themselves)")
async def list_keys(state: State, _: AdminKey) -> list[ApiKeyInfo]:
    return [ApiKeyInfo.from_record(r) for r in await state.metadata.list_api_keys()]


async def _existing(state: State, key_id: str) -> str:
    record = await state.metadata.get_api_key_by_id(key_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="API key not found")
    state.key_cache.forget(record.key_hash)
    return record.id


@router.put("/{key_id}/revoke", summary="Revoke a key; it stops working at once")
async def revoke(key_id: str, state: State, _: AdminKey) -> dict[str, str]:
    await state.metadata.deactivate_api_key(await _existing(state, key_id))
    return {"message": "API key revoked", "id": key_id}


@router.delete("/{key_id}", summary="Delete a key")
async def delete(key_id: str, state: State, _: AdminKey) -> dict[str, str]:
    await state.metadata.delete_api_key(await _existing(state, key_id))
    return {"message": "API key deleted", "id": key_id}
