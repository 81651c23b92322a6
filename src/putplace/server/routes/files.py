"""File metadata: ``POST /put_file``, ``GET /get_file/{sha256}``, ``GET /files``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from putplace.digest import SHA256_PATTERN, is_sha256_hex
from putplace.models import BatchItemResult, BatchResponse, FileMetadata, FileResponse
from putplace.server.body import read_json
from putplace.server.deps import ReadKey, State, WriteKey
from putplace.server.registry import describe, describe_all, register

router = APIRouter(tags=["files"])

INVALID_SHA256 = "Invalid SHA256 hash format: expected 64 lowercase hex characters"

#: A content hash in a path. Checked by :func:`check_sha256` (400, as existing clients
#: expect) rather than by FastAPI (422); the pattern is only documented in the schema.
Sha256Path = Annotated[
    str,
    Path(
        description="Lowercase hex SHA-256 of the content.",
        json_schema_extra={"pattern": SHA256_PATTERN},
        examples=["e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"],
    ),
]


def check_sha256(sha256: str) -> str:
    if not is_sha256_hex(sha256):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=INVALID_SHA256)
    return sha256


@router.post(
    "/put_file",
    status_code=status.HTTP_201_CREATED,
    response_model=FileResponse,
    summary="Record where a file lives; learn whether its content must be uploaded",
    responses={401: {"description": "Missing or bad key"}, 403: {"description": "Read-only key"}},
)
async def put_file(meta: FileMetadata, state: State, _: WriteKey) -> FileResponse:
    (answer,) = await register(state.metadata, [meta])
    return answer


@router.post(
    "/put_files",
    response_model=BatchResponse,
    summary="Record many files in one round trip and one database write",
    description='Body: `{"files": [<put_file body>, ...]}` with at most '
    "`PUTPLACE_MAX_BATCH_RECORDS` records. Each record is validated on its own: invalid "
    "ones are reported in `results` with their errors and the valid ones are still stored. "
    "`results[i]` answers `files[i]`.",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["files"],
                        "properties": {
                            "files": {
                                "type": "array",
                                "items": {"$ref": "#/components/schemas/FileMetadata"},
                            }
                        },
                    }
                }
            },
        }
    },
    responses={413: {"description": "More records than the server accepts in one batch"}},
)
async def put_files(request: Request, state: State, _: WriteKey) -> Response:
    items = _batch_items(
        await read_json(request, state.settings.max_json_bytes), state.settings.max_batch_records
    )
    valid: list[FileMetadata] = []
    positions: list[int] = []
    results: list[BatchItemResult | None] = [None] * len(items)
    for index, item in enumerate(items):
        try:
            valid.append(FileMetadata.model_validate(item))
            positions.append(index)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            results[index] = BatchItemResult(
                index=index, ok=False, errors=[dict(e) for e in errors]
            )
    answers = {(a.hostname, a.filepath): a for a in await register(state.metadata, valid)}
    for index, meta in zip(positions, valid, strict=True):
        answer = answers[(meta.hostname, meta.filepath)]
        results[index] = BatchItemResult(index=index, ok=True, file=answer)
    body = BatchResponse(
        stored=len(valid),
        rejected=len(items) - len(valid),
        results=[r for r in results if r is not None],
    )
    return Response(body.model_dump_json(by_alias=True), media_type="application/json")


def _batch_items(payload: Any, limit: int) -> list[Any]:
    files = payload.get("files") if isinstance(payload, dict) else None
    if not isinstance(files, list):
        raise RequestValidationError(
            [{"type": "missing", "loc": ["body", "files"], "msg": "expected a list", "input": None}]
        )
    if len(files) > limit:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"{len(files)} records in one batch; the limit is {limit}",
        )
    return files


@router.get(
    "/get_file/{sha256}",
    response_model=FileResponse,
    summary="Metadata of the first file recorded with this content",
    responses={400: {"description": "Not a SHA-256"}, 404: {"description": "Unknown content"}},
)
async def get_file(sha256: Sha256Path, state: State, _: ReadKey) -> FileResponse:
    check_sha256(sha256)
    records = await state.metadata.files_with_content(sha256, limit=1)
    if not records:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="File not found")
    return describe(records[0], await state.metadata.get_blob(sha256))


@router.get(
    "/files",
    response_model=list[FileResponse],
    summary="List file records, oldest first, a page at a time",
    description="Pass the last `_id` of a page as `after` to get the next page.",
)
async def list_files(
    state: State,
    _: ReadKey,
    hostname: Annotated[str | None, Query(max_length=255)] = None,
    sha256: Annotated[str | None, Query(description="Only records with this content")] = None,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[FileResponse]:
    if sha256 is not None:
        check_sha256(sha256)
        records = await state.metadata.files_with_content(sha256, limit=limit)
    else:
        try:
            records = await state.metadata.list_files(hostname=hostname, after=after, limit=limit)
        except ValueError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(exc)) from None
    return await describe_all(state.metadata, records)
