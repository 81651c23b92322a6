"""Content: multipart ``POST /upload_file/{sha256}``, raw ``PUT /blobs/{sha256}`` and
``GET /download/{sha256}``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.requests import ClientDisconnect

from putplace.auth import utcnow
from putplace.blobs.base import BlobNotFoundError
from putplace.blobs.ingest import (
    HashMismatchError,
    SizeMismatchError,
    TooLargeError,
    store_verified,
)
from putplace.models import BlobRecord, BlobState, UploadResponse
from putplace.server.deps import ReadKey, State, WriteKey
from putplace.server.limits import UploadIdleError, with_idle_timeout
from putplace.server.multipart import MissingFieldError, MultipartError, iter_field
from putplace.server.ranges import RangeNotSatisfiableError, parse_range
from putplace.server.routes.files import Sha256Path, check_sha256
from putplace.server.state import AppState

router = APIRouter(tags=["content"])
log = logging.getLogger("putplace.server")

UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Bad hash, hash or size mismatch, or malformed multipart body"},
    404: {"description": "No metadata registered for this hostname, filepath and hash"},
    413: {"description": "Larger than the server's upload limit"},
    507: {"description": "The blob store is full"},
}


async def ingest(
    state: AppState, sha256: str, chunks: AsyncIterable[bytes], expected_size: int
) -> int:
    """Verify and store *chunks* as *sha256*, then record the blob; HTTP errors on refusal."""
    try:
        size = await store_verified(
            state.blobs,
            sha256,
            with_idle_timeout(chunks, state.settings.upload_idle_timeout_seconds),
            expected_size=expected_size,
            max_size=state.settings.max_upload_bytes,
        )
    except (HashMismatchError, SizeMismatchError) as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(exc)) from None
    except TooLargeError as exc:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=str(exc)) from None
    except UploadIdleError as exc:
        raise HTTPException(
            status.HTTP_408_REQUEST_TIMEOUT, detail=f"upload stalled: {exc}"
        ) from None
    except MissingFieldError:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=[
                {"type": "missing", "loc": ["body", "file"], "msg": "Field required", "input": None}
            ],
        ) from None
    except MultipartError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(exc)) from None
    except ClientDisconnect:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, detail="client disconnected during upload"
        ) from None
    stored = BlobRecord(sha256=sha256, size=size, state=BlobState.present, stored_at=utcnow())
    if not await state.metadata.add_blob(stored):
        # Already recorded: a concurrent upload, or a quarantined blob now replaced.
        await state.metadata.set_blob_state(sha256, BlobState.present)
    return size


async def needs_content(state: AppState, sha256: str) -> bool:
    """True unless a verified copy of this content is stored."""
    blob = await state.metadata.get_blob(sha256)
    return blob is None or blob.state is not BlobState.present


@router.post(
    "/upload_file/{sha256}",
    response_model=UploadResponse,
    summary="Upload content registered by /put_file (multipart field `file`)",
    responses=UPLOAD_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {"file": {"type": "string", "format": "binary"}},
                    }
                }
            },
        }
    },
)
async def upload_file(
    sha256: Sha256Path,
    request: Request,
    state: State,
    _: WriteKey,
    hostname: Annotated[str, Query(min_length=1, max_length=255)],
    filepath: Annotated[str, Query(min_length=1, max_length=4096)],
) -> UploadResponse:
    check_sha256(sha256)
    record = await state.metadata.get_file(hostname, filepath)
    if record is None or record.sha256 != sha256:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail="File metadata not found: register it with POST /put_file first",
        )
    if record.file_size > state.settings.max_upload_bytes:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"upload exceeds the limit of {state.settings.max_upload_bytes} bytes",
        )
    message = "File content already stored"
    if await needs_content(state, sha256):
        await ingest(state, sha256, iter_field(request, "file"), record.file_size)
        message = "File uploaded successfully"
    return UploadResponse(
        message=message,
        sha256=sha256,
        file_size=record.file_size,
        hostname=hostname,
        filepath=filepath,
    )


@router.put(
    "/blobs/{sha256}",
    summary="Upload content as a raw body (streamed, verified)",
    description="PutPlace's own client sends content here as `application/octet-stream`. "
    "The content must be registered first by a file record with this hash; the server "
    "hashes the bytes as they arrive and stores nothing unless hash and size match.",
    responses={
        **UPLOAD_ERRORS,
        201: {"description": "Stored"},
        404: {"description": "No file record has this hash"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def put_blob(sha256: Sha256Path, request: Request, state: State, _: WriteKey) -> Response:
    check_sha256(sha256)
    records = await state.metadata.files_with_content(sha256, limit=1)
    if not records:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail="No file record has this content: register it with POST /put_files first",
        )
    expected = records[0].file_size
    if expected > state.settings.max_upload_bytes:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"upload exceeds the limit of {state.settings.max_upload_bytes} bytes",
        )
    code = status.HTTP_200_OK
    if await needs_content(state, sha256):
        await ingest(state, sha256, request.stream(), expected)
        code = status.HTTP_201_CREATED
    return JSONResponse({"sha256": sha256, "file_size": expected}, status_code=code)


@router.get(
    "/download/{sha256}",
    summary="Stream stored content; supports Range requests",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The content"},
        206: {"description": "The requested byte range"},
        304: {"description": "Not modified (If-None-Match matched the ETag)"},
        404: {"description": "Content not stored"},
        416: {"description": "Range not satisfiable"},
    },
)
async def download(
    sha256: Sha256Path,
    state: State,
    _: ReadKey,
    range_header: Annotated[str | None, Header(alias="Range")] = None,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
) -> Response:
    check_sha256(sha256)
    blob = await state.metadata.get_blob(sha256)
    if blob is None or blob.state is not BlobState.present:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="Content not found")
    etag = f'"{sha256}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "private, immutable"}
    if if_none_match is not None and etag in {t.strip() for t in if_none_match.split(",")}:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    try:
        byte_range = parse_range(range_header, blob.size)
    except RangeNotSatisfiableError:
        raise HTTPException(
            status.HTTP_416_RANGE_NOT_SATISFIABLE,
            detail="Range not satisfiable",
            headers={"Content-Range": f"bytes */{blob.size}"},
        ) from None
    start, end = byte_range if byte_range else (0, blob.size - 1)
    length = end - start + 1
    headers["Content-Length"] = str(length)
    code = status.HTTP_200_OK
    if byte_range is not None:
        code = status.HTTP_206_PARTIAL_CONTENT
        headers["Content-Range"] = f"bytes {start}-{end}/{blob.size}"
    body = await _open_stream(state, sha256, start, length)
    return StreamingResponse(
        body, status_code=code, headers=headers, media_type="application/octet-stream"
    )


async def _open_stream(
    state: AppState, sha256: str, start: int, length: int
) -> AsyncIterator[bytes]:
    """Start reading before the response starts, so a missing blob is a clean 404."""
    if length == 0:
        return _chain(b"", None)
    stream = state.blobs.read(sha256, start, length)
    try:
        first = await anext(stream)
    except BlobNotFoundError:
        log.error("blob %s is recorded present but missing from the blob store", sha256)
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="Content not found") from None
    except StopAsyncIteration:
        first = b""
    return _chain(first, stream)


async def _chain(first: bytes, rest: AsyncIterator[bytes] | None) -> AsyncIterator[bytes]:
    if first:
        yield first
    if rest is not None:
        async for chunk in rest:
            yield chunk
