"""Request limits: body size and idle time of request bodies. (The per-key request rate
is kept by :mod:`putplace.coordination`, shared by every process when Redis is set.)"""

from __future__ import annotations

import asyncio
import re

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from putplace.server.errors import DISCONNECTED

#: How much of an oversized body is read and dropped before answering 413.
_DRAIN_LIMIT = 16 * 1024 * 1024

#: Requests whose bodies are content, streamed to the blob store under their own limits
#: (``max_upload_bytes``, the registered size, the idle timeout) rather than held here.
STREAMED_UPLOADS = re.compile(r"^/((upload_file|blobs|tus)/[^/]*|bundles|tus)$")


def is_streamed_upload(scope: Scope) -> bool:
    return scope["method"] in ("POST", "PUT", "PATCH") and bool(
        STREAMED_UPLOADS.match(scope["path"])
    )


class BodyLimitMiddleware:
    """Bound every request body that is not a streamed upload.

    Whatever the Content-Type says (FastAPI reads and parses a body with a missing or
    wrong type too), a body over *limit* bytes gets 413, by Content-Length or as it
    streams, and a body that stalls for *idle_seconds* gets 408. Bodies are parsed whole
    anyway, so reading one here (bounded) and handing it on costs nothing extra.
    """

    def __init__(self, app: ASGIApp, limit: int, idle_seconds: float) -> None:
        self.app = app
        self.limit = limit
        self.idle_seconds = idle_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_streamed_upload(scope):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        body = bytearray()
        while True:
            try:
                async with asyncio.timeout(self.idle_seconds):
                    message = await receive()
            except TimeoutError:
                await _answer(
                    scope, receive, send, 408,
                    f"request body stalled: no data for {self.idle_seconds:g} s",
                )  # fmt: skip
                return
            if message["type"] != "http.request":  # the client went away
                await _answer(scope, receive, send, 400, DISCONNECTED)  # for the log
                return
            body += message.get("body", b"")
            if len(body) > self.limit:
                more = bool(message.get("more_body", False))
                await self._refuse(scope, receive, send, drain=more)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, *, drain: bool = True
    ) -> None:
        # Read (and drop) what the client is still sending, up to a bound, so closing the
        # connection does not reset it before the client has read the 413.
        drained = 0
        try:
            async with asyncio.timeout(self.idle_seconds):
                while drain and drained < _DRAIN_LIMIT:
                    message = await receive()
                    if message["type"] != "http.request":
                        break
                    drained += len(message.get("body", b""))
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            pass
        await _answer(scope, receive, send, 413, f"request body larger than {self.limit} bytes")


async def _answer(scope: Scope, receive: Receive, send: Send, code: int, detail: str) -> None:
    response = JSONResponse({"detail": detail}, status_code=code, headers={"Connection": "close"})
    await response(scope, receive, send)
