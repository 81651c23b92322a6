"""API key management (admin scope): create, list, rotate, revoke, delete."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Body, Path, status

from putplace.models import ApiKeyCreate, ApiKeyCreated, ApiKeyInfo, ApiKeyRotate
from putplace.server.deps import Admin
from putplace.service import keys

router = APIRouter(prefix="/api_keys", tags=["api keys"])

KeyId = Annotated[str, Path(max_length=64, description="The key's `_id`.")]


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


@router.post(
    "/{key_id}/rotate",
    status_code=status.HTTP_201_CREATED,
    response_model=ApiKeyCreated,
    summary="Replace a key: a new one with the same grants; the old one works for an overlap",
    responses={404: {"description": "No such key"}, 409: {"description": "Revoked or expired"}},
)
async def rotate(
    key_id: KeyId, caller: Admin, body: Annotated[ApiKeyRotate | None, Body()] = None
) -> ApiKeyCreated:
    body = body or ApiKeyRotate()
    return await keys.rotate_key(
        caller.state.stores.metadata, key_id, timedelta(seconds=body.overlap_seconds),
        caller.state.stores.coordination.announce_key_change, body.expires_at,
    )  # fmt: skip


@router.put("/{key_id}/revoke", summary="Revoke a key; it stops working at once")
async def revoke(key_id: KeyId, caller: Admin) -> dict[str, str]:
    stores = caller.state.stores
    await keys.revoke_key(stores.metadata, key_id, stores.coordination.announce_key_change)
    return {"message": "API key revoked", "id": key_id}


@router.delete("/{key_id}", summary="Delete a key")
async def delete(key_id: KeyId, caller: Admin) -> dict[str, str]:
    stores = caller.state.stores
    await keys.delete_key(stores.metadata, key_id, stores.coordination.announce_key_change)
    return {"message": "API key deleted", "id": key_id}
