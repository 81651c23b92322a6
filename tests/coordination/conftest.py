"""Coordinators for the conformance suite: one process alone, and Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from putplace.coordination import Coordinator, LocalCoordinator
from putplace.coordination.redis import RedisCoordinator

#: ``make()``: a coordinator as another server process would have it (closed after).
MakeCoordinator = Callable[[], Coordinator]


@pytest.fixture(params=["process", "redis"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[MakeCoordinator]:
    made: list[Coordinator] = []
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""

    def new() -> Coordinator:
        coordinator: Coordinator = RedisCoordinator(url) if url else LocalCoordinator()
        made.append(coordinator)
        return coordinator

    yield new
    for coordinator in made:
        await coordinator.close()
