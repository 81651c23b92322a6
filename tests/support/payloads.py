"""Builders for wire-protocol request bodies."""

from __future__ import annotations

import hashlib
import struct
import uuid
from typing import Any

import httpx


def metadata(
    content: bytes,
    *,
    hostname: str = "host-a",
    filepath: str | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A ``POST /put_file`` body describing *content*."""
    body: dict[str, Any] = {
        "filepath": filepath or f"/data/{uuid.uuid4().hex}.bin",
        "hostname": hostname,
        "ip_address": "192.0.2.10",
        "sha256": hashlib.sha256(content).hexdigest(),
        "file_size": len(content),
        "file_mode": 0o100644,
        "file_uid": 1000,
        "file_gid": 1000,
        "file_mtime": 1_700_000_000.5,
        "file_atime": 1_700_000_001.5,
        "file_ctime": 1_700_000_002.5,
    }
    body.update(overrides)
    return body


async def put(api: httpx.AsyncClient, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
    return await api.post("/put_file", json=body, **kwargs)


async def upload(
    api: httpx.AsyncClient, body: dict[str, Any], content: bytes, **kwargs: Any
) -> httpx.Response:
    """Upload *content* for the record *body* the way existing clients do (multipart)."""
    return await api.post(
        f"/upload_file/{body['sha256']}",
        params={"hostname": body["hostname"], "filepath": body["filepath"]},
        files={"file": ("blob.bin", content, "application/octet-stream")},
        **kwargs,
    )


async def store(api: httpx.AsyncClient, content: bytes, **meta: Any) -> dict[str, Any]:
    """Register and upload *content*; return the metadata body used."""
    body = metadata(content, **meta)
    assert (await put(api, body)).status_code == 201
    response = await upload(api, body, content)
    assert response.status_code == 200, response.text
    return body


def bundle(members: list[tuple[str, bytes]], *, declared: list[int] | None = None) -> bytes:
    """A ``POST /bundles`` body: each ``(sha256, bytes)`` (the hash need not match), with
    the lengths in *declared* when given instead of the true ones."""
    lengths = declared or [len(data) for _, data in members]
    header = b"PPBNDL01" + struct.pack(">I", len(members))
    header += b"".join(
        struct.pack(">32sQ", bytes.fromhex(sha), n)
        for (sha, _), n in zip(members, lengths, strict=True)
    )
    return header + b"".join(data for _, data in members)
