"""FastAPI dependencies: the per-process state and API-key authentication by scope."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader

from putplace.auth import hash_key, key_matches, looks_like_key, utcnow
from putplace.models import ApiKeyRecord, Scope
from putplace.server.state import AppState

#: ``last_used_at`` is written at most this often per key, not on every request.
LAST_USED_RESOLUTION = timedelta(seconds=60)

api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="An API key from `ppserver keys create` or `POST /api_keys`.",
)


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.putplace
    return state


State = Annotated[AppState, Depends(get_state)]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "X-API-Key"}
    )


async def authenticate(state: AppState, key: str | None) -> ApiKeyRecord:
    """The active key record for *key*, or 401."""
    if not key:
        raise _unauthorized("Missing API key. Send it in the X-API-Key header.")
    if not looks_like_key(key):
        raise _unauthorized("Invalid API key")
    key_hash = hash_key(key)
    record = state.key_cache.get(key_hash)
    if record is None:
        record = await state.metadata.get_api_key(key_hash)
        if record is None or not key_matches(key, record):
            raise _unauthorized("Invalid API key")
        if record.is_active:
            state.key_cache.put(record)
    if not record.is_active:
        raise _unauthorized("API key has been revoked")
    now = utcnow()
    if record.last_used_at is None or now - record.last_used_at >= LAST_USED_RESOLUTION:
        # Awaited (once a minute per key at most) so the time is stored when we answer.
        await state.metadata.touch_api_key(record.id, now)
        record = record.model_copy(update={"last_used_at": now})
        state.key_cache.put(record)
    return record


def require(scope: Scope) -> Callable[..., Awaitable[ApiKeyRecord]]:
    """Dependency: an authenticated key whose scope includes *scope*, else 401/403."""

    async def dependency(
        request: Request, state: State, key: Annotated[str | None, Security(api_key_header)]
    ) -> ApiKeyRecord:
        record = await authenticate(state, key)
        request.state.api_key_id = record.id  # for the access log; never the key itself
        wait = state.rate_limiter.retry_after(record.id)
        if wait:
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                detail="Rate limit exceeded for this API key",
                headers={"Retry-After": str(wait)},
            )
        if not record.scope.allows(scope):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"This API key has '{record.scope}' scope; '{scope}' is required.",
            )
        return record

    dependency.__name__ = f"require_{scope.value}"
    return dependency


ReadKey = Annotated[ApiKeyRecord, Depends(require(Scope.read))]
WriteKey = Annotated[ApiKeyRecord, Depends(require(Scope.write))]
AdminKey = Annotated[ApiKeyRecord, Depends(require(Scope.admin))]
