"""API key management (admin scope): create, list, revoke, delete."""

from __future__ import annotations

from fastapi import APIRouter, status

from putplace.models import ApiKeyCreate, ApiKeyCreated, ApiKeyInfo
from putplace.server.deps import Admin
from putplace.service import keys

router = APIRouter(prefix="/api_keys", tags=["api keys"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ApiKeyCreated,
    summary="Create a key (shown once in the answer)",
)
async def create(body: ApiKeyCreate, caller: Admin) -> ApiKeyCreated:
    return await keys.create_key(caller.state.stores.metadata, body)


@router.get("", response_model=list[ApiKeyInfo], summary="List keys (never the keys themselves)")
async def list_keys(caller: Admin) -> list[ApiKeyInfo]:
    return await keys.list_keys(caller.state.stores.metadata)


@router.put("/{key_id}/revoke", summary="Revoke a key; it stops working at once")
async def revoke(key_id: str, caller: Admin) -> dict[str, str]:
    await keys.revoke_key(caller.state.stores.metadata, key_id, caller.state.key_cache)
    return {"message": "API key revoked", "id": key_id}


@router.delete("/{key_id}", summary="Delete a key")
async def delete(key_id: str, caller: Admin) -> dict[str, str]:
    await keys.delete_key(caller.state.stores.metadata, key_id, caller.state.key_cache)
    return {"message": "API key deleted", "id": key_id}
