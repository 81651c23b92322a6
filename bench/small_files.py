"""Benchmark 1: many small files. First ingest, unchanged rescan, rescan after touching 1%.

BENCH_FILES (default 100000) files of 1-8 KiB in a nested tree, a quarter of them
duplicates of other files' content. Prints files/s end to end for each pass.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path

from bench.common import create_key, ppserver, record, run_client, server_env, table

EXTRA = os.environ.get("BENCH_CLIENT_ARGS", "").split()


def make_tree(root: Path, count: int, seed: int = 7) -> list[Path]:
    rng = random.Random(seed)
    unique = count - count // 4
    paths: list[Path] = []
    contents: list[bytes] = []
    for i in range(count):
        directory = root / f"d{i // 1000:03d}" / f"s{(i // 100) % 10}"
        if i % 100 == 0:
            directory.mkdir(parents=True, exist_ok=True)
        if i < unique:
            data = rng.randbytes(rng.randint(1024, 8192))
            contents.append(data)
        else:
            data = contents[rng.randrange(unique)]
        path = directory / f"f{i:06d}.bin"
        path.write_bytes(data)
        paths.append(path)
    return paths


def main() -> None:
    count = int(os.environ.get("BENCH_FILES", "100000"))
    with tempfile.TemporaryDirectory(prefix="pp-bench-small-") as tmp:
        work = Path(tmp)
        tree = work / "tree"
        started = time.perf_counter()
        paths = make_tree(tree, count)
        made = time.perf_counter() - started
        env = server_env(
            work, **({"fsync": os.environ["BENCH_FSYNC"]} if "BENCH_FSYNC" in os.environ else {})
        )
        key = create_key(work, env)
        cache = str(work / "client-cache.sqlite3")
        with ppserver(work, env) as server:
            first, _, _ = run_client(server.url, key, "--cache-file", cache, *EXTRA, str(tree))
            rescan, _, _ = run_client(server.url, key, "--cache-file", cache, str(tree))
            for path in random.Random(1).sample(paths, count // 100):
                os.utime(path)
            touched, _, _ = run_client(server.url, key, "--cache-file", cache, str(tree))
    results = {
        "files": count,
        "first_ingest_files_per_s": round(count / first, 1),
        "unchanged_rescan_files_per_s": round(count / rescan, 1),
        "rescan_after_touching_1pct_files_per_s": round(count / touched, 1),
        "first_ingest_s": round(first, 2),
        "unchanged_rescan_s": round(rescan, 2),
        "touched_rescan_s": round(touched, 2),
    }
    table(
        f"small files: {count:,} files of 1-8 KiB, 25% duplicates (tree made in {made:.0f} s)",
        [
            ("first ingest", f"{results['first_ingest_files_per_s']:,.0f} files/s"),
            ("unchanged rescan", f"{results['unchanged_rescan_files_per_s']:,.0f} files/s"),
            (
                "rescan, 1% touched",
                f"{results['rescan_after_touching_1pct_files_per_s']:,.0f} files/s",
            ),
        ],
    )
    record("small_files", results)


if __name__ == "__main__":
    main()
