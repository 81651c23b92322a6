"""Benchmark 1: many small files. First ingest, unchanged rescan, rescan after touching 1%,
each beside its peers in the same run.

BENCH_FILES (default 100000) files of 1-8 KiB in a nested tree, a quarter of them
duplicates of other files' content. Prints files/s end to end for each pass, and for the
same tree: ``restic backup`` to a fresh local repository (first and second, unchanged,
backup) and ``cp -a`` + ``sync``. Every side reads a warm tree; the order alternates
(restic first for the first ingest, PutPlace first for the rescan).
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path

from bench.common import (
    Restic,
    cp_sync,
    create_key,
    have,
    per_s,
    ppserver,
    ratio,
    record,
    run_client,
    server_env,
    show,
    show_ratio,
    table,
    warm,
)

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
        fsync = {"fsync": os.environ["BENCH_FSYNC"]} if "BENCH_FSYNC" in os.environ else {}
        env = server_env(work, **fsync)
        key = create_key(work, env)
        cache = str(work / "client-cache.sqlite3")
        restic = Restic(work) if have("restic") else None
        restic_first = restic.backup(tree) if restic else None
        with ppserver(work, env) as server:
            warm(tree)
            first, _, _ = run_client(server.url, key, "--cache-file", cache, *EXTRA, str(tree))
            warm(tree)
            rescan, _, _ = run_client(server.url, key, "--cache-file", cache, str(tree))
            restic_rescan = restic.backup(tree) if restic else None
            for path in random.Random(1).sample(paths, count // 100):
                os.utime(path)
            warm(tree)
            touched, _, _ = run_client(server.url, key, "--cache-file", cache, str(tree))
        copy = cp_sync(tree, work / "copy")
    ingest = per_s(count, first)
    unchanged = per_s(count, rescan)
    restic_ingest = per_s(count, restic_first)
    copy_ingest = per_s(count, copy)
    restic_unchanged = per_s(count, restic_rescan)
    to_restic = ratio(ingest, restic_ingest)
    to_copy = ratio(ingest, copy_ingest)
    rescan_to_restic = ratio(unchanged, restic_unchanged)
    touched_rate = per_s(count, touched)
    results = {
        "files": count,
        "order": "restic, ppclient first ingest and rescan, restic rescan, cp -a + sync",
        "first_ingest": {
            "files_per_s": ingest,
            "seconds": round(first, 2),
            "restic_files_per_s": restic_ingest,
            "cp_sync_files_per_s": copy_ingest,
            "ratio_to_restic": to_restic,
            "ratio_to_cp_sync": to_copy,
        },
        "unchanged_rescan": {
            "files_per_s": unchanged,
            "seconds": round(rescan, 2),
            "restic_files_per_s": restic_unchanged,
            "ratio_to_restic": rescan_to_restic,
        },
        "touched_rescan": {"files_per_s": touched_rate, "seconds": round(touched, 2)},
    }
    table(
        f"small files: {count:,} files of 1-8 KiB, 25% duplicates (tree made in {made:.0f} s)",
        [
            ("first ingest", show(ingest, "files/s")),
            ("  restic backup", show(restic_ingest, "files/s")),
            ("  cp -a + sync", show(copy_ingest, "files/s")),
            ("  ratio to restic", show_ratio(to_restic)),
            ("  ratio to cp -a + sync", show_ratio(to_copy)),
            ("unchanged rescan", show(unchanged, "files/s")),
            ("  restic, second backup", show(restic_unchanged, "files/s")),
            ("  ratio to restic", show_ratio(rescan_to_restic)),
            ("rescan, 1% touched", show(touched_rate, "files/s")),
        ],
    )
    record("small_files", results)


if __name__ == "__main__":
    main()
