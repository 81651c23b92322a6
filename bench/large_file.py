"""Benchmark 2: one large file end to end, beside ``cp`` + ``sync``, ``restic backup`` and
single-core hashlib.sha256 speed, all in the same run.

BENCH_LARGE_MIB (default 2048) MiB of random data. Reports end-to-end MiB/s of a first
ingest (sent and hashed on the client, hashed again on the server, stored), the same file
copied with ``cp`` + ``sync`` and backed up with ``restic backup`` to a fresh local
repository (each from a warm page cache), the machine's single-core sha256 MiB/s, and the
peak RSS of server and client. ``cp`` + ``sync`` and a first ingest into a fresh server
alternate BENCH_LARGE_ROUNDS times (default 3) and their medians are compared: one pair
of runs on this shared machine moved the ratio by a tenth from run to run. restic runs
once, after them.

It also says what bounds the ingest: the CPU-seconds client and server used, the rate
they would allow if that work were spread perfectly over every core (the ingest cannot
go faster on this machine without doing less work), and how much of it is the two
SHA-256 passes the protocol requires (the client's, for the record, and the server's,
to verify the content).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import (
    DiskWrites,
    Restic,
    children_cpu,
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


def _requests(rounds: list[dict[str, float] | None]) -> str:
    """The rounds' write requests, their mean size and time (the median of each over the
    rounds), as one cell."""
    seen = [r for r in rounds if r is not None]
    if not seen:
        return "n/a (no block device counters)"
    count, kib, ms = (
        statistics.median(r[k] for r in seen)
        for k in ("write_requests", "mean_request_kib", "mean_request_ms")
    )
    return f"{count:,.0f} requests of {kib:,.0f} KiB, {ms:.1f} ms each"


def main() -> None:
    mib = int(os.environ.get("BENCH_LARGE_MIB", "2048"))
    with tempfile.TemporaryDirectory(prefix="pp-bench-large-") as tmp:
        work = Path(tmp)
        data = work / "big.bin"
        with data.open("wb") as handle:
            block = os.urandom(CHUNK)
            for i in range(mib):
                handle.write(block[:-8] + i.to_bytes(8, "big"))
        # On the disk before any side is timed: the first cp + sync wrote it otherwise
        # (4 GiB instead of 2 in its round).
        os.sync()
        fsync = {"fsync": os.environ["BENCH_FSYNC"]} if "BENCH_FSYNC" in os.environ else {}
        hash_speed = sha256_mib_per_s()
        copies: list[float] = []
        ingests: list[float] = []
        client_rss = server_rss = 0.0
        client_cpu: list[float] = []
        server_cpu: list[float] = []
        disk: dict[str, list[dict[str, float] | None]] = {"ingest": [], "cp_sync": []}
        for round_number in range(int(os.environ.get("BENCH_LARGE_ROUNDS", "3"))):
            with DiskWrites(work) as copy_writes:
                copies.append(cp_sync(data, work / "copy.bin"))
            disk["cp_sync"].append(copy_writes.figures)
            (work / "copy.bin").unlink()
            served = work / f"server-{round_number}"  # a fresh server: the content is new
            served.mkdir()
            env = server_env(served, **fsync)
            key = create_key(served, env)
            with ppserver(served, env) as server:
                warm(data)
                client_before, server_before = children_cpu(), server.cpu_seconds()
                with DiskWrites(work) as ingest_writes:
                    seconds, rss, _ = run_client(server.url, key, "--no-cache", str(data))
                disk["ingest"].append(ingest_writes.figures)
                client_cpu.append(children_cpu() - client_before)
                server_cpu.append(server.cpu_seconds() - server_before)
                server_rss = max(server_rss, server.peak_rss_mib())
            client_rss = max(client_rss, rss)
            ingests.append(seconds)
            shutil.rmtree(served)
        restic = Restic(work).backup(data) if have("restic") else None
    seconds, copy = statistics.median(ingests), statistics.median(copies)
    throughput = mib / seconds
    copy_rate = per_s(mib, copy)
    restic_rate = per_s(mib, restic)
    to_copy = ratio(throughput, copy_rate)
    to_restic = ratio(throughput, restic_rate)
    cores = os.cpu_count() or 1
    client_seconds, server_seconds = statistics.median(client_cpu), statistics.median(server_cpu)
    round_cpu = [c + v for c, v in zip(client_cpu, server_cpu, strict=True)]
    cpu_seconds = statistics.median(round_cpu)
    cpu_bound = mib / (cpu_seconds / cores)
    hashing_cpu = 2 * mib / hash_speed
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
        "client_cpu_seconds": round(client_seconds, 2),
        "server_cpu_seconds": round(server_seconds, 2),
        "cores": cores,
        "cpu_bound_mib_per_s": round(cpu_bound, 1),
        "cpu_bound_ratio_to_cp_sync": ratio(cpu_bound, copy_rate),
        "sha256_cpu_seconds": round(hashing_cpu, 2),
        "rounds_cpu_seconds": [round(c, 2) for c in round_cpu],
        "rounds_mib_per_s": [round(mib / s, 1) for s in ingests],
        "rounds_cp_sync_mib_per_s": [round(mib / s, 1) for s in copies],
        # Each round's write requests to the disk (None without a block device).
        "rounds_disk_writes": disk,
        "order": "(cp + sync, ppclient) x rounds, restic; medians compared",
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
            ("CPU-s, client + server", f"{client_seconds:.2f} + {server_seconds:.2f}"),
            (f"  the most {cores} cores allow", show(cpu_bound, "MiB/s")),
            ("    ratio to cp + sync", show_ratio(ratio(cpu_bound, copy_rate))),
            ("  of it two sha256 passes", f"{hashing_cpu:.2f} CPU-s"),
            ("disk writes, ingest", _requests(disk["ingest"])),
            ("  cp + sync", _requests(disk["cp_sync"])),
            ("server peak RSS", show(server_rss, "MiB")),
            ("client peak RSS", show(client_rss, "MiB")),
        ],
    )
    record("large_file", results)


if __name__ == "__main__":
    main()
