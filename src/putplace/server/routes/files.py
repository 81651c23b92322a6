"""File metadata: ``POST /put_file``, ``GET /get_file/{sha256}``, ``GET /files``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette import types as asgi
from starlette.routing import Route

from putplace.models import (
    BatchResponse,
    ConstrainedFileMetadata,
    FileMetadata,
    FileResponse,
    Namespace,
    Scope,
    is_canonical_ip,
)
from putplace.server.body import json_response, parse_json, read_json, validated
from putplace.server.deps import (
    NAMESPACE_DESCRIPTION,
    NamespaceParam,
    NamespacesParam,
    Reader,
    Sha256Path,
    Writer,
    api_key_header,
    authorized,
)
from putplace.service import files
from putplace.service.errors import TooLargeError

router = APIRouter(tags=["files"])

_SCAN_DESCRIPTION = "An open scan (POST /scans) these records were seen by."
_SCAN_NOT_OPEN: dict[str, Any] = {"description": "The scan named by `scan` is not open"}
_SCAN_MAX_LENGTH = 64
ScanParam = Annotated[str | None, Query(max_length=_SCAN_MAX_LENGTH, description=_SCAN_DESCRIPTION)]
#: Where the OpenAPI document describes a record (see ``app._document_schemas``).
_FILE_METADATA_SCHEMA = {"$ref": "#/components/schemas/FileMetadata"}


class _PutFileQuery(BaseModel):
    """The query of ``POST /put_file`` (what ``ScanParam`` and ``NamespaceParam`` say)."""

    model_config = ConfigDict(extra="ignore")
    scan: str | None = Field(None, max_length=_SCAN_MAX_LENGTH)
    namespace: Namespace | None = None


def _query_parameter(name: str, description: str) -> dict[str, Any]:
    """The OpenAPI description of the query parameter *name*, from ``_PutFileQuery``."""
    schema = _PutFileQuery.model_json_schema()["properties"][name]["anyOf"][0]
    return {
        "name": name, "in": "query", "required": False, "description": description,
        "schema": {
            "anyOf": [schema, {"type": "null"}], "description": description,
            "title": name.capitalize(),
        },
    }  # fmt: skip


#: How /put_file reads its request, for the OpenAPI document: the route parses it itself.
_PUT_FILE_REQUEST = {
    "parameters": [
        _query_parameter("scan", _SCAN_DESCRIPTION),
        _query_parameter("namespace", NAMESPACE_DESCRIPTION),
    ],
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": _FILE_METADATA_SCHEMA}},
    },
    "security": [{api_key_header.scheme_name: []}],
}


@router.post(
    "/put_file",
    status_code=status.HTTP_201_CREATED,
    response_model=FileResponse,
    summary="Record where a file lives; learn whether its content must be uploaded",
    responses={
        401: {"description": "Missing or bad key"},
        403: {"description": "Read-only key"},
        409: _SCAN_NOT_OPEN,
    },
    openapi_extra=_PUT_FILE_REQUEST,
)
async def put_file(request: Request) -> Response:
    # Parsed here rather than declared: existing clients send one request per file, and
    # FastAPI's solving of a declared key, query and body was a quarter of each request's
    # CPU (in process, no HTTP: 430 -> 320 us; under wrk: 600-730 -> 550-590 us). The
    # route above describes it in the OpenAPI document; requests reach it through
    # PLAIN_ROUTES instead (see there).
    caller = await authorized(request, request.headers.get("x-api-key"), Scope.write)
    query, meta = _put_file_request(request.query_params, await read_json(request))
    target = caller.namespace(Scope.write, query.namespace)
    (answer,) = await files.register(
        caller.state.stores.metadata, [meta], caller.key, target,
        domain=caller.state.settings.trust_domain(target),
        quota=caller.state.settings.quota(target), scan_id=query.scan,
        coordination=caller.state.stores.coordination,
    )  # fmt: skip
    return json_response(answer, status.HTTP_201_CREATED)


class _NamedRoute(Route):
    """A Starlette route that names itself in the request's scope, as FastAPI's router
    does only for its own routes: the access log's metrics count requests by it."""

    async def handle(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        scope["route"] = self
        await super().handle(scope, receive, send)


#: Served ahead of the routers (``app.create_app`` adds them after FastAPI's own docs
#: routes and before every router): a plain Starlette route calls ``put_file`` with the
#: request and nothing else, where FastAPI's route matching and request handling
#: (dependency solving, even with none declared) cost each request about 35 us of CPU in
#: process, a fifth of it (under wrk, 2 workers: 218-221 -> 176-178 us of server CPU per
#: record, 6,670-7,020 -> 8,070-8,340 records/s). Errors go through the same exception
#: handlers; a test holds each to its documented twin's path and method.
PLAIN_ROUTES = [_NamedRoute("/put_file", put_file, methods=["POST"])]


def _put_file_request(query: Any, body: Any) -> tuple[_PutFileQuery, FileMetadata]:
    """The query and body of a /put_file, else 422 listing the errors of both."""
    errors: list[Any] = []
    parsed: list[Any] = []
    for model, data, where in ((_PutFileQuery, query, "query"), (FileMetadata, body, "body")):
        try:
            parsed.append(validated(model, data, where))
        except RequestValidationError as exc:
            errors.extend(exc.errors())
    if errors:
        raise RequestValidationError(errors)
    return parsed[0], parsed[1]


@router.post(
    "/put_files",
    response_model=BatchResponse,
    summary="Record many files in one round trip and one database write",
    description='Body: `{"files": [<put_file body>, ...]}` with at most '
    "`PUTPLACE_MAX_BATCH_RECORDS` records. Each record is validated on its own: invalid "
    "ones are reported in `results` with their errors and the valid ones are still stored. "
    "`results[i]` answers `files[i]`. With `brief=true`, each stored record's `file` holds "
    "only `_id` and `upload_required`.",
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
                                "items": _FILE_METADATA_SCHEMA,
                            }
                        },
                    }
                }
            },
        }
    },
    responses={
        409: _SCAN_NOT_OPEN,
        413: {"description": "More records than the server accepts in one batch"},
    },
)
async def put_files(
    request: Request,
    caller: Writer,
    brief: Annotated[
        bool,
        Query(
            description="Answer each stored record with only `_id` and `upload_required` "
            "instead of the whole record (what a client needs; a tenth of the bytes)."
        ),
    ] = False,
    scan: ScanParam = None,
    namespace: NamespaceParam = None,
) -> Response:
    target = caller.namespace(Scope.write, namespace)
    valid, positions, results = _validate_batch(
        await request.body(), caller.state.settings.max_batch_records
    )
    registered = await files.register(
        caller.state.stores.metadata,
        valid,
        caller.key,
        target,
        domain=caller.state.settings.trust_domain(target),
        quota=caller.state.settings.quota(target),
        coordination=caller.state.stores.coordination,
        brief=brief,
        scan_id=scan,
    )
    for index, answer in zip(positions, registered, strict=True):
        results[index] = {"index": index, "ok": True, "file": answer, "errors": None}
    # Shaped as BatchResponse (the documented schema), built directly for speed.
    body = {"stored": len(valid), "rejected": len(results) - len(valid), "results": results}
    return json_response(body)


