"""The FastAPI application: ``create_app()`` and the lifespan that opens the stores."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.openapi.models import OpenAPI
from fastapi.telemetry import TelemetryConfig
from pydantic import BaseModel

from putplace import __version__, gctune, metric_values
from putplace.auth import KeyCache
from putplace.config import MetricsAccess, Settings, load_settings
from putplace.models import FileMetadata
from putplace.server import tally
from putplace.server.cors import add_cors
from putplace.server.errors import install_error_handlers
from putplace.server.limits import BodyLimitMiddleware
from putplace.server.logs import configure_logging
from putplace.server.metrics import RequestMetrics, observe_certificate, observe_process
from putplace.server.observe import ObserveRequestsMiddleware
from putplace.server.routes import content, files, inventory, keys, metrics, root, scans, tus
from putplace.server.state import AppState
from putplace.server.store_metrics import measured
from putplace.server.supervisor import stop_when_orphaned, supervisor_pid
from putplace.service.inventory import DuplicateGroupsCache
from putplace.service.maintenance import sweep_temporary
from putplace.service.memory import MemoryBudget
from putplace.service.resumable import reclaim_expired
from putplace.service.stores import Stores, open_stores

log = logging.getLogger("putplace.server")

#: Expired resumable uploads are freed this often (and at start-up) by each process.
UPLOAD_SWEEP_SECONDS = 600.0
#: How often each worker writes its process figures for /metrics.
PROCESS_REPORT_SECONDS = 10.0

_ERROR = {"content": {"application/json": {"schema": {"type": "object"}}}}
COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Bad input (e.g. not a SHA-256)", **_ERROR},
    401: {"description": "Missing, invalid or revoked API key", **_ERROR},
    403: {"description": "The key's scope does not allow this", **_ERROR},
    404: {"description": "Not found", **_ERROR},
    408: {"description": "Upload stalled", **_ERROR},
    413: {"description": "Body or upload too large", **_ERROR},
    422: {"description": "Malformed request", **_ERROR},
    429: {"description": "Rate limit exceeded (see Retry-After)", **_ERROR},
    503: {"description": "A store is unavailable; retry later", **_ERROR},
    507: {"description": "The blob store is full", **_ERROR},
}

DESCRIPTION = """
PutPlace records where every file of a fleet lives and stores each distinct content once.

Clients `POST /put_file` with a file's metadata; the answer says whether the server needs
the content (`upload_required`). Only then is the content sent to `upload_url`. Every
endpoint but `/` and `/health` needs an `X-API-Key` header; keys have a scope of `read`,
`write` or `admin`.
"""


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    tally.fold()  # what an earlier event loop of this process left (tests run several)
    async with open_stores(settings) as opened:
        stores = opened if settings.metrics is MetricsAccess.off else measured(opened)
        if settings.tls_cert_file is not None and settings.metrics is not MetricsAccess.off:
            observe_certificate(settings.tls_cert_file)
        await sweep_temporary(stores.blobs)
        await _reclaim_uploads(stores)
        sweeper = asyncio.create_task(_reclaim_uploads_every(stores, UPLOAD_SWEEP_SECONDS))
        reporter = asyncio.create_task(_observe_process_every(PROCESS_REPORT_SECONDS))
        tasks = [sweeper, reporter]
        if (parent := supervisor_pid()) is not None:
            tasks.append(asyncio.create_task(stop_when_orphaned(parent)))
        key_cache = KeyCache(settings.key_cache_seconds)
        # Keys revoked, rotated or deleted through any instance leave this one's cache.
        stores.coordination.listen(key_cache.forget)
        app.state.putplace = AppState(
            settings=settings,
            stores=stores,
            key_cache=key_cache,
            duplicate_groups=DuplicateGroupsCache(settings.stats_cache_seconds),
            request_memory=app.state.request_memory,
        )
        gctune.settle()
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Answered requests counted: uvicorn ends a worker stopped with SIGTERM by the
            # signal itself once its requests are done, so atexit would not run.
            tally.fold()
            metric_values.flush_or_log()


async def _observe_process_every(seconds: float) -> None:
    """Keep this worker's memory and CPU current in what a scrape answered by another
    worker sums (several workers only; one process is read at the scrape itself)."""
    while True:
        observe_process()
        await asyncio.sleep(seconds)


async def _reclaim_uploads_every(stores: Stores, seconds: float) -> None:
    """Free expired resumable uploads now and then: a server that runs for months still
    gives their space back."""
    while True:
        await asyncio.sleep(seconds)
        await _reclaim_uploads(stores)


async def _reclaim_uploads(stores: Stores) -> None:
    """Free expired resumable uploads. A failure (the store unreachable) is logged and
    tried again next time; it never stops the server."""
    try:
        freed = await reclaim_expired(stores)
    except Exception:
        log.exception("could not free expired uploads; trying again later")
    else:
        if freed:
            log.info("freed %d expired uploads", freed)


#: FastAPI's own OpenTelemetry, off: PutPlace exports Prometheus metrics (``/metrics``)
#: and neither configures nor tests OpenTelemetry, and with it on, every request asks
#: for the global tracer, meter and logger providers (6 us each time, measured).
_NO_OPENTELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Settings are loaded from the environment when not given."""
    app = FastAPI(
        title="PutPlace",
        version=__version__,
        description=DESCRIPTION,
        lifespan=_lifespan,
        telemetry=_NO_OPENTELEMETRY,
    )
    app.state.settings = settings = settings or load_settings()
    configure_logging(settings)
    # One budget per process for the request bodies it holds: JSON batches here, bundles
    # in their route (through AppState).
    app.state.request_memory = memory = MemoryBudget(settings.request_memory_bytes)
    app.add_middleware(
        BodyLimitMiddleware,
        limit=settings.max_json_bytes,
        idle_seconds=settings.upload_idle_timeout_seconds,
        memory=memory,
    )
    counted = None if settings.metrics is MetricsAccess.off else RequestMetrics()
    app.add_middleware(ObserveRequestsMiddleware, metrics=counted)
    if settings.cors_origins.strip():
        add_cors(app, settings.cors_origins)
    install_error_handlers(app)
    # Requests are matched router by router, in this order: the busiest first, and
    # before them the one request existing clients send once per file.
    app.router.routes.extend(files.PLAIN_ROUTES)
    for module in (files, content, tus, scans, inventory, keys):
        app.include_router(module.router, responses=COMMON_ERRORS)
    app.include_router(root.router)
    app.include_router(metrics.router(settings.metrics.value), responses=COMMON_ERRORS)
    _document_schemas(app, FileMetadata)
    return app


def _document_schemas(app: FastAPI, *models: type[BaseModel]) -> None:
    """Put *models* in the OpenAPI document's schemas: the bodies of ``/put_file`` and
    ``/put_files`` are parsed by their routes, so FastAPI does not see their model, and
    their documented request bodies refer to it."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _with_schemas(build(), models)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _with_schemas(document: dict[str, Any], models: Sequence[type[BaseModel]]) -> dict[str, Any]:
    """*document* with *models* (and the models they refer to) among its schemas, kept in
    name order and put through FastAPI's own last step, as if a route had declared them."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for model in models:
        schema = model.model_json_schema(ref_template=_REF)
        for name, referred in {**schema.pop("$defs", {}), model.__name__: schema}.items():
            schemas.setdefault(name, referred)
    document["components"]["schemas"] = dict(sorted(schemas.items()))
    encoded: dict[str, Any] = jsonable_encoder(
        OpenAPI(**document), by_alias=True, exclude_none=True
    )
    return encoded


_REF = "#/components/schemas/{model}"
