"""Benchmark 2: one large file end to end, beside ``cp`` + ``sync``, ``restic backup`` and
single-core hashlib.sha256 speed, all in the same run.

BENCH_LARGE_MIB (default 2048) MiB of random data. Reports end-to-end MiB/s of a first
ingest (hash on the client, stream up, hash again on the server, store), the same file
copied with ``cp`` + ``sync`` and backed up with ``restic backup`` to a fresh local
repository (each from a warm page cache; cp runs before PutPlace, restic after), the
machine's single-core sha256 MiB/s, and the peak RSS of server and client.
"""

from __future__ import annotations

import hashlib
import os
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

CHUNK = 1024 * 1024


def sha256_mib_per_s(seconds: float = 2.0) -> float:
    block = os.urandom(CHUNK)
    hasher = hashlib.sha256()
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        hasher.update(block)
        done += 1
    return done / (time.perf_counter() - started)


def main() -> None:
    mib = int(os.environ.get("BENCH_LARGE_MIB", "2048"))
    with tempfile.TemporaryDirectory(prefix="pp-bench-large-") as tmp:
        work = Path(tmp)
        data = work / "big.bin"
        with data.open("wb") as handle:
            block = os.urandom(CHUNK)
            for i in range(mib):
                handle.write(block[:-8] + i.to_bytes(8, "big"))
        fsync = {"fsync": os.environ["BENCH_FSYNC"]} if "BENCH_FSYNC" in os.environ else {}
        env = server_env(work, **fsync)
        key = create_key(work, env)
        hash_speed = sha256_mib_per_s()
        copy = cp_sync(data, work / "copy.bin")
        with ppserver(work, env) as server:
            warm(data)
            seconds, client_rss, _ = run_client(server.url, key, "--no-cache", str(data))
            server_rss = server.peak_rss_mib()
        restic = Restic(work).backup(data) if have("restic") else None
    throughput = mib / seconds
    copy_rate = per_s(mib, copy)
    restic_rate = per_s(mib, restic)
    to_copy = ratio(throughput, copy_rate)
    to_restic = ratio(throughput, restic_rate)
    results = {
        "size_mib": mib,
        "end_to_end_mib_per_s": round(throughput, 1),
        "cp_sync_mib_per_s": copy_rate,
        "restic_mib_per_s": restic_rate,
        "ratio_to_cp_sync": to_copy,
        "ratio_to_restic": to_restic,
        "sha256_single_core_mib_per_s": round(hash_speed, 1),
        "ratio_to_sha256": round(throughput / hash_speed, 3),
        "server_peak_rss_mib": round(server_rss, 1),
        "client_peak_rss_mib": round(client_rss, 1),
        "order": "cp + sync, ppclient, restic",
    }
    table(
        f"large file: {mib:,} MiB",
        [
            ("end-to-end ingest", show(throughput, "MiB/s")),
            ("  cp + sync", show(copy_rate, "MiB/s")),
            ("  restic backup", show(restic_rate, "MiB/s")),
            ("  ratio to cp + sync", show_ratio(to_copy)),
            ("  ratio to restic", show_ratio(to_restic)),
            ("hashlib.sha256, one core", show(hash_speed, "MiB/s")),
            ("  ratio to sha256", f"{throughput / hash_speed:.0%}"),
            ("server peak RSS", show(server_rss, "MiB")),
            ("client peak RSS", show(client_rss, "MiB")),
        ],
    )
    record("large_file", results)


if __name__ == "__main__":
    main()
