"""Store metrics: how long each metadata and blob store operation takes and how often it
fails, per backend, measured by wrapping the stores the server opened (no backend counts
for itself, so every backend is measured alike); and, at each scrape, whether the stores
answer, how full local disk is, what is open, and how the last maintenance runs went.

Labels are the store (``metadata``, ``blobs``), its backend (``sqlite``, ``local``...)
and the operation: a method name of the store interface, a small fixed set.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

from prometheus_client import Counter, Gauge, Histogram

import putplace.metric_values  # noqa: F401 (sets how values are kept, before any metric is made)
from putplace.blobs.base import BlobWriter, StorageFullError, StorageUnavailableError
from putplace.metadata.base import StoreUnavailableError
from putplace.server.tally import TalliedHistogram
from putplace.service.stores import Stores

S = TypeVar("S")
log = logging.getLogger("putplace.metrics")

OPERATION_SECONDS = Histogram(
    "putplace_store_operation_duration_seconds",
    "Time a store operation took, by store, backend and operation (streams: not timed).",
    ["store", "backend", "operation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ERRORS = Counter(
    "putplace_store_errors",
    "Store operations that failed (the store unreachable, full, or erring), by store, "
    "backend and operation. Answers such as 'not found' are not errors.",
    ["store", "backend", "operation"],
)
STORE_UP = Gauge(
    "putplace_store_up",
    "1 when the store answered its ping at the last scrape, else 0.",
    ["store", "backend"],
    multiprocess_mode="mostrecent",
)
FREE_BYTES = Gauge(
    "putplace_blob_store_free_bytes",
    "Bytes still free on the filesystem holding local blobs, as of the last scrape "
    "(local disk only: no sample at all for object stores).",
    ["backend"],
    multiprocess_mode="mostrecent",
)
CAPACITY_BYTES = Gauge(
    "putplace_blob_store_capacity_bytes",
    "Size of the filesystem holding local blobs.",
    ["backend"],
    multiprocess_mode="mostrecent",
)
OPEN_SCANS = Gauge(
    "putplace_scans_open",
    "Scans begun by clients and not yet completed or abandoned, as of the last scrape.",
    multiprocess_mode="mostrecent",
)
UNFINISHED_UPLOADS = Gauge(
    "putplace_resumable_uploads_unfinished",
    "Resumable (tus) uploads begun and not complete, as of the last scrape.",
    multiprocess_mode="mostrecent",
)
LAST_RUN = Gauge(
    "putplace_maintenance_last_run_timestamp_seconds",
    "When the last run of a maintenance task (ppserver verify, gc) finished, by task.",
    ["task"],
    multiprocess_mode="mostrecent",
)
LAST_PROBLEMS = Gauge(
    "putplace_maintenance_last_problems",
    "What the last run of a task found, by task and problem (verify: corrupt, missing; "
    "gc: unreferenced, orphaned).",
    ["task", "problem"],
    multiprocess_mode="mostrecent",
)

#: Failures of the store itself. Everything else a store operation raises is an answer
#: ("not found", "duplicate") or comes from the caller: a request body that was too
#: large, stalled or cut off while a store was writing it is the client's fault.
_FAILURES = (StoreUnavailableError, StorageUnavailableError, StorageFullError, OSError)


class _Measured:
    """Stands in for a store (or a writer it handed out): every coroutine method is timed
    and its failures counted; async generators (streams) have their failures counted."""

    def __init__(self, target: object, store: str, backend: str, prefix: str = "") -> None:
        self._target = target
        self._labels = (store, backend)
        self._prefix = prefix

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name.startswith("_") or not callable(value):
            return value
        operation = self._prefix + name
        wrapped: Callable[..., Any]
        if inspect.iscoroutinefunction(value):
            wrapped = self._timed(value, operation)
        elif inspect.isasyncgenfunction(value):
            wrapped = self._streamed(value, operation)
        elif name == "staging":
            wrapped = self._handing_out(value, "staging.")
        else:
            return value
        setattr(self, name, wrapped)  # build each wrapper once
        return wrapped

    def _timed(self, call: Callable[..., Awaitable[Any]], operation: str) -> Callable[..., Any]:
        timer = _timer(*self._labels, operation)
        errors = ERRORS.labels(*self._labels, operation)
        store, backend = self._labels

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                result = await call(*args, **kwargs)
            except _FAILURES:
                errors.inc()
                raise
            finally:
                timer.observe(time.perf_counter() - started)
            if isinstance(result, BlobWriter):  # its writes and commit: "writer.commit"
                return _Measured(result, store, backend, "writer.")
            return result

        return timed

    def _streamed(
        self, call: Callable[..., AsyncIterator[Any]], operation: str
    ) -> Callable[..., Any]:
        errors = ERRORS.labels(*self._labels, operation)

        async def streamed(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            try:
                async for item in call(*args, **kwargs):
                    yield item
            except _FAILURES:
                errors.inc()
                raise

        return streamed

    def _handing_out(self, call: Callable[..., Any], prefix: str) -> Callable[..., Any]:
        store, backend = self._labels
        return lambda *args, **kwargs: _Measured(call(*args, **kwargs), store, backend, prefix)


@functools.cache
def _timer(store: str, backend: str, operation: str) -> TalliedHistogram:
    """One tally per timed operation, shared by every wrapper that times it (a blob
    store hands out a writer per upload, each measured)."""
    return TalliedHistogram(OPERATION_SECONDS.labels(store, backend, operation))


def measured(stores: Stores) -> Stores:
    """The same stores, measured."""
    return Stores(
        metadata=_measure(stores.metadata, "metadata"),
        blobs=_measure(stores.blobs, "blobs"),
        coordination=stores.coordination,  # measured by itself (putplace_redis_*)
    )


def _measure(store: S, kind: str) -> S:
    backend = str(getattr(store, "kind", "unknown"))
    return cast(S, _Measured(store, kind, backend))


async def observe_state(stores: Stores) -> None:
    """Set the gauges a scrape reads from the stores themselves. A query that fails
    leaves its gauges as they were (and is logged): one failing store must not cost the
    scrape every other metric, least of all ``putplace_store_up``."""
    metadata, blobs = stores.metadata, stores.blobs
    metadata_up = bool(await _asking("metadata ping", metadata.ping()))
    STORE_UP.labels("metadata", metadata.kind).set(int(metadata_up))
    STORE_UP.labels("blobs", blobs.kind).set(int(bool(await _asking("blob ping", blobs.ping()))))
    if (capacity := await _asking("blob store capacity", blobs.capacity())) is not None:
        FREE_BYTES.labels(blobs.kind).set(capacity.free)
        CAPACITY_BYTES.labels(blobs.kind).set(capacity.total)
    if not metadata_up:
        return
    if (uploads := await _asking("unfinished uploads", metadata.count_uploads())) is not None:
        UNFINISHED_UPLOADS.set(uploads)
    if (scans := await _asking("open scans", metadata.count_open_scans())) is not None:
        OPEN_SCANS.set(scans)
    for run in await _asking("maintenance runs", metadata.maintenance_runs()) or []:
        LAST_RUN.labels(run.task).set(run.finished_at.timestamp())
        for problem, count in run.problems.items():
            LAST_PROBLEMS.labels(run.task, problem).set(count)


async def _asking(what: str, query: Awaitable[S]) -> S | None:
    try:
        return await query
    except Exception:
        log.warning("metrics: reading %s failed", what, exc_info=True)
        return None
