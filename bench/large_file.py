"""Benchmark 2: one large file end to end, beside single-core hashlib.sha256 speed.

BENCH_LARGE_MIB (default 2048) MiB of random data. Reports end-to-end MiB/s of a first
ingest (hash on the client, stream up, hash again on the server, store), the machine's
single-core sha256 MiB/s measured in the same run, and the peak RSS of server and client.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

from bench.common import create_key, ppserver, record, run_client, server_env, table

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
        env = server_env(work)
        key = create_key(work, env)
        hash_speed = sha256_mib_per_s()
        with ppserver(work, env) as server:
            seconds, client_rss, _ = run_client(server.url, key, "--no-cache", str(data))
            server_rss = server.peak_rss_mib()
    throughput = mib / seconds
    results = {
        "size_mib": mib,
        "end_to_end_mib_per_s": round(throughput, 1),
        "sha256_single_core_mib_per_s": round(hash_speed, 1),
        "ratio_to_sha256": round(throughput / hash_speed, 3),
        "server_peak_rss_mib": round(server_rss, 1),
        "client_peak_rss_mib": round(client_rss, 1),
    }
    table(
        f"large file: {mib:,} MiB",
        [
            ("end-to-end ingest", f"{throughput:,.0f} MiB/s"),
            ("hashlib.sha256, one core", f"{hash_speed:,.0f} MiB/s"),
            ("ratio", f"{throughput / hash_speed:.0%}"),
            ("server peak RSS", f"{server_rss:,.0f} MiB"),
            ("client peak RSS", f"{client_rss:,.0f} MiB"),
        ],
    )
    record("large_file", results)


if __name__ == "__main__":
    main()
