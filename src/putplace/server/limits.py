"""Request limits: body size and idle time of request bodies. (The per-key request rate
is kept by :mod:`putplace.coordination`, shared by every process when Redis is set.)"""

from __future__ import annotations

import asyncio
import re

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from putplace.idle_watch import Idle, idle_watch
from putplace.server.errors import DISCONNECTED
from putplace.service.errors import OverloadedError
from putplace.service.memory import MemoryBudget

#: How much of an oversized body is read and dropped before answering 413.
_DRAIN_LIMIT = 16 * 1024 * 1024
#: Bodies this long or longer wait for room in the process's memory budget; smaller ones
#: (a single record is under 1 KiB) take little, and counting them would cost each one.
COUNTED_BODY = 64 * 1024
#: What handling a JSON body takes at its peak, in multiples of its length: parsing and
#: validating a /put_files batch of 2,000 records (770,011 bytes) peaked at 11.5 MB under
#: tracemalloc (15x), the parsed and validated records held 6.3x.
PARSED_FACTOR = 16

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

    A body of :data:`COUNTED_BODY` bytes or more (a batch of records), once read, waits
    until *memory* has room for what handling it takes (:data:`PARSED_FACTOR` times its
    length, at most the whole budget), and is answered 503 with Retry-After after the
    budget's wait.
    """

    def __init__(self, app: ASGIApp, limit: int, idle_seconds: float, memory: MemoryBudget) -> None:
        self.app = app
        self.limit = limit
        self.idle_seconds = idle_seconds
        self.memory = memory
        self.stalls = idle_watch(idle_seconds)  # one watching task for every body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_streamed_upload(scope):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        pieces: list[bytes] = []
        size = 0
        while True:
            try:
                message = await self.stalls.wait(receive())
            except Idle:
                await _answer(
                    scope, receive, send, 408,
                    f"request body stalled: no data for {self.idle_seconds:g} s",
                )  # fmt: skip
                return
            if message["type"] != "http.request":  # the client went away
                await _answer(scope, receive, send, 400, DISCONNECTED)  # for the log
                return
            piece = message.get("body", b"")
            size += len(piece)
            more = bool(message.get("more_body", False))
            if size > self.limit:
                await self._refuse(scope, receive, send, drain=more)
                return
            if not more:
                break
            pieces.append(piece)
        if pieces:  # a body in several messages is handed on in one
            pieces.append(piece)
            message = {"type": "http.request", "body": b"".join(pieces), "more_body": False}
        whole: Message | None = message

        async def replay() -> Message:
            nonlocal whole
            if whole is not None:
                given, whole = whole, None
                return given
            return await receive()

        if size < COUNTED_BODY:  # most requests: nothing to wait for
            await self.app(scope, replay, send)
            return
        # Room is taken once the body is here, so a client cannot hold it by sending
        # slowly (or by merely declaring a length), with or without a valid key.
        taken = min(PARSED_FACTOR * size, self.memory.limit)
        try:
            await self.memory.take(taken)
        except OverloadedError as exc:
            await _answer(
                scope, receive, send, 503, str(exc), {"Retry-After": str(exc.retry_after)}
            )
            return
        try:
            await self.app(scope, replay, send)
        finally:
            self.memory.release(taken)

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


async def _answer(
    scope: Scope,
    receive: Receive,
    send: Send,
    code: int,
    detail: str,
    headers: dict[str, str] | None = None,
) -> None:
    response = JSONResponse(
        {"detail": detail}, status_code=code, headers={"Connection": "close", **(headers or {})}
    )
    await response(scope, receive, send)
