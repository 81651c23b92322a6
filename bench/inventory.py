"""Benchmark: the inventory's reads on a large SQLite metadata store.

BENCH_RECORDS (default 1,000,000) file records on 10 hosts, a quarter of them duplicates
of other content, then a tenth of them changed (so the history holds 100,000 past
versions). Times, median of 5, each read the API makes: ``GET /stats`` (read from the
counters kept at each write, plus the duplicate groups grouped from the records), and
beside it the full count it avoids; and first pages of typical searches, the last one
deep into the result (after 50 pages). Prints milliseconds; writes them to
bench/results.json under ``inventory``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import record, table
from putplace.metadata.inventory import Cursor, FileQuery, SortKey
from putplace.metadata.sqlite import SQLiteMetadataStore
from putplace.models import FileMetadata
from putplace.service import inventory

HOSTS = 10
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def content_hash(number: int) -> str:
    """A SHA-256 as contents have them, spread evenly (a counter written as hex would give
    every record the same leading digits, which the records' hash index is keyed by)."""
    return hashlib.sha256(number.to_bytes(8, "big")).hexdigest()


def records(count: int, rng: random.Random, version: int = 0) -> list[FileMetadata]:
    unique = count - count // 4
    made: list[FileMetadata] = []
    for i in range(count):
        content = i if i < unique else rng.randrange(unique)
        made.append(FileMetadata.model_construct(
            filepath=f"/data/d{i // 1000 % 100:03d}/f{i:07d}.bin", hostname=f"host-{i % HOSTS}",
            ip_address="", sha256=content_hash(content + version * 10**9),
            file_size=1024 + content % 7000 + version, file_mode=0o100644, file_uid=0,
            file_gid=0, file_mtime=1.7e9 + i, file_atime=1.7e9, file_ctime=1.7e9,
            is_symlink=False, link_target=None,
        ))  # fmt: skip
    return made


async def fill(store: SQLiteMetadataStore, count: int) -> float:
    rng = random.Random(7)
    started = time.perf_counter()
    batch = records(count, rng)
    for i in range(0, count, 1000):
        await store.put_files(batch[i : i + 1000], T0 + timedelta(days=i * 30 // count))
    changed = [
        FileMetadata.model_construct(**{**r.__dict__, "file_size": r.file_size + 1,
                                        "sha256": content_hash(i)})
        for i, r in enumerate(batch[::10])
    ]  # fmt: skip
    for i in range(0, len(changed), 1000):
        await store.put_files(changed[i : i + 1000], T0 + timedelta(days=40))
    return time.perf_counter() - started


async def timed(fn: Callable[[], Awaitable[Any]], runs: int = 5) -> float:
    await fn()  # warm the page cache: every figure is a warm read
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - started)
    return round(statistics.median(samples) * 1000, 2)


async def deep_page(store: SQLiteMetadataStore, query: FileQuery) -> None:
    cursor: Cursor | None = None
    for _ in range(50):
        page = await store.search_files(query, cursor, 100)
        cursor = page[-1].cursor
    await store.search_files(query, cursor, 100)


async def measure(path: Path, count: int) -> dict[str, float]:
    store = SQLiteMetadataStore(path)
    await store.open()
    try:
        fill_s = await fill(store, count)
        reader = store._reader  # the full count the counters avoid, on the same connection
        assert reader is not None

        def full_count() -> Any:
            return reader.execute(
                "SELECT hostname, COUNT(*), SUM(file_size) FROM files "
                "WHERE deleted_at IS NULL GROUP BY hostname"
            ).fetchall()

        async def count_everything() -> Any:
            return await asyncio.get_running_loop().run_in_executor(None, full_count)

        def first(query: FileQuery) -> Callable[[], Awaitable[Any]]:
            return lambda: store.search_files(query, None, 100)

        host = ("host-3",)
        day = inventory.Bucket.day
        cache = inventory.DuplicateGroupsCache(60)
        figures = {
            "records": count,
            "fill_records_per_s": round(count * 1.1 / fill_s),
            # As GET /stats answers between two groupings of the duplicates (cached), and
            # each grouping.
            "stats_ms": await timed(lambda: inventory.stats(store, None, day, 10, cache)),
            "stats_one_host_ms": await timed(
                lambda: inventory.stats(store, "host-3", day, 10, cache)
            ),
            "duplicate_groups_ms": await timed(lambda: store.duplicate_groups(None, 10)),
            "duplicate_groups_one_host_ms": await timed(
                lambda: store.duplicate_groups("host-3", 10)
            ),
            "full_count_ms": await timed(count_everything),
            "search_host_prefix_ms": await timed(
                first(FileQuery(hostnames=host, path_prefix="/data/d042", sort=SortKey.path))
            ),
            "search_largest_ms": await timed(first(FileQuery(sort=SortKey.size, descending=True))),
            "search_glob_in_host_ms": await timed(
                first(FileQuery(hostnames=host, path_glob="/data/d04?/*7.bin"))
            ),
            "search_as_of_host_ms": await timed(
                first(FileQuery(hostnames=host, as_of=T0 + timedelta(days=35), sort=SortKey.path))
            ),
            "search_page_51_by_size_ms": await timed(
                lambda: deep_page(store, FileQuery(sort=SortKey.size)), runs=3
            ),
        }
    finally:
        await store.close()
    return figures


def main() -> None:
    count = int(os.environ.get("BENCH_RECORDS", "1000000"))
    with tempfile.TemporaryDirectory(prefix="pp-bench-inv-") as work:
        figures = asyncio.run(measure(Path(work) / "putplace.db", count))
    record("inventory", figures)
    table(
        f"inventory reads, SQLite, {count:,} records (+10% past versions), warm, median",
        [(name, f"{value:,}") for name, value in figures.items()],
    )


if __name__ == "__main__":
    main()
