"""Benchmark 6: what metrics cost. ``POST /put_file`` under ``wrk`` (one thread, 64
connections, 2 server workers), with metrics on (``PUTPLACE_METRICS=key``: the request
middleware and the timing of every store operation) and off, alternated
BENCH_METRICS_ROUNDS (default 3) times in one run, each on a fresh server for
BENCH_METRICS_SECONDS (default 10) s. Reports the median of each and their ratio
(target: on / off >= 0.95, that is under 5% overhead), and the server's CPU time per
record of each: on a shared machine throughput swings with the neighbours, while the CPU
a record costs the server barely moves, so that ratio shows the overhead itself."""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
from pathlib import Path

from bench.common import create_key, have, ppserver, record, server_env, show, show_ratio, table
from bench.server_load import wrk


def main() -> None:
    if not have("wrk"):
        print("metrics overhead: skipped: wrk not installed (apt-get install wrk)")
        record("metrics_overhead", {"skipped": "wrk not installed"})
        return
    rounds = int(os.environ.get("BENCH_METRICS_ROUNDS", "3"))
    seconds = float(os.environ.get("BENCH_METRICS_SECONDS", "10"))
    rates: dict[str, list[float]] = {"key": [], "off": []}
    cpu_us: dict[str, list[float]] = {"key": [], "off": []}
    with tempfile.TemporaryDirectory(prefix="pp-bench-metrics-") as tmp:
        for round_number in range(rounds):
            # Alternated, so neither side always runs first (a warmer or cooler machine).
            order = list(rates) if round_number % 2 == 0 else list(rates)[::-1]
            for access in order:
                work = Path(tmp) / access
                work.mkdir()
                env = server_env(work, metrics=access)
                key = create_key(work, env)
                with ppserver(work, env, workers=2) as server:
                    used = server.cpu_seconds()
                    load = wrk(server.url, key, 64, seconds)
                    used = server.cpu_seconds() - used
                rates[access].append(load["records_per_s"])
                cpu_us[access].append(round(used / max(1, load["acknowledged"]) * 1e6, 1))
                shutil.rmtree(work)
    on, off = statistics.median(rates["key"]), statistics.median(rates["off"])
    ratio = round(on / off, 3) if off else None
    cpu_on, cpu_off = statistics.median(cpu_us["key"]), statistics.median(cpu_us["off"])
    # As a throughput ratio: what the server could answer on its CPU with metrics on.
    cpu_ratio = round(cpu_off / cpu_on, 3) if cpu_on else None
    table(
        "metrics overhead, POST /put_file under wrk (median of each)",
        [
            ("metrics on", show(on, "records/s")),
            ("metrics off", show(off, "records/s")),
            ("on / off", show_ratio(ratio)),
            ("server CPU per record, on", f"{cpu_on:,.0f} us"),
            ("server CPU per record, off", f"{cpu_off:,.0f} us"),
            ("off / on (CPU per record)", show_ratio(cpu_ratio)),
        ],
    )
    record("metrics_overhead", {"on_records_per_s": on, "off_records_per_s": off,
                                "on_to_off": ratio, "rounds": rates,
                                "server_cpu_us_per_record": cpu_us,
                                "on_cpu_us_per_record": cpu_on,
                                "off_cpu_us_per_record": cpu_off,
                                "cpu_off_to_on": cpu_ratio})  # fmt: skip


if __name__ == "__main__":
    main()
