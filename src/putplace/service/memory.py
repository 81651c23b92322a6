"""Bytes of request bodies a server process holds in memory at once.

A bundle (``POST /bundles``) is held whole from its first member's bytes until it is
stored, and a batch of records (``POST /put_files``) as parsed and validated objects
until it is written; requests that wait for the database writer wait holding them.
Without a bound, a server's memory grew with the number of clients ingesting at once:
16 clients' first ingests into one server (2 workers) took a worker to 465-529 MiB
(284-348 with this budget), 32 clients to 726-947 MiB (404-407). :class:`MemoryBudget`
makes a request wait until its bytes fit, first come first served; one that cannot get them within
``wait_seconds`` is answered 503 with ``Retry-After``, which clients retry.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from putplace import telemetry
from putplace.service.errors import OverloadedError

#: Seconds a request waits for room before it is answered 503 (a bundle is stored in
#: well under a second, so a wait this long means the process is overloaded).
ROOM_WAIT_SECONDS = 10.0
#: What the 503 asks the client to wait before it tries again.
RETRY_AFTER_SECONDS = 2


class MemoryBudget:
    """*limit* bytes handed out first come, first served (one event loop).

    A request waits behind every request that came before it, even one that would fit
    now: otherwise a stream of small requests could keep a large one waiting for ever.
    """

    def __init__(self, limit: int, wait_seconds: float = ROOM_WAIT_SECONDS) -> None:
        if limit < 1:
            raise ValueError("a memory budget must be at least 1 byte")
        self.limit = limit
        self.wait_seconds = wait_seconds
        self.held = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    @asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[Room]:
        """*size* bytes of the budget while the block runs (see :meth:`take`), or until
        it hands them back early with :meth:`Room.give_back`."""
        await self.take(size)
        room = Room(self, size)
        try:
            yield room
        finally:
            room.give_back()

    async def take(self, size: int) -> None:
        """*size* bytes of the budget, once every request before this one has had its
        bytes and these fit; :class:`OverloadedError` when that takes longer than
        ``wait_seconds``. Hand them back with :meth:`release`."""
        if size > self.limit:
            raise ValueError(f"{size} bytes can never fit a budget of {self.limit}")
        if not self._waiting and self.held + size <= self.limit:
            self.held += size
            return
        await self._wait_for(size)

    def release(self, size: int) -> None:
        self.held -= size
        self._wake()

    async def _wait_for(self, size: int) -> None:
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, turn)
        self._waiting.append(entry)
        try:
            async with asyncio.timeout(self.wait_seconds):
                await turn
        except BaseException as exc:
            if turn.done() and not turn.cancelled():  # granted as the wait ended: give back
                self.held -= size
            elif entry in self._waiting:
                self._waiting.remove(entry)
            self._wake()  # those behind it may fit now
            if isinstance(exc, TimeoutError):
                telemetry.OVERLOADED.inc()
                raise OverloadedError(
                    f"the server holds {self.held} bytes of request bodies, its limit "
                    f"(PUTPLACE_REQUEST_MEMORY_BYTES) is {self.limit}, and {size} more did "
                    f"not fit within {math.ceil(self.wait_seconds)} s; try again",
                    retry_after=RETRY_AFTER_SECONDS,
                ) from None
            raise

    def _wake(self) -> None:
        """Grant the waiting requests in order while the first of them fits."""
        while self._waiting:
            size, turn = self._waiting[0]
            if turn.done():  # its request stopped waiting (cancelled): it takes nothing
                self._waiting.popleft()
                continue
            if self.held + size > self.limit:
                return
            self._waiting.popleft()
            self.held += size
            turn.set_result(None)


class Room:
    """Bytes taken from a :class:`MemoryBudget`, given back once."""

    def __init__(self, budget: MemoryBudget, size: int) -> None:
        self._budget = budget
        self._size = size

    def give_back(self) -> None:
        if self._size:
            size, self._size = self._size, 0
            self._budget.release(size)
