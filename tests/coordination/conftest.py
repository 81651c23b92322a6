"""Coordinators for the conformance suite: one process alone, the workers of one
machine (a shared file), and Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from putplace.coordination import Coordinator, HostCoordinator, LocalCoordinator
from putplace.coordination.redis import RedisCoordinator

#: ``make()``: a coordinator as another server process would have it (closed after).
MakeCoordinator = Callable[[], Coordinator]


@pytest.fixture(params=["process", "host", "redis"])
async def make(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeCoordinator]:
    made: list[Coordinator] = []
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""

    def new() -> Coordinator:
        coordinator: Coordinator
        if request.param == "host":  # each one opens the file as a worker would
            coordinator = HostCoordinator(tmp_path / "limits.sqlite3")
        else:
            coordinator = RedisCoordinator(url) if url else LocalCoordinator()
        made.append(coordinator)
        return coordinator

    yield new
    for coordinator in made:
        await coordinator.close()
