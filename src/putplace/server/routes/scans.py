"""Scans: ``POST /scans``, ``GET /scans/{scan_id}``, ``POST /scans/{scan_id}/seen``,
``/complete`` and ``/abandon``. Records are reported in a scan with
``POST /put_files?scan=...``."""

from __future__ import annotations

from typing import Annotated, Any

# Loaded with the server, not by the first scan with excludes: putplace.patterns leaves
# it until first use (for ppclient's start-up), which here would cost that request 19 ms
# on the event loop.
import pathspec  # noqa: F401
from fastapi import APIRouter, Path, status
from pydantic import AfterValidator, BaseModel, Field

from putplace.models import FilePath, HostName, ScanRecord, Scope, no_nul
from putplace.patterns import checked_exclude
from putplace.server.deps import NamespaceParam, Writer
from putplace.service import scans

router = APIRouter(prefix="/scans", tags=["scans"])

ScanId = Annotated[str, Path(max_length=64, description="The `scan_id` POST /scans answered.")]


class ScanCreate(BaseModel):
    hostname: HostName
    root: FilePath = Field(description="Absolute path of the directory walked.")
    excludes: list[
        Annotated[
            str, Field(max_length=4096), AfterValidator(no_nul), AfterValidator(checked_exclude)
        ]
    ] = Field(
        default_factory=list,
        max_length=scans.MAX_EXCLUDES,
        description="The walk's gitignore-style exclude patterns, relative to the root: "
        "records they cover are never marked deleted by this scan.",
    )


class SeenPaths(BaseModel):
    filepaths: list[FilePath] = Field(max_length=scans.MAX_SEEN_PATHS)


class SeenAnswer(BaseModel):
    seen: int = Field(description="How many of the paths are live records of the scan's host.")


NOT_OPEN: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such scan"},
    409: {"description": "The scan is not open"},
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ScanRecord,
    summary="Open a scan of one root of one host",
    responses={400: {"description": "The root is not absolute"}},
)
async def open_scan(
    body: ScanCreate, caller: Writer, namespace: NamespaceParam = None
) -> ScanRecord:
    namespace = caller.namespace(Scope.write, namespace)
    return await scans.open_scan(caller.state.stores.metadata, caller.key, namespace,
                                 body.hostname, body.root, body.excludes)  # fmt: skip


@router.get("/{scan_id}", response_model=ScanRecord, summary="A scan's state",
            responses={404: {"description": "No such scan"}})  # fmt: skip
async def get_scan(scan_id: ScanId, caller: Writer) -> ScanRecord:
    return await scans.get_scan(caller.state.stores.metadata, scan_id, caller.key)


@router.post(
    "/{scan_id}/seen",
    response_model=SeenAnswer,
    summary="Report files the scan found unchanged (not sent again)",
    responses=NOT_OPEN,
)
async def seen(scan_id: ScanId, body: SeenPaths, caller: Writer) -> SeenAnswer:
    count = await scans.mark_seen(caller.state.stores.metadata, caller.key, scan_id, body.filepaths)
    return SeenAnswer(seen=count)


@router.post(
    "/{scan_id}/complete",
    response_model=ScanRecord,
    summary="The walk finished: mark deleted what the scan did not see under its root",
    responses=NOT_OPEN,
)
async def complete(scan_id: ScanId, caller: Writer) -> ScanRecord:
    return await scans.complete_scan(caller.state.stores.metadata, caller.key, scan_id)


@router.post(
    "/{scan_id}/abandon",
    response_model=ScanRecord,
    summary="The walk was cut short: close the scan, deleting nothing",
    responses=NOT_OPEN,
)
async def abandon(scan_id: ScanId, caller: Writer) -> ScanRecord:
    return await scans.abandon_scan(caller.state.stores.metadata, caller.key, scan_id)
