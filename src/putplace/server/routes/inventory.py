"""Reading the inventory: ``GET /files`` (search), ``GET /history``,
``GET /content/{sha256}/locations``, ``GET /stats``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import AfterValidator, BaseModel, Field

from putplace.metadata.globs import checked_glob
from putplace.metadata.inventory import CURRENT, Cursor, FileQuery, FileState, SortKey
from putplace.models import (
    MAX_FILE_SIZE,
    MAX_PATH_LENGTH,
    FilePath,
    FileResponse,
    FileVersion,
    HostName,
    Location,
    Scope,
    UtcTime,
)
from putplace.server.body import json_response
from putplace.server.deps import NamespaceParam, NamespacesParam, Reader, Sha256Path
from putplace.service import inventory
from putplace.service.errors import InvalidInputError
from putplace.service.files import checked_sha256

router = APIRouter(tags=["inventory"])

Time = Annotated[
    UtcTime | None,
    Query(description="ISO 8601 (UTC when no offset is given) or Unix seconds."),
]
MAX_LIMIT = 1000


class FileListItem(FileResponse):
    namespace: str
    recorded_at: datetime
    deleted_at: datetime | None


@router.get(
    "/files",
    response_model=list[FileListItem],
    summary="Search file records; a page at a time",
    description="Filters combine (AND; `hostname` may repeat: any of them). Live records "
    "unless `state` says otherwise; with `as_of`, the records live at that time. When "
    "more records follow, the answer has an `X-Next-Cursor` header: pass it as `cursor` "
    "for the next page (stable while records are added). `after` (the last `_id` of a "
    "page) still pages the default insertion order.",
    responses={
        200: {
            "headers": {
                "X-Next-Cursor": {
                    "description": "Cursor of the next page",
                    "schema": {"type": "string"},
                }
            }
        },
        400: {"description": "Contradictory or malformed parameters, or a bad cursor"},
    },
)
async def search_files(
    caller: Reader,
    namespace: NamespacesParam = None,
    hostname: Annotated[list[HostName] | None, Query(max_length=100)] = None,
    path_prefix: Annotated[FilePath | None, Query()] = None,
    path_glob: Annotated[
        Annotated[str, AfterValidator(checked_glob)] | None,
        Query(
            max_length=MAX_PATH_LENGTH,
            description="`*` and `?` within a path component, `**` across them, `[...]`",
        ),
    ] = None,
    sha256: str | None = None,
    min_size: Annotated[int | None, Query(ge=0, le=MAX_FILE_SIZE)] = None,
    max_size: Annotated[int | None, Query(ge=0, le=MAX_FILE_SIZE)] = None,
    mtime_after: Annotated[float | None, Query(allow_inf_nan=False)] = None,
    mtime_before: Annotated[float | None, Query(allow_inf_nan=False)] = None,
    recorded_after: Time = None,
    recorded_before: Time = None,
    uploaded_after: Time = None,
    uploaded_before: Time = None,
    has_content: bool | None = None,
    state: FileState = FileState.live,
    as_of: Time = None,
    sort: Annotated[
        str,
        Query(
            pattern="^-?(id|path|size|mtime|recorded)$",
            description="`id` (insertion), `path`, `size`, `mtime` or `recorded`; `-` "
            "before it for descending",
        ),
    ] = "id",
    cursor: Annotated[str | None, Query(max_length=8192)] = None,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
) -> Response:
    if as_of is not None and state is not FileState.live:
        raise InvalidInputError("as_of shows the records live at that time; drop state")
    if after is not None and (cursor is not None or sort != "id"):
        raise InvalidInputError("after pages the default order only; use cursor")
    query = FileQuery(
        namespaces=caller.readable(namespace),
        hostnames=tuple(hostname or ()),
        path_prefix=path_prefix,
        path_glob=path_glob,
        sha256=None if sha256 is None else checked_sha256(sha256),
        min_size=min_size,
        max_size=max_size,
        mtime_after=mtime_after,
        mtime_before=mtime_before,
        recorded_after=recorded_after,
        recorded_before=recorded_before,
        uploaded_after=uploaded_after,
        uploaded_before=uploaded_before,
        has_content=has_content,
        state=state,
        as_of=as_of,
        sort=SortKey(sort.removeprefix("-")),
        descending=sort.startswith("-"),
    )
    if after is not None:
        cursor = Cursor(None, CURRENT, after).encode(query.order)
    page, next_cursor = await inventory.search(caller.state.stores.metadata, query, cursor, limit)
    response = json_response(page)
    if next_cursor is not None:
        response.headers["X-Next-Cursor"] = next_cursor
    return response


@router.get(
    "/history",
    response_model=list[FileVersion],
    summary="Every version of one file location, newest first",
    description="The first item is the current state (`valid_to` null). A deletion is a "
    "version with `deleted` true.",
    responses={404: {"description": "The location was never recorded"}},
)
async def history(
    caller: Reader,
    hostname: Annotated[HostName, Query()],
    filepath: Annotated[FilePath, Query()],
    namespace: NamespaceParam = None,
) -> Response:
    where = caller.namespace(Scope.read, namespace)
    found = await inventory.history(caller.state.stores.metadata, where, hostname, filepath)
    return json_response([v.model_dump() for v in found])


@router.get(
    "/content/{sha256}/locations",
    response_model=list[Location],
    summary="Every host and path holding this content (and, optionally, that held it)",
    responses={400: {"description": "Not a SHA-256"}},
)
async def locations(
    caller: Reader,
    sha256: Sha256Path,
    include_past: bool = False,
    namespace: NamespacesParam = None,
) -> Response:
    found = await inventory.locations(
        caller.state.stores.metadata, sha256, caller.readable(namespace),
        include_past=include_past,
    )  # fmt: skip
    return json_response([x.model_dump() for x in found])


class HostStats(BaseModel):
    hostname: str
    files: int
    bytes: int


class DuplicateGroupOut(BaseModel):
    sha256: str
    count: int
    size: int
    wasted_bytes: int


class GrowthBucket(BaseModel):
    bucket: str
    files_added: int
    bytes_added: int
    files_deleted: int
    bytes_deleted: int


class QuotaUsage(BaseModel):
    namespace: str
    files: int = Field(description="Live file records.")
    files_limit: int | None
    bytes: int = Field(description="Bytes of the stored content the namespace sent.")
    bytes_limit: int | None


class StatsResponse(BaseModel):
    files: int
    bytes_referenced: int
    distinct_contents: int
    bytes_stored: int
    bytes_saved: int
    hosts: list[HostStats]
    duplicate_groups: list[DuplicateGroupOut]
    growth: list[GrowthBucket]
    quotas: list[QuotaUsage] = Field(
        description="Usage of the quotas (PUTPLACE_QUOTAS) of the namespaces shown."
    )


@router.get(
    "/stats",
    response_model=StatsResponse,
    summary="Files, bytes, deduplication savings, largest duplicate groups, growth",
    description="Read from counters kept at each write (no count over all records); the "
    "largest duplicate groups are grouped from the records and reused for "
    "`PUTPLACE_STATS_CACHE_SECONDS`. "
    "With `hostname`, files, bytes, duplicates and growth are that host's; contents "
    "stored are global. `bytes_saved` is bytes referenced minus bytes stored.",
)
async def stats(
    caller: Reader,
    hostname: Annotated[HostName | None, Query()] = None,
    bucket: inventory.Bucket = inventory.Bucket.day,
    top: Annotated[int, Query(ge=1, le=1000)] = 10,
    namespace: NamespacesParam = None,
) -> Response:
    state = caller.state
    readable = caller.readable(namespace)
    limits = {
        name: quota for name, quota in state.settings.all_quotas().items()
        if not readable or name in readable
    }  # fmt: skip
    result = await inventory.stats(
        state.stores.metadata, hostname, bucket, top, state.duplicate_groups, readable, limits
    )
    return json_response(result)
