"""``BodyLimitMiddleware`` on its own: a body that comes in pieces reaches the route
whole, and a request cancelled from outside while its body is awaited (a shutdown, a
client gone) stays cancelled rather than being answered as a stalled body."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import Request

from putplace.server.limits import BodyLimitMiddleware
from putplace.service.memory import MemoryBudget

ROOMY = MemoryBudget(1 << 20)

SCOPE = {"type": "http", "method": "POST", "path": "/put_files", "headers": []}


async def test_a_body_in_several_messages_reaches_the_route_whole() -> None:
    pieces = [b'{"files": [', b'{"a": 1}', b"]}"]
    messages = [
        {"type": "http.request", "body": piece, "more_body": index < len(pieces) - 1}
        for index, piece in enumerate(pieces)
    ]
    seen: list[bytes] = []

    async def route(scope: Any, receive: Any, send: Any) -> None:
        seen.append(await Request(scope, receive).body())

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: Any) -> None:
        raise AssertionError(f"answered by the middleware: {message}")

    middleware = BodyLimitMiddleware(route, limit=1000, idle_seconds=5, memory=ROOMY)
    await middleware(dict(SCOPE), receive, send)
    assert seen == [b"".join(pieces)]


async def test_a_request_cancelled_while_its_body_is_awaited_is_not_a_stall() -> None:
    answered: list[Any] = []

    async def route(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the route was reached")

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # no body comes
        raise AssertionError("unreachable")

    async def send(message: Any) -> None:
        answered.append(message)

    middleware = BodyLimitMiddleware(route, limit=1000, idle_seconds=0.2, memory=ROOMY)
    request = asyncio.create_task(middleware(dict(SCOPE), receive, send))
    await asyncio.sleep(0.05)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    await asyncio.sleep(0.3)  # past the idle timeout: the watch finds nothing to answer
    assert answered == []


async def test_a_stalled_body_is_answered_408() -> None:
    answered: list[Any] = []

    async def route(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the route was reached")

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: Any) -> None:
        answered.append(message)

    middleware = BodyLimitMiddleware(route, limit=1000, idle_seconds=0.2, memory=ROOMY)
    await asyncio.wait_for(middleware(dict(SCOPE), receive, send), 5)
    assert answered[0]["status"] == 408
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
