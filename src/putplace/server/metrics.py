"""Prometheus metrics: what every request did, counted per route template (never per
path, hash or key: label values stay few), and ``GET /metrics`` to scrape them.

Several uvicorn workers: ``ppserver serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh
directory before the workers start, each writes its samples there, and ``/metrics`` sums
them (prometheus-client's multiprocess mode), so one scrape sees the whole server.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)
from prometheus_client.registry import REGISTRY
from starlette.types import Scope

from putplace import metric_values  # sets how values are kept, before any metric is made
from putplace.server import tally
from putplace.server.tally import TalliedCounter, TalliedHistogram

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
#: Requests that matched no route share one label value.
UNMATCHED = "unmatched"

REQUESTS = Counter(
    "putplace_http_requests",
    "HTTP requests answered, by route template, method and status code.",
    ["route", "method", "status"],
)
DURATION = Histogram(
    "putplace_http_request_duration_seconds",
    "Time from the request's arrival to the end of its answer, by route template.",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
RECEIVED = Counter(
    "putplace_http_received_bytes", "Request body bytes received, by route template.", ["route"]
)
SERVED = Counter(
    "putplace_http_served_bytes", "Response body bytes sent, by route template.", ["route"]
)
IN_FLIGHT = Gauge(
    "putplace_http_requests_in_flight",
    "Requests being answered now.",
    multiprocess_mode="livesum",
)
CERTIFICATE_EXPIRY = Gauge(
    "putplace_tls_certificate_expiry_timestamp_seconds",
    "When the TLS certificate the server presents stops being valid. Served with TLS "
    "only: without it there is no sample (not a 0 an alert would take for expired).",
    ["certificate"],
    multiprocess_mode="mostrecent",
)


#: Methods counted by name; any other (a client may send any token) is "other".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_of(scope: Scope) -> str:
    """The route template that answered (``/tus/{upload_id}``), never the path itself."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class RequestMetrics:
    """Count every HTTP request: what ``ObserveRequestsMiddleware`` saw of it (tallied:
    see :mod:`putplace.server.tally`)."""

    def __init__(self) -> None:
        self._in_flight = TalliedCounter(IN_FLIGHT)

    def started(self) -> None:
        self._in_flight.inc(1)

    def answered(
        self, scope: Scope, status: int, seconds: float, received: int, served: int
    ) -> None:
        self._in_flight.inc(-1)
        method = scope["method"]
        requests, duration, received_bytes, served_bytes = _children(
            route_of(scope), method if method in _METHODS else "other", status
        )
        requests.inc(1)
        duration.observe(seconds)
        if received:
            received_bytes.inc(received)
        if served:
            served_bytes.inc(served)


@functools.cache
def _children(
    route: str, method: str, status: int
) -> tuple[TalliedCounter, TalliedHistogram, TalliedCounter, TalliedCounter]:
    """The labelled series of one kind of answer, looked up once (``labels()`` costs as much
    as the increment itself). Bounded: routes, methods and status codes are fixed sets."""
    return (
        TalliedCounter(REQUESTS.labels(route, method, str(status))),
        TalliedHistogram(DURATION.labels(route, method)),
        TalliedCounter(RECEIVED.labels(route)),
        TalliedCounter(SERVED.labels(route)),
    )


def observe_certificate(path: Path) -> None:
    """Export the expiry of the certificate in *path* (the first of a chain), read once at
    start-up: uvicorn serves the certificate it loaded until it restarts."""
    from cryptography import x509

    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    CERTIFICATE_EXPIRY.labels("serving").set(certificate.not_valid_after_utc.timestamp())


# Under several workers the default process collector would describe only the worker that
# answers the scrape. These carry the same standard names, written by every worker into the
# multiprocess directory and combined there: memory and descriptors summed over the live
# workers, CPU seconds over all that ever ran, the start time of the oldest.
_WORKER_RSS = Gauge(
    "process_resident_memory_bytes", "Resident memory of the server's workers, summed.",
    registry=None, multiprocess_mode="livesum",
)  # fmt: skip
_WORKER_FDS = Gauge(
    "process_open_fds", "Open file descriptors of the server's workers, summed.",
    registry=None, multiprocess_mode="livesum",
)  # fmt: skip
_WORKER_START = Gauge(
    "process_start_time_seconds", "Start time of the oldest live worker (Unix time).",
    registry=None, multiprocess_mode="livemin",
)  # fmt: skip
_WORKER_CPU = Counter(
    "process_cpu_seconds", "CPU time (user and system) of the server's workers, summed.",
    registry=None,
)  # fmt: skip
_PROCESS = ProcessCollector(registry=None)
_cpu_counted = 0.0
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w+_(\d+)\.db$")


def observe_process() -> None:
    """Write this worker's process figures for the next scrape (several workers only)."""
    global _cpu_counted
    if not os.environ.get(MULTIPROCESS_DIR):
        return  # the default registry's process collector describes the one process
    values = {s.name: s.value for family in _PROCESS.collect() for s in family.samples}
    if "process_resident_memory_bytes" in values:  # Linux /proc only
        _WORKER_RSS.set(values["process_resident_memory_bytes"])
        _WORKER_FDS.set(values["process_open_fds"])
        _WORKER_START.set(values["process_start_time_seconds"])
        cpu = values["process_cpu_seconds_total"]
        _WORKER_CPU.inc(max(0.0, cpu - _cpu_counted))
        _cpu_counted = cpu


def _forget_dead_workers(directory: str) -> None:
    """Drop the live gauges of workers that exited (uvicorn restarts them without telling
    the metrics library), so memory and in-flight sums count only workers that run."""
    for name in os.listdir(directory):
        if (match := _LIVE_GAUGE_FILE.match(name)) is None:
            continue
        pid = int(match[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            # Two workers scraped at once may both find this one dead: the second finds
            # its files already gone.
            with contextlib.suppress(FileNotFoundError):
                multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
        except PermissionError:
            pass  # alive, someone else's: not ours to judge


def exposition() -> tuple[bytes, str]:
    """Every metric in the text format, summed over the server's processes."""
    tally.fold()  # this worker's requests, up to the last one answered
    if directory := os.environ.get(MULTIPROCESS_DIR):
        observe_process()
        metric_values.flush_or_log()  # this worker's counts, complete; the others' as last written
        _forget_dead_workers(directory)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
