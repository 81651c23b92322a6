"""Benchmark 1: many small files. First ingest, unchanged rescan, rescan after touching 1%,
each beside its peers in the same run.

BENCH_FILES (default 100000) files of 1-8 KiB in a nested tree, a quarter of them
duplicates of other files' content. Prints files/s end to end for each pass, and for the
same tree: ``restic backup`` to a fresh local repository (first and second, unchanged,
backup) and ``cp -a`` + ``sync``. BENCH_SMALL_ROUNDS (default 5) rounds, each side fresh
in each, the side going first turning from round to round; the medians are compared (on
this shared machine one first ingest of the same tree took from 9.2 to 13.7 s within an
hour). Every side reads a warm tree. Also the files per CPU-second of each first ingest
(PutPlace: server and client together), which the machine's other load moves less.

PutPlace runs on the interpreter running this benchmark (``make bench``: the deployment
one, see scripts/find-bench-python.sh). With BENCH_ALSO_BIN (``make bench``: the
development virtualenv's bin folder), each round also times one first ingest by that
folder's ppserver and ppclient, which shows what the interpreter's build is worth.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    ALSO_BIN,
    BIN,
    Restic,
    Server,
    children_cpu,
    cp_sync,
    create_key,
    have,
    interpreter,
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


@dataclass
class Round:
    """Seconds of each side in one round (None: restic is not installed)."""

    first: float | None = None
    first_cpu: float | None = None  # CPU seconds of server and client together
    rescan: float | None = None
    restic_first: float | None = None
    restic_first_cpu: float | None = None
    restic_rescan: float | None = None
    copy: float | None = None
    also_first: float | None = None  # the first ingest on ALSO_BIN's interpreter
    also_first_cpu: float | None = None


def one_round(work: Path, tree: Path, number: int, fsync: dict[str, str]) -> Round:
    """PutPlace (a fresh server and client cache: first ingest, then unchanged rescan),
    restic (a fresh repository: first and second backup), ``cp -a`` + ``sync`` and, with
    ALSO_BIN, a first ingest by its ppserver and ppclient; which goes first turns with
    *number*. What the server and restic wrote is removed after
    the round; the copy (100,000 files) is kept to the end: deleting that many files
    slowed the next round's ``cp -a`` + ``sync`` from 12,400 to 1,700-2,500 files/s."""
    place = work / f"round-{number}"
    place.mkdir()
    env = server_env(place, **fsync)
    key = create_key(place, env)
    cache = str(place / "client-cache.sqlite3")
    result = Round()

    def putplace() -> None:
        with ppserver(place, env) as server:
            result.first, result.first_cpu = first_ingest(server, key, cache, tree)
            warm(tree)
            result.rescan, _, _ = run_client(server.url, key, "--cache-file", cache, str(tree))

    def putplace_also() -> None:
        if ALSO_BIN is None:
            return
        also = place / "also"
        also.mkdir()
        also_env = server_env(also, **fsync)
        also_key = create_key(also, also_env, ALSO_BIN)
        with ppserver(also, also_env, bin_dir=ALSO_BIN) as server:
            result.also_first, result.also_first_cpu = first_ingest(
                server, also_key, str(also / "client-cache.sqlite3"), tree, ALSO_BIN
            )

    def restic() -> None:
        if have("restic"):
            repository = Restic(place)
            before = children_cpu()
            result.restic_first = repository.backup(tree)
            result.restic_first_cpu = children_cpu() - before
            result.restic_rescan = repository.backup(tree)

    def copy() -> None:
        result.copy = cp_sync(tree, work / f"copy-{number}")

    sides = [restic, putplace, copy, *([putplace_also] if ALSO_BIN else [])]
    turn = number % len(sides)
    for side in sides[turn:] + sides[:turn]:
        side()
    shutil.rmtree(place)
    return result


