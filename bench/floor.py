"""What a first ingest of small files can cost on PutPlace's stack, and whose share is
whose: the floor, side by side with restic and PutPlace.

The small-files figure compares PutPlace with restic; this says how far from the floor
of its own stack PutPlace is, and which side (client or server) the distance is on. On
the same tree as ``bench/small_files.py`` (BENCH_FILES, default 100,000 files of 1-8 KiB,
a quarter duplicates), BENCH_FLOOR_ROUNDS (default 3) rounds of four first ingests, each
fresh, the first turning from round to round:

- restic: ``restic backup`` to a fresh local repository;
- floor: ``bench/floor_client.py`` against ``bench/floor_server.py`` (the least work a
  client and a server in Python, on uvicorn, Starlette and SQLite with PutPlace's schema
  and durability, do for a first ingest: see each file);
- floor client -> ppserver: the same client against PutPlace's server (defaults, fsync
  on), which it speaks to through the same two requests;
- PutPlace: ``ppclient`` against ``ppserver``.

Wall-clock seconds and CPU-seconds (server and client together) of each; the medians
are compared with restic's. The client's and the server's CPU-seconds are also shown
apart, so the distance from the floor can be put on one side or the other (restic's is
all its own process's); each is the median of its own rounds, so the two need not add
up to the median total. Each side reads a warm tree. Not part of ``make bench``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from bench.common import (
    ROOT,
    Restic,
    Server,
    children_cpu,
    create_key,
    have,
    per_s,
    ppserver,
    ratio,
    record,
    run_client,
    serve,
    server_env,
    show,
    show_ratio,
    table,
    warm,
)
from bench.small_files import make_tree

SIDES = ("restic", "floor", "floor_client_ppserver", "putplace")
LABELS = {
    "restic": "restic backup",
    "floor": "floor client -> floor server",
    "floor_client_ppserver": "floor client -> ppserver",
    "putplace": "ppclient -> ppserver",
}
#: A side's wall-clock seconds, client CPU-seconds and server CPU-seconds.
Timing = tuple[float, float, float]


def floor_client(url: str, key: str, tree: Path) -> None:
    subprocess.run([sys.executable, "-m", "bench.floor_client", url, key, str(tree)],
                   cwd=ROOT, check=True)  # fmt: skip


def floor_server(place: Path) -> AbstractContextManager[Server]:
    env = {**os.environ, "FLOOR_DIR": str(place)}
    command = [sys.executable, "-m", "uvicorn", "bench.floor_server:app", "--loop", "uvloop",
               "--http", "httptools", "--log-level", "warning", "--no-access-log"]  # fmt: skip
    return serve(command, ROOT, env)


def timed_ingest(server: Server, ingest: Callable[[], object], tree: Path) -> Timing:
    """Seconds, and the client's (this process' children's) and the server's
    CPU-seconds, of *ingest*."""
    warm(tree)
    client, served = children_cpu(), server.cpu_seconds()
    started = time.perf_counter()
    ingest()
    seconds = time.perf_counter() - started
    return seconds, children_cpu() - client, server.cpu_seconds() - served


def one_side(side: str, place: Path, tree: Path) -> Timing | None:
    place.mkdir()
    if side == "restic":
        if not have("restic"):
            return None
        repository = Restic(place)
        before = children_cpu()
        seconds = repository.backup(tree)
        return seconds, children_cpu() - before, 0.0
    if side == "floor":
        with floor_server(place) as server:
            return timed_ingest(server, lambda: floor_client(server.url, "-", tree), tree)
    env = server_env(place)
    key = create_key(place, env)
    with ppserver(place, env) as server:
        if side == "floor_client_ppserver":
            return timed_ingest(server, lambda: floor_client(server.url, key, tree), tree)
        cache = str(place / "client-cache.sqlite3")
        return timed_ingest(
            server, lambda: run_client(server.url, key, "--cache-file", cache, str(tree)), tree
        )


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def main() -> None:
    count = int(os.environ.get("BENCH_FILES", "100000"))
    rounds = int(os.environ.get("BENCH_FLOOR_ROUNDS", "3"))
    if rounds < 1:
        raise SystemExit("BENCH_FLOOR_ROUNDS must be at least 1")
    timings: dict[str, list[Timing]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="pp-bench-floor-") as tmp:
        work = Path(tmp)
        tree = work / "tree"
        make_tree(tree, count)
        for number in range(rounds):
            turned = SIDES[number % len(SIDES) :] + SIDES[: number % len(SIDES)]
            for side in turned:
                timing = one_side(side, work / f"{side}-{number}", tree)
                if timing is not None:
                    timings[side].append(timing)
    results: dict[str, object] = {"files": count, "rounds": rounds}
    rows = []
    restic_rate = per_s(count, median([s for s, _, _ in timings["restic"]]))
    restic_per_cpu = per_s(count, median([c + v for _, c, v in timings["restic"]]))
    for side in SIDES:
        rate = per_s(count, median([s for s, _, _ in timings[side]]))
        per_cpu = per_s(count, median([c + v for _, c, v in timings[side]]))
        client_cpu = median([c for _, c, _ in timings[side]])
        server_cpu = median([v for _, _, v in timings[side]])
        results[side] = {
            "files_per_s": rate,
            "files_per_cpu_s": per_cpu,
            "ratio_to_restic": ratio(rate, restic_rate),
            "cpu_ratio_to_restic": ratio(per_cpu, restic_per_cpu),
            "client_cpu_seconds": None if client_cpu is None else round(client_cpu, 2),
            "server_cpu_seconds": None if server_cpu is None else round(server_cpu, 2),
            "rounds": [
                {
                    "seconds": round(s, 2),
                    "client_cpu_seconds": round(c, 2),
                    "server_cpu_seconds": round(v, 2),
                }
                for s, c, v in timings[side]
            ],
        }
        rows.append((LABELS[side], show(rate, "files/s")))
        rows.append(("  files per CPU-s", show(per_cpu, "files/CPU-s")))
        if side != "restic" and client_cpu is not None and server_cpu is not None:
            rows.append(("  client, server CPU-s", f"{client_cpu:.2f}, {server_cpu:.2f}"))
        if side != "restic":
            rows.append(("  rate / restic's", show_ratio(ratio(rate, restic_rate))))
            rows.append(("  files per CPU-s / restic's",
                         show_ratio(ratio(per_cpu, restic_per_cpu))))  # fmt: skip
    table(f"first ingest of {count:,} small files: the floor of the stack, median of "
          f"{rounds} rounds", rows)  # fmt: skip
    record("floor", results)


if __name__ == "__main__":
    main()
