"""Resumable uploads over tus 1.0 (https://tus.io/protocols/resumable-upload):
``/tus/`` with the extensions creation, creation-with-upload, termination, expiration,
checksum and concatenation. This module only translates headers; the rules are in
:mod:`putplace.service.resumable`."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import AsyncIterator
from email.utils import format_datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response, status
from starlette.requests import ClientDisconnect

from putplace.config import Settings
from putplace.digest import CHECKSUM_ALGORITHMS
from putplace.metadata.uploads import Upload
from putplace.models import Scope
from putplace.server.deps import NamespaceParam, Writer
from putplace.server.errors import PreconditionFailedError, UnsupportedMediaTypeError
from putplace.service import resumable
from putplace.service.errors import InvalidInputError, StalledError, TooLargeError
from putplace.service.ingest import with_idle_timeout

router = APIRouter(tags=["resumable uploads (tus)"])

TUS_VERSION = "1.0.0"
EXTENSIONS = "creation,creation-with-upload,termination,expiration,checksum,concatenation"
OFFSET_TYPE = "application/offset+octet-stream"
#: Largest ``Upload-Metadata`` header accepted, bytes.
MAX_METADATA = 8192
_METADATA_KEY = re.compile(r"[A-Za-z0-9._-]{1,100}")
_UPLOAD_ID = re.compile(r"/([0-9a-f]{32})/?$")

UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    409: {"description": "Upload-Offset is not the upload's offset"},
    410: {"description": "The upload has expired"},
    412: {"description": "Tus-Resumable is not 1.0.0"},
    415: {"description": "Content-Type is not application/offset+octet-stream"},
    460: {"description": "The body does not match Upload-Checksum"},
}

TusResumable = Annotated[str | None, Header(alias="Tus-Resumable")]
UploadMetadata = Annotated[str | None, Header(alias="Upload-Metadata", max_length=MAX_METADATA)]
ContentType = Annotated[str | None, Header(alias="Content-Type")]


def _check_version(version: str | None) -> None:
    if version != TUS_VERSION:
        raise PreconditionFailedError(f"Tus-Resumable must be {TUS_VERSION}")


def _number(name: str, value: str | None, *, required: bool = True) -> int | None:
    if value is None:
        if required:
            raise InvalidInputError(f"{name} is required")
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 19:
        raise InvalidInputError(f"{name} must be a non-negative integer")
    return int(value)


def parse_metadata(header: str | None) -> dict[str, str]:
    """``Upload-Metadata``: ``key base64value`` pairs separated by commas."""
    found: dict[str, str] = {}
    for pair in (header or "").split(","):
        if not pair.strip():
            continue
        key, _, encoded = pair.strip().partition(" ")
        if not _METADATA_KEY.fullmatch(key) or key in found:
            raise InvalidInputError(f"Upload-Metadata has a bad or repeated key: {key[:100]!r}")
        try:
            value = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidInputError(
                f"Upload-Metadata value of {key!r} is not base64 of UTF-8"
            ) from None
        if "\x00" in value:
            raise InvalidInputError(f"Upload-Metadata value of {key!r} contains NUL")
        found[key] = value
    return found


def _encode_metadata(metadata: dict[str, str]) -> str:
    return ",".join(
        f"{key} {base64.b64encode(value.encode()).decode()}".rstrip()
        for key, value in metadata.items()
    )


def _parse_checksum(header: str | None) -> tuple[str, bytes] | None:
    if header is None:
        return None
    algorithm, _, encoded = header.strip().partition(" ")
    size = len(resumable.checksum_hasher(algorithm).digest())  # 400 unless supported
    malformed = f"Upload-Checksum must be `{algorithm} <base64 digest of {size} bytes>`"
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        raise InvalidInputError(malformed) from None
    if len(digest) != size:  # no digest at all, or a cut one: malformed, not a mismatch
        raise InvalidInputError(malformed)
    return algorithm, digest


def _parse_concat(header: str | None) -> tuple[bool, list[str]]:
    """(partial, part ids of a final upload) from ``Upload-Concat``."""
    if header is None:
        return False, []
    if header.strip() == "partial":
        return True, []
    kind, _, urls = header.partition(";")
    if kind.strip() != "final" or not urls.strip():
        raise InvalidInputError("Upload-Concat must be `partial` or `final;<url> <url>...`")
    ids = []
    for url in urls.split():
        match = _UPLOAD_ID.search(url)
        if match is None:
            raise InvalidInputError(f"Upload-Concat names no upload of this server: {url[:200]}")
        ids.append(match[1])
    return False, ids


class _RequestBody:
    """The request body for :func:`resumable.append`: it ends, rather than fails, when
    the client goes away or stops sending, so what arrived is kept."""

    def __init__(self, request: Request, settings: Settings) -> None:
        self._request = request
        self._idle = settings.upload_idle_timeout_seconds
        self.cut_short = False
        self.client_gone = False
        """The client went away: it will not read the answer."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in with_idle_timeout(self._request.stream(), self._idle):
                if chunk:
                    yield chunk
        except ClientDisconnect:
            self.cut_short = self.client_gone = True
        except StalledError:
            self.cut_short = True


