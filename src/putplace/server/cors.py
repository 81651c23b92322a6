"""CORS for browsers calling the API from another origin (tus-js-client, web apps)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

#: Request headers a browser may send: the key and every tus header.
ALLOWED_HEADERS = [
    "X-API-Key", "Content-Type", "Tus-Resumable", "Upload-Length", "Upload-Offset",
    "Upload-Metadata", "Upload-Checksum", "Upload-Concat", "Upload-Defer-Length",
    "X-HTTP-Method-Override", "X-Requested-With",
]  # fmt: skip
#: Response headers a browser's script may read: where an upload is and how far it got.
EXPOSED_HEADERS = [
    "Location", "Tus-Resumable", "Tus-Version", "Tus-Extension", "Tus-Max-Size",
    "Tus-Checksum-Algorithm", "Upload-Offset", "Upload-Length", "Upload-Metadata",
    "Upload-Expires", "Upload-Concat", "Retry-After",
]  # fmt: skip


def add_cors(app: FastAPI, origins: str) -> None:
    """Answer preflights and label responses for *origins* (comma-separated, or ``*``)."""
    allowed = [origin.strip() for origin in origins.split(",") if origin.strip()]
    app.add_middleware(
        CORSMiddleware,
        allow_origins=allowed,
        allow_methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=ALLOWED_HEADERS,
        expose_headers=EXPOSED_HEADERS,
        max_age=600,
    )
