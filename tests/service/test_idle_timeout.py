"""An upload's body that stops coming is ended once a wait for its next piece has lasted
the idle timeout, and only then: time the reader spends elsewhere (writing what came)
does not count, a cancel from outside stays a cancel, and a wait inside another is
watched once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from putplace.idle_watch import Idle, IdleWatch
from putplace.service.errors import StalledError
from putplace.service.ingest import with_idle_timeout


async def _pieces(gaps: list[float]) -> AsyncIterator[bytes]:
    """A piece after each gap (seconds), then the end."""
    for index, gap in enumerate(gaps):
        await asyncio.sleep(gap)
        yield b"%d" % index


async def test_a_body_that_stops_coming_is_stalled_after_the_idle_time() -> None:
    got: list[bytes] = []

    async def read_all() -> None:
        async for piece in with_idle_timeout(_pieces([0, 0.05, 30]), 0.2):
            got.append(piece)

    started = time.monotonic()
    with pytest.raises(StalledError, match=r"no data received for 0\.2 s"):
        await read_all()
    waited = time.monotonic() - started
    assert got == [b"0", b"1"]  # what came before the stall was handed on
    assert 0.2 <= waited < 1.0  # after the idle time, within a quarter of it (plus noise)
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_slow_pieces_within_the_idle_time_and_a_slow_reader_are_not_a_stall() -> None:
    got = []
    async for piece in with_idle_timeout(_pieces([0.1, 0.1, 0.1, 0.1]), 0.25):
        got.append(piece)
        await asyncio.sleep(0.4)  # the reader busy: not a wait for the body
    assert got == [b"0", b"1", b"2", b"3"]


async def test_a_cancel_from_outside_stays_a_cancel() -> None:
    watch = IdleWatch(0.2)
    waiting = asyncio.create_task(watch.wait(asyncio.Event().wait()))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert watch.waiting == {}


async def test_a_cancel_from_outside_as_the_watch_ends_the_wait_stays_a_cancel() -> None:
    watch = IdleWatch(0.2)
    caught: list[BaseException] = []

    async def wait_then_be_cancelled() -> None:
        try:
            await watch.wait(asyncio.Event().wait())
        except BaseException as exc:
            caught.append(exc)
            raise

    waiting = asyncio.create_task(wait_then_be_cancelled())
    await asyncio.sleep(0.05)
    # In one step of the loop, as the watch ends the wait, a shutdown cancels it too.
    watch.ended.add(waiting)
    waiting.cancel()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert [type(exc) for exc in caught] == [asyncio.CancelledError]


async def test_a_wait_inside_a_wait_is_watched_once() -> None:
    watch = IdleWatch(0.2)

    async def inner() -> str:
        return await watch.wait(asyncio.sleep(0.05, "inner"))

    assert await watch.wait(inner()) == "inner"
    assert watch.waiting == {}
    with pytest.raises(Idle):
        await watch.wait(watch.wait(asyncio.Event().wait()))
    assert watch.waiting == {}
