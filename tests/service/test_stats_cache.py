"""GET /stats groups the duplicates from every record, so it reuses them for a while."""

from __future__ import annotations

from pathlib import Path

from putplace.metadata.sqlite import SQLiteMetadataStore
from putplace.service.inventory import Bucket, DuplicateGroupsCache, stats
from tests.metadata.test_conformance import at, meta, put_file, sha


async def test_duplicate_groups_are_reused_until_they_expire(tmp_path: Path) -> None:
    store = SQLiteMetadataStore(tmp_path / "m.db")
    await store.open()
    clock = [100.0]
    cache = DuplicateGroupsCache(60, clock=lambda: clock[0])
    try:
        for path in ("/a", "/b"):
            await put_file(store, meta("h", path, sha256=sha("same")), at(0))
        first = await stats(store, None, Bucket.day, 10, cache)
        assert [g["count"] for g in first.duplicate_groups] == [2]
        await put_file(store, meta("h", "/c", sha256=sha("same")), at(1))
        clock[0] += 59
        kept = await stats(store, None, Bucket.day, 10, cache)
        assert [g["count"] for g in kept.duplicate_groups] == [2]  # reused
        assert kept.files == 3  # the counters are always current
        clock[0] += 2
        fresh = await stats(store, None, Bucket.day, 10, cache)
        assert [g["count"] for g in fresh.duplicate_groups] == [3]
        uncached = DuplicateGroupsCache(0)
        await put_file(store, meta("h", "/d", sha256=sha("same")), at(2))
        now = await stats(store, None, Bucket.day, 10, uncached)
        assert [g["count"] for g in now.duplicate_groups] == [4]
    finally:
        await store.close()
