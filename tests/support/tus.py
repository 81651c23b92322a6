"""A few tus 1.0 requests, spelled out, for the protocol tests."""

from __future__ import annotations

import base64
import hashlib
import zlib
from typing import Any

import httpx

TUS = {"Tus-Resumable": "1.0.0"}
OFFSET_TYPE = "application/offset+octet-stream"


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit: slow, for short
    test bodies, and independent of the library the code under test uses."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def encode_metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


async def create(
    api: httpx.AsyncClient,
    length: int | None,
    *,
    body: bytes | None = None,
    concat: str | None = None,
    headers: dict[str, str] | None = None,
    **metadata: str,
) -> httpx.Response:
    sent: dict[str, str] = {**TUS, **(headers or {})}
    if length is not None:
        sent["Upload-Length"] = str(length)
    if metadata:
        sent["Upload-Metadata"] = encode_metadata(**metadata)
    if concat is not None:
        sent["Upload-Concat"] = concat
    if body is not None:
        sent["Content-Type"] = OFFSET_TYPE
    return await api.post("/tus/", headers=sent, content=body)


async def create_for(api: httpx.AsyncClient, record: dict[str, Any], **kw: Any) -> str:
    """Create the upload of a registered record's content; its URL."""
    response = await create(api, record["file_size"], sha256=record["sha256"], **kw)
    assert response.status_code == 201, response.text
    return str(response.headers["Location"])


async def patch(
    api: httpx.AsyncClient,
    url: str,
    offset: int,
    data: bytes,
    *,
    checksum: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    sent = {**TUS, "Upload-Offset": str(offset), "Content-Type": OFFSET_TYPE, **(headers or {})}
    if checksum is not None:
        # CRCs as their definitions say (big-endian), not through the code under test.
        if checksum == "crc32c":
            digest = crc32c(data).to_bytes(4, "big")
        elif checksum == "crc32":
            digest = zlib.crc32(data).to_bytes(4, "big")
        else:
            digest = hashlib.new(checksum, data).digest()
        sent["Upload-Checksum"] = f"{checksum} {base64.b64encode(digest).decode()}"
    return await api.patch(url, headers=sent, content=data)


async def offset(api: httpx.AsyncClient, url: str) -> int:
    response = await api.head(url, headers=TUS)
    assert response.status_code == 200, response.status_code
    return int(response.headers["Upload-Offset"])
