"""The storage side of a first ingest of small files, without HTTP: what the server's
SQLite store and local pack store do for BENCH_FILES files, batch by batch.

Per batch of BENCH_STORE_BATCH (default 1,000) records, a quarter of them repeating
content of earlier ones, the same calls a ``POST /put_files`` and the ``POST /bundles``
that follows make: ``put_files``; the bundle's ``get_blobs`` and ``registered_sizes``;
``put_many`` of the new contents into packs; ``put_blobs``. Prints the process's CPU
(user + system), the wall time and the bytes the process wrote, and keeps them in
``bench/results.json``. The end-to-end first ingest shares two cores with the client and
drifts with the machine; this isolates the server's storage work, which is most of its
CPU. Not part of ``make bench`` (it has no peer): ``python -m bench.store_ingest``, before
and after a change to the stores.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

from bench.common import record, table
from putplace.blobs.local import LocalBlobStore
from putplace.metadata.sqlite import SQLiteMetadataStore
from putplace.models import BlobRecord, FileMetadata

#: Contents are 1-8 KiB, as in bench.small_files; every fourth file repeats one before.
MIN_SIZE, MAX_SIZE = 1024, 8192


def files_of(count: int) -> list[tuple[FileMetadata, bytes]]:
    rng = random.Random(1)
    contents = [rng.randbytes(rng.randint(MIN_SIZE, MAX_SIZE)) for _ in range(count * 3 // 4)]
    made = []
    for number in range(count):
        data = contents[number] if number < len(contents) else contents[number - len(contents)]
        meta = FileMetadata(
            filepath=f"/tree/d{number // 1000:03d}/f{number:06d}.bin", hostname="web-01",
            ip_address="192.0.2.10", sha256=hashlib.sha256(data).hexdigest(),
            file_size=len(data), file_mode=0o100644, file_uid=1000, file_gid=1000,
            file_mtime=1.7e9, file_atime=1.7e9, file_ctime=1.7e9,
        )  # fmt: skip
        made.append((meta, data))
    return made


async def run(count: int, batch: int, directory: Path) -> dict[str, float]:
    """Ingest *count* files into stores under *directory* (``putplace.db``, ``blobs/``)."""
    files = files_of(count)
    metadata = SQLiteMetadataStore(directory / "putplace.db")
    blobs = LocalBlobStore(directory / "blobs")
    await metadata.open()
    await blobs.open()
    try:
        process = psutil.Process()
        cpu_before = sum(process.cpu_times()[:2])
        written_before = process.io_counters().write_bytes
        started = time.perf_counter()
        held: set[str] = set()
        for first in range(0, count, batch):
            group = files[first : first + batch]
            now = datetime.now(UTC)
            await metadata.put_files([meta for meta, _ in group], now)
            new = {meta.sha256: data for meta, data in group if meta.sha256 not in held}
            await metadata.get_blobs(new)
            await metadata.registered_sizes(new)
            await blobs.put_many(list(new.items()))
            stored = [
                BlobRecord(sha256=sha, size=len(data), stored_at=now) for sha, data in new.items()
            ]
            await metadata.put_blobs(stored, sent_by="default")
            held.update(new)
        seconds = time.perf_counter() - started
        cpu = sum(process.cpu_times()[:2]) - cpu_before
        written = process.io_counters().write_bytes - written_before
    finally:
        await blobs.close()
        await metadata.close()
    return {
        "files_per_s": round(count / seconds, 1),
        "cpu_s": round(cpu, 2),
        "written_mb": round(written / 1e6),
    }


def main() -> None:
    count = int(os.environ.get("BENCH_FILES", "100000"))
    batch = int(os.environ.get("BENCH_STORE_BATCH", "1000"))
    with tempfile.TemporaryDirectory(prefix="pp-bench-ingest-") as tmp:
        result = asyncio.run(run(count, batch, Path(tmp)))
    table(
        f"store side of a first ingest: {count:,} files, batches of {batch:,}",
        [
            ("files/s (one batch at a time)", f"{result['files_per_s']:,.0f}"),
            ("CPU", f"{result['cpu_s']:.2f} s"),
            ("written", f"{result['written_mb']:,.0f} MB"),
        ],
    )
    record("store_ingest", {"files": count, "batch": batch, **result})


if __name__ == "__main__":
    main()
