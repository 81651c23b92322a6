"""The SQLite store's write path under many concurrent one-record registrations: what
``POST /put_file`` from many clients asks of it, without HTTP.

Not part of ``make bench`` (it has no peer; it isolates the store's share of the
``/put_file`` figure, which the machine's drift hides end to end). BENCH_STORE_CONCURRENT
(default 64) ``put_files`` calls of one record each at once, BENCH_STORE_ROUNDS (default
300) times, on a fresh database; prints records/s and the process's CPU per record.
``python -m bench.store_writes``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

from bench.common import record, table
from putplace.metadata.sqlite import SQLiteMetadataStore
from putplace.models import FileMetadata


def one_record(number: int) -> FileMetadata:
    return FileMetadata(
        filepath=f"/srv/data/f{number:07d}", hostname="web-01", ip_address="192.0.2.10",
        sha256=hashlib.sha256(str(number).encode()).hexdigest(), file_size=4096,
        file_mode=0o100644, file_uid=1000, file_gid=1000, file_mtime=1.7e9,
        file_atime=1.7e9, file_ctime=1.7e9,
    )  # fmt: skip


async def run(concurrent: int, rounds: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="pp-bench-store-") as tmp:
        store = SQLiteMetadataStore(Path(tmp) / "putplace.db")
        await store.open()
        try:
            process = psutil.Process()
            cpu_before = sum(process.cpu_times()[:2])
            started = time.perf_counter()
            for round_number in range(rounds):
                first = round_number * concurrent
                await asyncio.gather(
                    *(
                        store.put_files([one_record(first + k)], datetime.now(UTC))
                        for k in range(concurrent)
                    )
                )
            seconds = time.perf_counter() - started
            cpu = sum(process.cpu_times()[:2]) - cpu_before
        finally:
            await store.close()
    records = concurrent * rounds
    return {
        "records_per_s": round(records / seconds, 1),
        "cpu_us_per_record": round(cpu / records * 1e6, 1),
    }


def main() -> None:
    concurrent = int(os.environ.get("BENCH_STORE_CONCURRENT", "64"))
    rounds = int(os.environ.get("BENCH_STORE_ROUNDS", "300"))
    result = asyncio.run(run(concurrent, rounds))
    table(
        f"store writes: {concurrent} concurrent one-record put_files x {rounds}",
        [
            ("records/s", f"{result['records_per_s']:,.0f}"),
            ("CPU per record", f"{result['cpu_us_per_record']:.0f} us"),
        ],
    )
    record("store_writes", {"concurrent": concurrent, "rounds": rounds, **result})


if __name__ == "__main__":
    main()
