"""Every request seen once, from outside the app: its id, its status, how long it took and
the bytes it moved, handed to the access log and, when metrics are on, to the request
metrics. One layer serves both: as two layers of ASGI middleware, the access log and the
metrics each wrapped ``send`` (the metrics ``receive`` too), timed the request and caught
its status apart."""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from putplace.server.logs import access_log, log_access, request_id_of
from putplace.server.metrics import RequestMetrics


class ObserveRequestsMiddleware:
    """Give every request an id (``X-Request-ID``, honoured if sane); once it is answered
    (or failed), log it and, with *metrics*, count it."""

    def __init__(self, app: ASGIApp, metrics: RequestMetrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope["headers"])
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        received = served = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def observed_send(message: Message) -> None:
            nonlocal status, served
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            elif message["type"] == "http.response.body":
                served += len(message.get("body", b""))
            await send(message)

        metrics = self.metrics
        if metrics is not None:
            metrics.started()
        try:
            await self.app(scope, receive if metrics is None else counted_receive, observed_send)
        finally:
            seconds = time.perf_counter() - started
            try:
                if access_log.isEnabledFor(logging.INFO):  # the line costs as much as the rest
                    log_access(scope, status, seconds, request_id)
            finally:
                if metrics is not None:
                    metrics.answered(scope, status, seconds, received, served)
