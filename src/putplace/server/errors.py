"""Mapping of storage failures to HTTP answers: clear JSON errors, never a bare 500."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse

from putplace.blobs.base import InvalidBlobNameError, StorageFullError, StorageUnavailableError
from putplace.metadata import StoreUnavailableError

log = logging.getLogger("putplace.server")


def install_error_handlers(app: FastAPI) -> None:
    async def storage_full(_: Request, exc: Exception) -> JSONResponse:
        log.error("blob store full: %s", exc)
        return JSONResponse(
            {"detail": "Insufficient storage: the blob store is full"},
            status_code=status.HTTP_507_INSUFFICIENT_STORAGE,
        )

    async def unavailable(_: Request, exc: Exception) -> JSONResponse:
        log.error("store unavailable: %s", exc)
        return JSONResponse(
            {"detail": f"Service temporarily unavailable: {exc}"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "5"},
        )

    async def bad_name(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"detail": "Invalid SHA256 hash format: expected 64 lowercase hex characters"},
            status_code=status.HTTP_400_BAD_REQUEST,
        )

    app.add_exception_handler(StorageFullError, storage_full)
    app.add_exception_handler(StorageUnavailableError, unavailable)
    app.add_exception_handler(StoreUnavailableError, unavailable)
    app.add_exception_handler(InvalidBlobNameError, bad_name)
