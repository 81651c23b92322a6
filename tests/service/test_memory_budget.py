"""The per-process budget for request bodies: first come, first served, nothing lost
when a waiter gives up."""

from __future__ import annotations

import asyncio

import pytest

from putplace.service.errors import OverloadedError
from putplace.service.memory import MemoryBudget


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_request_that_fits_is_not_kept_waiting() -> None:
    budget = MemoryBudget(100)
    async with budget.hold(60), budget.hold(40):
        assert budget.held == 100
    assert budget.held == 0


async def test_a_large_request_is_not_overtaken_by_smaller_ones_behind_it() -> None:
    budget = MemoryBudget(100)
    order: list[str] = []

    async def request(name: str, size: int) -> None:
        async with budget.hold(size):
            order.append(name)
            await asyncio.sleep(0.01)

    await budget.take(60)  # held by a request already in
    large = asyncio.create_task(request("large", 80))
    await settle()
    small = asyncio.create_task(request("small", 30))  # would fit beside the 60, but waits
    await settle()
    assert order == []
    budget.release(60)
    await asyncio.gather(large, small)
    assert order == ["large", "small"]
    assert budget.held == 0


async def test_a_wait_that_times_out_is_503_and_leaves_the_budget_as_it_was() -> None:
    budget = MemoryBudget(100, wait_seconds=0.05)
    await budget.take(90)
    with pytest.raises(OverloadedError, match="PUTPLACE_REQUEST_MEMORY_BYTES") as refused:
        await budget.take(20)
    assert refused.value.retry_after > 0
    assert budget.held == 90
    budget.release(90)
    async with budget.hold(100):  # the whole budget is there again
        assert budget.held == 100


async def test_a_cancelled_waiter_lets_the_ones_behind_it_in() -> None:
    budget = MemoryBudget(100)
    await budget.take(50)
    blocked = asyncio.create_task(budget.take(80))  # waits for the 50
    await settle()
    behind = asyncio.create_task(budget.take(40))  # fits now, but waits behind the 80
    await settle()
    assert not behind.done()
    blocked.cancel()
    await asyncio.wait_for(behind, 1)
    assert budget.held == 90


async def test_a_request_larger_than_the_whole_budget_is_a_mistake() -> None:
    with pytest.raises(ValueError, match="can never fit"):
        await MemoryBudget(100).take(101)