def _declared_length(request: Request) -> int | None:
    """The body's Content-Length, when it has one."""
    declared = request.headers.get("content-length", "")
    return int(declared) if declared.isascii() and declared.isdigit() else None


def _headers(upload: Upload) -> dict[str, str]:
    return {
        "Tus-Resumable": TUS_VERSION,
        "Upload-Offset": str(upload.offset),
        "Upload-Expires": format_datetime(upload.expires_at, usegmt=True),
        "Cache-Control": "no-store",
    }


def _location(request: Request, upload: Upload) -> str:
    """The upload's URL as a path (with the app's root path, when it is served under
    one): clients resolve it against the URL they posted to, as RFC 9110 allows and tus
    clients do, so it names the host and scheme the client used."""
    return f"{request.scope.get('root_path', '')}/tus/{upload.id}"


@router.options(
    "/tus/",
    summary="tus discovery: version, extensions, limits (no key needed)",
    status_code=status.HTTP_204_NO_CONTENT,
)
@router.options("/tus/{upload_id}", include_in_schema=False)
async def tus_options(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    return Response(
        status_code=status.HTTP_204_NO_CONTENT,
        headers={
            "Tus-Resumable": TUS_VERSION,
            "Tus-Version": TUS_VERSION,
            "Tus-Extension": EXTENSIONS,
            "Tus-Max-Size": str(settings.max_upload_bytes),
            "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
        },
    )


@router.post(
    "/tus/",
    summary="Create a resumable upload (tus creation, creation-with-upload, concatenation)",
    description="`Upload-Length` and `Upload-Metadata` naming the content: `sha256` (hex, "
    "registered by a file record) and optionally `hostname` and `filepath` of that "
    "record. `Upload-Concat: partial` creates a part (no hash; with `whole` in its metadata, "
    "a part a final upload will join alone, which then becomes the blob without a copy); "
    "`Upload-Concat: "
    "final;<url> <url>` joins complete parts in order, verifies and stores the whole. "
    "A body (`application/offset+octet-stream`) is written at offset 0. Content the "
    "namespace has sent before is answered complete at once.",
    status_code=status.HTTP_201_CREATED,
    responses={**UPLOAD_ERRORS, 201: {"description": "Created; `Location` names it"}},
)
@router.post("/tus", include_in_schema=False, status_code=status.HTTP_201_CREATED)
async def tus_create(
    caller: Writer,
    request: Request,
    tus_resumable: TusResumable = None,
    upload_length: Annotated[str | None, Header(alias="Upload-Length")] = None,
    upload_metadata: UploadMetadata = None,
    upload_concat: Annotated[str | None, Header(alias="Upload-Concat")] = None,
    upload_checksum: Annotated[str | None, Header(alias="Upload-Checksum")] = None,
    content_type: ContentType = None,
    namespace: NamespaceParam = None,
) -> Response:
    _check_version(tus_resumable)
    if request.headers.get("upload-defer-length") is not None:
        raise InvalidInputError("Upload-Defer-Length is not supported: send Upload-Length")
    state, key = caller.state, caller.key
    target = caller.namespace(Scope.write, namespace)
    metadata = parse_metadata(upload_metadata)
    partial, part_ids = _parse_concat(upload_concat)
    if part_ids:
        upload = await resumable.concatenate(
            state.stores, state.settings, state.running_hashes, key, target, part_ids, metadata
        )
        return _created(request, upload)
    length = _number("Upload-Length", upload_length)
    assert length is not None
    # Every header is checked before anything is created: bad input changes nothing.
    checksum = _parse_checksum(upload_checksum)
    declared = _declared_length(request)
    with_body = content_type == OFFSET_TYPE
    if with_body and declared is not None and declared > length:
        raise TooLargeError(f"the body runs past Upload-Length ({length} bytes)")
    create = resumable.create_partial if partial else resumable.create
    upload = await create(state.stores, state.settings, key, target, length, metadata)
    if with_body and not upload.complete:
        appended = await resumable.append_to_new(
            state.stores, state.settings, state.running_hashes, upload,
            _RequestBody(request, state.settings), checksum, declared,
        )  # fmt: skip
        if appended is None:
            raise ClientDisconnect  # answered for the log: nobody reads it
        upload = appended
    return _created(request, upload)


def _created(request: Request, upload: Upload) -> Response:
    headers = {**_headers(upload), "Location": _location(request, upload)}
    return Response(status_code=status.HTTP_201_CREATED, headers=headers)


@router.head(
    "/tus/{upload_id}",
    summary="An upload's offset, length and metadata (tus core)",
    responses=UPLOAD_ERRORS,
)
async def tus_head(caller: Writer, upload_id: str, tus_resumable: TusResumable = None) -> Response:
    _check_version(tus_resumable)
    state = caller.state
    upload = await resumable.find(state.stores, caller.key, upload_id)
    upload = await resumable.resume(state.stores, state.settings, upload)
    headers = _headers(upload)
    headers["Upload-Length"] = str(upload.length)
    if upload.metadata:
        headers["Upload-Metadata"] = _encode_metadata(upload.metadata)
    if upload.partial:
        headers["Upload-Concat"] = "partial"
    elif upload.parts:
        headers["Upload-Concat"] = "final;" + " ".join(f"/tus/{part}" for part in upload.parts)
    return Response(status_code=status.HTTP_200_OK, headers=headers)


@router.patch(
    "/tus/{upload_id}",
    summary="Send bytes at Upload-Offset (tus core, checksum)",
    description="Body `application/offset+octet-stream`, written at `Upload-Offset`, which "
    "must be the upload's offset. With `Upload-Checksum: <algorithm> <base64>` the bytes "
    "are acknowledged only if they match. The last byte verifies and stores the content.",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=UPLOAD_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {OFFSET_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def tus_patch(
    caller: Writer,
    upload_id: str,
    request: Request,
    tus_resumable: TusResumable = None,
    upload_offset: Annotated[str | None, Header(alias="Upload-Offset")] = None,
    upload_checksum: Annotated[str | None, Header(alias="Upload-Checksum")] = None,
    content_type: ContentType = None,
) -> Response:
    _check_version(tus_resumable)
    if content_type != OFFSET_TYPE:
        raise UnsupportedMediaTypeError(f"Content-Type must be {OFFSET_TYPE}")
    offset = _number("Upload-Offset", upload_offset)
    assert offset is not None
    checksum = _parse_checksum(upload_checksum)
    state = caller.state
    upload = await resumable.find(state.stores, caller.key, upload_id)
    body = _RequestBody(request, state.settings)
    upload = await resumable.append(
        state.stores, state.settings, state.running_hashes, upload, offset, body, checksum,
        _declared_length(request),
    )  # fmt: skip
    return Response(status_code=status.HTTP_204_NO_CONTENT, headers=_headers(upload))


@router.delete(
    "/tus/{upload_id}",
    summary="Stop an upload and free its space (tus termination)",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=UPLOAD_ERRORS,
)
async def tus_delete(
    caller: Writer, upload_id: str, tus_resumable: TusResumable = None
) -> Response:
    _check_version(tus_resumable)
    upload = await resumable.find(caller.state.stores, caller.key, upload_id)
    await resumable.terminate(caller.state.stores, upload)
    return Response(status_code=status.HTTP_204_NO_CONTENT, headers={"Tus-Resumable": TUS_VERSION})
