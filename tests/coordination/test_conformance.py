"""What every coordinator does alike: token buckets, quota reservations, key-change
announcements; and, where it says it is shared, across processes."""

from __future__ import annotations

import asyncio
import secrets

from tests.coordination.conftest import MakeCoordinator


async def test_a_bucket_allows_its_burst_then_says_how_long_to_wait(
    make: MakeCoordinator,
) -> None:
    limits = make()
    # Two per second: a token comes back only after half a second, however slowly the
    # machine runs these calls.
    assert [await limits.take("key:a", 2, 3) for _ in range(3)] == [0, 0, 0]
    assert await limits.take("key:a", 2, 3) == 1  # at least a second, as Retry-After says
    assert await limits.take("key:b", 2, 3) == 0  # every key has its own bucket
    await asyncio.sleep(0.6)  # refilled
    assert await limits.take("key:a", 2, 3) == 0
    assert all([await limits.take("key:a", 0, 1) == 0 for _ in range(5)])  # 0: no limit


async def test_reservations_count_what_others_hold_until_released(
    make: MakeCoordinator,
) -> None:
    limits = make()
    first, others = await limits.reserve("quota:lab:bytes", 60)
    assert others == 0
    second, others = await limits.reserve("quota:lab:bytes", 50)
    assert others == 60  # not its own 50
    assert (await limits.reserve("quota:other:bytes", 5))[1] == 0  # every bucket alone
    await limits.release(first)
    assert (await limits.reserve("quota:lab:bytes", 1))[1] == 50
    await limits.release(second)
    await limits.release(second)  # twice changes nothing
    assert (await limits.reserve("quota:lab:bytes", 1))[1] == 1


async def test_key_changes_are_heard(make: MakeCoordinator) -> None:
    """The announcing process forgets the key at once; with a shared coordinator, so does
    every other process."""
    here, there = make(), make()
    heard_here: list[str | None] = []
    heard_there: list[str | None] = []
    here.listen(heard_here.append)
    there.listen(heard_there.append)
    await asyncio.sleep(0.2)  # subscribed
    # A hash of this test's own: on a Redis shared by parallel test processes, the others'
    # announcements arrive on the same channel too.
    changed = secrets.token_hex(32)
    await here.announce_key_change(changed)
    assert heard_here[0] == changed
    if here.shared:
        for _ in range(50):
            if changed in heard_there:
                break
            await asyncio.sleep(0.05)
        assert heard_there.count(changed) == 1
    else:
        assert heard_there == []


async def test_shared_limits_hold_across_processes(make: MakeCoordinator) -> None:
    first, second = make(), make()
    taken = [await process.take("key:a", 0.01, 4) for process in (first, second) * 4]
    allowed = taken.count(0)
    assert allowed == (4 if first.shared else 8)
    await first.reserve("quota:lab:files", 7)
    _, others = await second.reserve("quota:lab:files", 3)
    assert others == (7 if first.shared else 0)
