"""Content: multipart ``POST /upload_file/{sha256}``, raw ``PUT /blobs/{sha256}``,
``POST /bundles`` and ``GET /download/{sha256}``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse, Response, StreamingResponse

from putplace.models import BundleResponse, FilePath, HostName, Scope, UploadResponse
from putplace.server.deps import NamespaceParam, NamespacesParam, Reader, Sha256Path, Writer
from putplace.server.multipart import iter_field
from putplace.server.ranges import RangeNotSatisfiableError, parse_range
from putplace.service import bundles, content

router = APIRouter(tags=["content"])

UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Bad hash, hash or size mismatch, or malformed multipart body"},
    404: {"description": "No metadata registered for this hostname, filepath and hash"},
    413: {"description": "Larger than the server's upload limit"},
    507: {"description": "The blob store is full"},
}


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
    caller: Writer,
    sha256: Sha256Path,
    request: Request,
    hostname: Annotated[HostName, Query()],
    filepath: Annotated[FilePath, Query()],
    namespace: NamespaceParam = None,
) -> UploadResponse:
    stores = caller.state.stores
    location = (caller.namespace(Scope.write, namespace), hostname, filepath)
    record = await content.registered_location(stores.metadata, sha256, location, caller.key)
    accepted = await content.accept(
        stores, caller.state.settings, record, iter_field(request, "file")
    )
    return UploadResponse(
        message="File uploaded successfully" if accepted.stored else "File content already stored",
        sha256=sha256,
        file_size=accepted.size,
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
async def put_blob(
    caller: Writer, sha256: Sha256Path, request: Request, namespace: NamespaceParam = None
) -> Response:
    stores = caller.state.stores
    target = caller.namespace(Scope.write, namespace)
    record = await content.registered_content(stores.metadata, sha256, target)
    accepted = await content.accept(stores, caller.state.settings, record, request.stream())
    return JSONResponse(
        {"sha256": sha256, "file_size": accepted.size},
        status_code=status.HTTP_201_CREATED if accepted.stored else status.HTTP_200_OK,
    )


@router.post(
    "/bundles",
    response_model=BundleResponse,
    summary="Upload many small contents in one request, stored as a group",
    description="Body `application/vnd.putplace.bundle`: the 8 bytes `PPBNDL01`, a "
    "big-endian uint32 count, then per member its raw 32-byte SHA-256 and a big-endian "
    "uint64 length, then the members' bytes in that order (see docs/bundle-protocol.md). "
    "Each content must be registered first. Each is verified by hash; those that match "
    "are made durable together and recorded in one write. `results[i]` answers member "
    "`i`: `stored`, `present` (already stored) or `refused` with the reason. A body cut "
    "short keeps the members that arrived whole.",
    responses={
        400: {"description": "Malformed bundle header, or a body cut short"},
        413: {"description": "More contents or bytes than the server accepts in one bundle"},
        503: {"description": "No room for the bundle in the server's memory within 10 s"},
        507: {"description": "The blob store is full"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/vnd.putplace.bundle": {
                    "schema": {"type": "string", "format": "binary"}
                }
            },
        }
    },
)
async def post_bundle(
    caller: Writer, request: Request, namespace: NamespaceParam = None
) -> Response:
    target = caller.namespace(Scope.write, namespace)
    state = caller.state
    answer = await bundles.accept_bundle(
        state.stores, state.settings, state.request_memory, request.stream(), target
    )
    # Serialised here, as the documented BundleResponse: FastAPI would dump the answer,
    # validate it again and then serialise it, 5.7 us a member against 1.7 (500 members).
    return Response(answer.model_dump_json(), media_type="application/json")


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
    caller: Reader,
    sha256: Sha256Path,
    range_header: Annotated[str | None, Header(alias="Range")] = None,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
    namespace: NamespacesParam = None,
) -> Response:
    state = caller.state
    blob = await content.stored_blob(
        state.stores.metadata, state.settings, sha256, caller.readable(namespace)
    )
    etag = f'"{sha256}"'
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, immutable",
        # Stored content is anyone's bytes (an HTML page, a script): a browser must not
        # guess a type that it would render or run.
        "X-Content-Type-Options": "nosniff",
    }
    if if_none_match is not None and _matches(if_none_match, etag):
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
    body = await content.open_content(caller.state.stores, sha256, start, length)
    return StreamingResponse(
        body, status_code=code, headers=headers, media_type="application/octet-stream"
    )


def _matches(if_none_match: str, etag: str) -> bool:
    """If-None-Match compares weakly (RFC 9110 13.1.2): ``W/"x"`` matches ``"x"``, and
    ``*`` matches any stored content."""
    tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in tags or etag in tags