def first_ingest(
    server: Server, key: str, cache: str, tree: Path, bin_dir: Path = BIN
) -> tuple[float, float]:
    """Seconds and CPU-seconds (server and client together) of a first ingest of *tree*."""
    warm(tree)
    client, serving = children_cpu(), server.cpu_seconds()
    seconds, _, _ = run_client(
        server.url, key, "--cache-file", cache, *EXTRA, str(tree), bin_dir=bin_dir
    )
    return seconds, children_cpu() - client + server.cpu_seconds() - serving


def touched_rescan(work: Path, tree: Path, paths: list[Path], fsync: dict[str, str]) -> float:
    """Seconds of a rescan after 1% of the files were touched (once, after the rounds)."""
    place = work / "touched"
    place.mkdir()
    env = server_env(place, **fsync)
    key = create_key(place, env)
    cache = str(place / "client-cache.sqlite3")
    with ppserver(place, env) as server:
        warm(tree)
        run_client(server.url, key, "--cache-file", cache, str(tree))
        for path in random.Random(1).sample(paths, len(paths) // 100):
            os.utime(path)
        warm(tree)
        seconds, _, _ = run_client(server.url, key, "--cache-file", cache, str(tree))
    shutil.rmtree(place)
    return seconds


def median_of(values: list[float | None]) -> float | None:
    return None if None in values else statistics.median(v for v in values if v is not None)


def main() -> None:
    count = int(os.environ.get("BENCH_FILES", "100000"))
    rounds = int(os.environ.get("BENCH_SMALL_ROUNDS", "5"))
    if rounds < 1:
        raise SystemExit("BENCH_SMALL_ROUNDS must be at least 1")
    with tempfile.TemporaryDirectory(prefix="pp-bench-small-") as tmp:
        work = Path(tmp)
        tree = work / "tree"
        started = time.perf_counter()
        paths = make_tree(tree, count)
        made = time.perf_counter() - started
        fsync = {"fsync": os.environ["BENCH_FSYNC"]} if "BENCH_FSYNC" in os.environ else {}
        runs = [one_round(work, tree, number, fsync) for number in range(rounds)]
        touched = touched_rescan(work, tree, paths, fsync)
    first = median_of([r.first for r in runs])
    rescan = median_of([r.rescan for r in runs])
    ingest = per_s(count, first)
    unchanged = per_s(count, rescan)
    restic_ingest = per_s(count, median_of([r.restic_first for r in runs]))
    copy_ingest = per_s(count, median_of([r.copy for r in runs]))
    restic_unchanged = per_s(count, median_of([r.restic_rescan for r in runs]))
    # Files per CPU-second (PutPlace: server and client together): what the ingest costs
    # the machine, which its other load moves less than the wall time, and which bounds
    # the rate when, as here, both sides keep the two cores about equally busy.
    per_cpu = per_s(count, median_of([r.first_cpu for r in runs]))
    restic_per_cpu = per_s(count, median_of([r.restic_first_cpu for r in runs]))
    cpu_to_restic = ratio(per_cpu, restic_per_cpu)
    to_restic = ratio(ingest, restic_ingest)
    to_copy = ratio(ingest, copy_ingest)
    rescan_to_restic = ratio(unchanged, restic_unchanged)
    touched_rate = per_s(count, touched)
    also_ingest = per_s(count, median_of([r.also_first for r in runs]))
    also_per_cpu = per_s(count, median_of([r.also_first_cpu for r in runs]))
    also = None
    if ALSO_BIN is not None:
        also = {
            "python": interpreter(ALSO_BIN),
            "files_per_s": also_ingest,
            "ratio_to_restic": ratio(also_ingest, restic_ingest),
            "files_per_cpu_s": also_per_cpu,
            "cpu_ratio_to_restic": ratio(also_per_cpu, restic_per_cpu),
            # PutPlace on the benchmark's interpreter against this one: its build's worth.
            "speedup": ratio(ingest, also_ingest),
        }
    results = {
        "files": count,
        "order": (
            f"{rounds} rounds, each a fresh server, repository and copy: restic (first and "
            "second backup), ppclient (first ingest, unchanged rescan), cp -a + sync and, with "
            "BENCH_ALSO_BIN, a first ingest by that folder's ppclient and ppserver, the first "
            "side turning each round; medians compared; then the 1% touched rescan"
        ),
        "rounds": [
            {
                "files_per_s": per_s(count, r.first),
                "restic_files_per_s": per_s(count, r.restic_first),
                # Restic runs beside PutPlace in each round: the round's own ratio shows
                # how far the machine's load moves it (the medians are compared above).
                "ratio_to_restic": ratio(per_s(count, r.first), per_s(count, r.restic_first)),
                "files_per_cpu_s": per_s(count, r.first_cpu),
                "restic_files_per_cpu_s": per_s(count, r.restic_first_cpu),
                "cp_sync_files_per_s": per_s(count, r.copy),
                "rescan_files_per_s": per_s(count, r.rescan),
                "restic_rescan_files_per_s": per_s(count, r.restic_rescan),
                "also_files_per_s": per_s(count, r.also_first),
            }
            for r in runs
        ],
        "first_ingest": {
            "files_per_s": ingest,
            "seconds": None if first is None else round(first, 2),
            "restic_files_per_s": restic_ingest,
            "cp_sync_files_per_s": copy_ingest,
            "ratio_to_restic": to_restic,
            "ratio_to_cp_sync": to_copy,
            "files_per_cpu_s": per_cpu,
            "restic_files_per_cpu_s": restic_per_cpu,
            "cpu_ratio_to_restic": cpu_to_restic,
        },
        "unchanged_rescan": {
            "files_per_s": unchanged,
            "seconds": None if rescan is None else round(rescan, 2),
            "restic_files_per_s": restic_unchanged,
            "ratio_to_restic": rescan_to_restic,
        },
        "touched_rescan": {"files_per_s": touched_rate, "seconds": round(touched, 2)},
        "first_ingest_on_also_python": also,
    }
    in_rounds = ", ".join(show(per_s(count, r.first), "").strip() for r in runs)
    restic_rounds = ", ".join(show(per_s(count, r.restic_first), "").strip() for r in runs)
    ratio_rounds = ", ".join(show_ratio(round_["ratio_to_restic"]) for round_ in results["rounds"])
    table(
        f"small files: {count:,} files of 1-8 KiB, 25% duplicates (tree made in {made:.0f} s), "
        f"median of {rounds} rounds",
        [
            ("first ingest", show(ingest, "files/s")),
            ("  in each round", in_rounds),
            ("  restic backup", show(restic_ingest, "files/s")),
            ("  restic in each round", restic_rounds),
            ("  ratio to restic in each round", ratio_rounds),
            ("  cp -a + sync", show(copy_ingest, "files/s")),
            ("  ratio to restic", show_ratio(to_restic)),
            ("  ratio to cp -a + sync", show_ratio(to_copy)),
            ("  files per CPU-s (server + client)", show(per_cpu, "files/CPU-s")),
            ("  restic, files per CPU-s", show(restic_per_cpu, "files/CPU-s")),
            ("  ratio to restic", show_ratio(cpu_to_restic)),
            ("unchanged rescan", show(unchanged, "files/s")),
            ("  restic, second backup", show(restic_unchanged, "files/s")),
            ("  ratio to restic", show_ratio(rescan_to_restic)),
            ("rescan, 1% touched", show(touched_rate, "files/s")),
            *(
                []
                if also is None
                else [
                    (f"first ingest on {also['python']}", show(also_ingest, "files/s")),
                    ("  ratio to restic", show_ratio(also["ratio_to_restic"])),
                    ("  files per CPU-s, ratio to restic", show_ratio(also["cpu_ratio_to_restic"])),
                    (f"  speed-up on {interpreter()}", show_ratio(also["speedup"])),
                ]
            ),
        ],
    )
    record("small_files", results)


if __name__ == "__main__":
    main()
