"""Prometheus metrics: what every request did, counted per route template (never per
path, hash or key: label values stay few), and ``GET /metrics`` to scrape them.

Several uvicorn workers: ``ppserver serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh
directory before the workers start, each writes its samples there, and ``/metrics`` sums
them (prometheus-client's multiprocess mode), so one scrape sees the whole server.
"""

from __future__ import annotations

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.registry import REGISTRY
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
UNFINISHED_UPLOADS = Gauge(
    "putplace_resumable_uploads_unfinished",
    "Resumable (tus) uploads begun and not complete, as of the last scrape.",
    multiprocess_mode="mostrecent",
)


def route_of(scope: Scope) -> str:
    """The route template that answered (``/tus/{upload_id}``), never the path itself."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class MetricsMiddleware:
    """Count every HTTP request once it is answered (or failed)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        received = served = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def counting_send(message: Message) -> None:
            nonlocal status, served
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                served += len(message.get("body", b""))
            await send(message)

        IN_FLIGHT.inc()
        try:
            await self.app(scope, counting_receive, counting_send)
        finally:
            IN_FLIGHT.dec()
            route, method = route_of(scope), scope["method"]
            REQUESTS.labels(route, method, str(status)).inc()
            DURATION.labels(route, method).observe(time.perf_counter() - started)
            if received:
                RECEIVED.labels(route).inc(received)
            if served:
                SERVED.labels(route).inc(served)


def exposition() -> tuple[bytes, str]:
    """Every metric in the text format, summed over the server's processes."""
    if os.environ.get(MULTIPROCESS_DIR):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
