"""A first ingest onto a server that already holds many records, beside one onto an empty
server: what the small-files figure (always from an empty server) leaves out.

Once the metadata indexes outgrow the page cache, every record inserted at a random key
(its hash, its size, its blob) dirties a page of its own, so a host joining a large
fleet ingests more slowly than the first one did. This fills a SQLite metadata store
with BENCH_SCALE_RECORDS (default 1,000,000) records of 10 other hosts, random hashes,
with their blob records (through the store itself, once), then alternates, for
BENCH_SCALE_RUNS (default 2) rounds, a first ingest of the small-files tree (BENCH_FILES
files, as in ``bench.small_files``) into a fresh ``ppserver`` on an empty database and
into one on a copy of the filled database. It prints the medians and their ratio, the
server's CPU and the bytes it wrote, and keeps them in ``bench/results.json``.

Not part of ``make bench`` (filling the store takes minutes): ``python -m
bench.ingest_at_scale``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import create_key, ppserver, record, run_client, server_env, table
from bench.small_files import make_tree
from putplace.metadata.sqlite import SQLiteMetadataStore
from putplace.models import BlobRecord, FileMetadata

BATCH = 1000


def _records(start: int) -> list[FileMetadata]:
    made = []
    for i in range(start, start + BATCH):
        made.append(FileMetadata.model_construct(
            filepath=f"/data/d{i // 1000:04d}/f{i:07d}.bin", hostname=f"fleet-{i % 10}",
            ip_address="", sha256=hashlib.sha256(i.to_bytes(8, "big")).hexdigest(),
            file_size=1024 + i % 7000, file_mode=0o100644, file_uid=0, file_gid=0,
            file_mtime=1.7e9 + i, file_atime=1.7e9, file_ctime=1.7e9, is_symlink=False,
            link_target=None,
        ))  # fmt: skip
    return made


async def fill(path: Path, count: int) -> float:
    """Records and blob records of *count* files of other hosts; seconds taken."""
    store = SQLiteMetadataStore(path)
    await store.open()
    started = time.perf_counter()
    now = datetime(2026, 1, 1, tzinfo=UTC)
    try:
        for start in range(0, count, BATCH):
            files = _records(start)
            await store.put_files(files, now)
            blobs = [BlobRecord(sha256=f.sha256, size=f.file_size, stored_at=now) for f in files]
            await store.put_blobs(blobs, sent_by="default")
    finally:
        await store.close()
    return time.perf_counter() - started


def ingest(tree: Path, count: int, database: Path | None) -> dict[str, float]:
    """One first ingest of *tree* into a fresh server on a copy of *database* (None: an
    empty one): files/s, the server's CPU seconds and the bytes it wrote."""
    with tempfile.TemporaryDirectory(prefix="pp-bench-scale-") as tmp:
        work = Path(tmp)
        if database is not None:
            shutil.copy(database, work / "putplace.db")
        env = server_env(work)
        key = create_key(work, env)
        with ppserver(work, env) as server:
            # The server's process and its workers' (the workers do the writing).
            cpu, written = server.cpu_seconds(), server.written_bytes()
            seconds, _, _ = run_client(
                server.url, key, "--cache-file", str(work / "cache.sqlite3"), str(tree)
            )
            cpu = server.cpu_seconds() - cpu
            written = server.written_bytes() - written
    return {
        "files_per_s": round(count / seconds, 1),
        "server_cpu_s": round(cpu, 2),
        "server_written_mb": round(written / 1e6),
    }


def _median(runs: list[dict[str, float]], field: str) -> float:
    return statistics.median(run[field] for run in runs)


def main() -> None:
    records = int(os.environ.get("BENCH_SCALE_RECORDS", "1000000"))
    count = int(os.environ.get("BENCH_FILES", "100000"))
    rounds = int(os.environ.get("BENCH_SCALE_RUNS", "2"))
    with tempfile.TemporaryDirectory(prefix="pp-bench-scale-data-") as tmp:
        tree, database = Path(tmp) / "tree", Path(tmp) / "filled.db"
        make_tree(tree, count)
        filled_in = asyncio.run(fill(database, records))
        empty: list[dict[str, float]] = []
        full: list[dict[str, float]] = []
        for _ in range(rounds):
            empty.append(ingest(tree, count, None))
            full.append(ingest(tree, count, database))
    results: dict[str, Any] = {
        "records_held": records,
        "files": count,
        "fill_records_per_s": round(records / filled_in),
        "empty_runs": empty,
        "filled_runs": full,
        "empty_files_per_s": _median(empty, "files_per_s"),
        "filled_files_per_s": _median(full, "files_per_s"),
    }
    results["ratio_filled_to_empty"] = round(
        results["filled_files_per_s"] / results["empty_files_per_s"], 2
    )
    table(
        f"first ingest of {count:,} files, medians of {rounds} alternated rounds",
        [
            ("into an empty server", f"{results['empty_files_per_s']:,.0f} files/s"),
            (f"into one holding {records:,} records",
             f"{results['filled_files_per_s']:,.0f} files/s"),
            ("  ratio", f"{results['ratio_filled_to_empty']:.2f}x"),
            ("server CPU, empty / filled", f"{_median(empty, 'server_cpu_s'):.1f} / "
             f"{_median(full, 'server_cpu_s'):.1f} s"),
            ("server writes, empty / filled", f"{_median(empty, 'server_written_mb'):,.0f} / "
             f"{_median(full, 'server_written_mb'):,.0f} MB"),
        ],
    )  # fmt: skip
    record("ingest_at_scale", results)


if __name__ == "__main__":
    main()
