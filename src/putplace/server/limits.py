"""Request limits: JSON body size, per-key request rate, upload idle time."""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class UploadIdleError(Exception):
    """No bytes arrived for longer than the upload idle timeout."""


async def with_idle_timeout(chunks: AsyncIterable[bytes], seconds: float) -> AsyncIterator[bytes]:
    """Pass *chunks* through, raising :class:`UploadIdleError` on a gap over *seconds*."""
    iterator = aiter(chunks)
    while True:
        try:
            async with asyncio.timeout(seconds):
                chunk = await anext(iterator)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise UploadIdleError(f"no data received for {seconds:g} s") from None
        yield chunk


#: How much of an oversized body is read and dropped before answering 413.
_DRAIN_LIMIT = 16 * 1024 * 1024


class JsonBodyLimitMiddleware:
    """Refuse JSON bodies over *limit* bytes with 413, by Content-Length or as they stream."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if not headers.get(b"content-type", b"").startswith(b"application/json"):
            await self.app(scope, receive, send)
            return
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        # JSON bodies are parsed whole anyway: read it here (bounded) and hand it on.
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
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
        while drain and drained < _DRAIN_LIMIT:
            message = await receive()
            if message["type"] != "http.request":
                break
            drained += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        response = JSONResponse(
            {"detail": f"JSON body larger than {self.limit} bytes"},
            status_code=413,
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


class RateLimiter:
    """Token buckets per API key (per process), bounded in the number of keys tracked."""

    def __init__(self, per_second: float, burst: int, max_keys: int = 10_000) -> None:
        self.per_second = per_second
        self.burst = burst
        self._max = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def retry_after(self, key_id: str) -> int:
        """0 if a request by *key_id* may go ahead now, else seconds to wait."""
        if self.per_second <= 0:
            return 0
        now = time.monotonic()
        tokens, last = self._buckets.pop(key_id, (float(self.burst), now))
        tokens = min(self.burst, tokens + (now - last) * self.per_second)
        if tokens >= 1:
            self._buckets[key_id] = (tokens - 1, now)
            wait = 0
        else:
            self._buckets[key_id] = (tokens, now)
            wait = max(1, math.ceil((1 - tokens) / self.per_second))
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return wait
