"""The ceiling for ``POST /put_file``: a bare FastAPI app that validates the same body
(``putplace.models.FileMetadata``) and the presence of ``X-API-Key``, stores nothing and
answers a small JSON object. Served by uvicorn like ppserver (``server_load`` runs it)."""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Header, status

from putplace.models import FileMetadata

app = FastAPI()


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "healthy"}


@app.post("/put_file", status_code=status.HTTP_201_CREATED)
async def put_file(
    meta: FileMetadata, x_api_key: Annotated[str, Header()]
) -> dict[str, str | bool]:
    return {"filepath": meta.filepath, "sha256": meta.sha256, "upload_required": True}