class _WholeBatch(BaseModel):
    """A ``POST /put_files`` body whose every record is valid."""

    files: list[ConstrainedFileMetadata]


def _validate_batch(
    body: bytes, limit: int
) -> tuple[list[FileMetadata], list[int], list[dict[str, Any] | None]]:
    """The valid records of the batch *body* with their positions, and the answers for
    the invalid ones (see :func:`_validate`); 422 for a body that is no batch, 413 for
    more than *limit* records.

    Most batches are valid whole: validated straight from the JSON bytes in one call,
    they took 9.4 us a record against 12.0 parsed first and then validated (2,000
    records), and 6.7 us with every rule checked in pydantic's core
    (:class:`ConstrainedFileMetadata`). Anything else is parsed and looked at again,
    record by record."""
    try:
        files = _WholeBatch.model_validate_json(body).files
    except ValidationError:
        pass
    else:
        if len(files) <= limit and all(map(is_canonical_ip, {f.ip_address for f in files})):
            return list[FileMetadata](files), list(range(len(files))), [None] * len(files)
    return _validate(_batch_items(parse_json(body), limit))


def _validate(
    items: list[Any],
) -> tuple[list[FileMetadata], list[int], list[dict[str, Any] | None]]:
    """The valid records with their positions, and the answers for the invalid ones:
    each record validated alone, to report its own errors (a batch valid whole never
    gets here, see :func:`_validate_batch`)."""
    results: list[dict[str, Any] | None] = [None] * len(items)
    valid: list[FileMetadata] = []
    positions: list[int] = []
    for index, item in enumerate(items):
        try:
            valid.append(FileMetadata.model_validate(item))
            positions.append(index)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            results[index] = {"index": index, "ok": False, "file": None, "errors": errors}
    return valid, positions, results


def _batch_items(payload: Any, limit: int) -> list[Any]:
    items = payload.get("files") if isinstance(payload, dict) else None
    if not isinstance(items, list):
        raise RequestValidationError(
            [{"type": "missing", "loc": ["body", "files"], "msg": "expected a list", "input": None}]
        )
    if len(items) > limit:
        raise TooLargeError(f"{len(items)} records in one batch; the limit is {limit}")
    return items


@router.get(
    "/get_file/{sha256}",
    response_model=FileResponse,
    summary="Metadata of the first file recorded with this content",
    responses={400: {"description": "Not a SHA-256"}, 404: {"description": "Unknown content"}},
)
async def get_file(
    caller: Reader, sha256: Sha256Path, namespace: NamespacesParam = None
) -> Response:
    metadata = caller.state.stores.metadata
    record = await files.first_with_content(metadata, sha256, caller.readable(namespace))
    (answer,) = await files.describe_all(metadata, [record])
    return json_response(answer)
