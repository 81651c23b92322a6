"""Bundles are read into memory maps that are kept for the next bundles, for a while:
the pages a bundle faulted in are written over by the next, not handed back to the
system and faulted in again."""

from __future__ import annotations

import asyncio
import resource
from collections.abc import AsyncIterator

import psutil

from putplace.service.bundles import _Reader
from putplace.service.spare_maps import SpareMaps

MiB = 1024 * 1024
PIECE = b"m" * MiB  # made once: a fresh one would fault its own pages in


async def body(size: int) -> AsyncIterator[bytes]:
    for _ in range(size // MiB):
        yield PIECE


async def body_of(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def read_bundle(maps: SpareMaps, size: int) -> None:
    reader = _Reader(body(size), maps)
    data, failure = await reader.read_upto(size)
    assert (len(data), failure) == (size, None)
    del data
    reader.close()


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


async def test_bundles_after_the_first_fault_no_pages_in() -> None:
    maps = SpareMaps(size=8 * MiB, keep=2, idle_seconds=60)
    await read_bundle(maps, 8 * MiB)
    before = faults()
    for _ in range(10):
        await read_bundle(maps, 8 * MiB)
    # One bundle of 8 MiB in a fresh map faults 2,048 pages in; ten in a kept map, none.
    assert faults() - before < 512, "bundles' pages were faulted in again"
    assert maps.kept == 1
    maps.trim(force=True)


async def test_kept_maps_are_unmapped_once_no_bundle_came_for_a_while() -> None:
    process = psutil.Process()
    maps = SpareMaps(size=32 * MiB, keep=2, idle_seconds=1.0)
    before = process.memory_info().rss
    await read_bundle(maps, 32 * MiB)
    assert maps.kept == 1
    assert process.memory_info().rss - before > 24 * MiB  # kept, pages and all
    await asyncio.sleep(0.5)
    await read_bundle(maps, 32 * MiB)  # a bundle came: the map stays a while longer
    await asyncio.sleep(0.7)  # past the first bundle's idle time, not the second's
    assert maps.kept == 1
    await asyncio.sleep(0.8)
    assert maps.kept == 0
    assert process.memory_info().rss - before < 8 * MiB, "an idle map's pages were kept"


async def test_no_more_than_keep_maps_are_kept() -> None:
    maps = SpareMaps(size=MiB, keep=2, idle_seconds=60)
    taken = [maps.take(MiB) for _ in range(3)]
    for mapped in taken:
        maps.give(mapped)
    assert maps.kept == 2
    assert [m.closed for m in taken] == [False, False, True]
    assert maps.take(MiB) is taken[1]  # the last given back first
    maps.give(taken[1])
    maps.trim(force=True)
    assert all(m.closed for m in taken)


async def test_a_bundle_larger_than_the_maps_gets_its_own_map_and_gives_it_back() -> None:
    maps = SpareMaps(size=MiB, keep=2, idle_seconds=60)
    mapped = maps.take(MiB + 1)
    assert len(mapped) == MiB + 1
    maps.give(mapped)
    assert mapped.closed
    assert maps.kept == 0


async def test_a_view_that_outlives_its_bundle_keeps_the_pages_it_shows() -> None:
    """A failed bundle's traceback may hold a view of its bytes after the map went back:
    unmapping must not pull the pages from under it."""
    maps = SpareMaps(size=MiB, keep=2, idle_seconds=60)
    mapped = maps.take(10)
    mapped[:5] = b"hello"
    view = memoryview(mapped)[:5]
    maps.give(mapped)
    maps.trim(force=True)
    assert bytes(view) == b"hello"
    view.release()


def test_without_an_event_loop_nothing_is_kept() -> None:
    """No timer could unmap a kept map later, so none is kept."""
    maps = SpareMaps(size=MiB, keep=2, idle_seconds=60)
    mapped = maps.take(10)
    maps.give(mapped)
    assert maps.kept == 0
    assert mapped.closed


async def test_a_reused_map_gives_only_the_bytes_that_arrived() -> None:
    """A body cut short in a map that held a whole bundle before must not come out padded
    with that bundle's bytes: they would pass its hash check, and a client could claim
    content it never sent."""
    maps = SpareMaps(size=MiB, keep=1, idle_seconds=60)
    whole = bytes(range(256)) * 1000
    first = _Reader(body_of(whole), maps)
    assert bytes((await first.read_upto(len(whole)))[0]) == whole
    first.close()
    second = _Reader(body_of(whole[:-10]), maps)
    data, failure = await second.read_upto(len(whole))
    assert (bytes(data), failure) == (whole[:-10], None)
    del data
    second.close()
    maps.trim(force=True)


async def test_beyond_keep_maps_a_bundle_gets_a_map_of_its_own_size() -> None:
    """Only maps that can be kept are made at the pool's size: address space is committed
    memory under strict overcommit."""
    maps = SpareMaps(size=MiB, keep=1, idle_seconds=60)
    pooled, own = maps.take(10), maps.take(10)
    assert (len(pooled), len(own)) == (MiB, 10)
    maps.give(own)
    maps.give(pooled)
    assert (own.closed, maps.kept) == (True, 1)
    maps.trim(force=True)


async def test_an_abandoned_map_is_never_handed_out_again_and_frees_its_place() -> None:
    maps = SpareMaps(size=MiB, keep=1, idle_seconds=60)
    abandoned = maps.take(10)
    maps.abandon(abandoned)
    assert maps.kept == 0
    again = maps.take(10)
    assert again is not abandoned
    assert len(again) == MiB  # its place among the maps that may be kept is free again
    maps.give(again)
    maps.trim(force=True)
