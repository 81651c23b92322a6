"""Service status: ``GET /`` and ``GET /health``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status

from putplace.models import HealthResponse
from putplace.server.deps import State

router = APIRouter(tags=["status"])


@router.get("/", summary="Service banner")
async def root() -> dict[str, str]:
    return {"message": "PutPlace API", "status": "running"}


@router.get(
    "/health",
    response_model=HealthResponse,
    summary="Database and blob store status",
    responses={503: {"description": "A store does not answer (status `degraded`)."}},
)
async def health(state: State, response: Response) -> dict[str, Any]:
    metadata, blobs, coordination = (
        state.stores.metadata,
        state.stores.blobs,
        state.stores.coordination,
    )
    database_ok = await metadata.ping()
    storage_ok = await blobs.ping()
    await coordination.ping()  # refreshes what describe() says
    healthy = database_ok and storage_ok
    if not healthy:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return {
        "status": "healthy" if healthy else "degraded",
        "database": {**metadata.describe(), "status": _word(database_ok)},
        "storage": {**blobs.describe(), "status": _word(storage_ok)},
        "limits": coordination.describe(),
    }


def _word(ok: bool) -> str:
    return "healthy" if ok else "unavailable"
