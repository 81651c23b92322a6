"""Benchmark 3: the server under many concurrent clients, beside bare ceilings.

Single records: ``wrk`` (one thread, so it leaves the server as much CPU as it can) with
BENCH_CLIENTS (default 64) connections posts to /put_file, to a bare FastAPI app
(bench/bare_app.py: the same body model, nothing stored) and to ppserver, both with
BENCH_SERVER_WORKERS (default 2) uvicorn workers, alternated BENCH_SERVER_ROUNDS (default
3) times for BENCH_SECONDS / 2 (default 10) seconds each; the medians are compared (one
run of each swung from 0.29x to 0.41x between runs as the machine's other load moved).
Without wrk, BENCH_CLIENTS Python clients in BENCH_PROCS processes drive ppserver alone.
Batches: the Python clients post batches of 1000 to /put_files for BENCH_SECONDS / 2, then
a bare SQLite loop upserts as many rows into the server's files table (same schema,
PRAGMAs and statement, one transaction per 1000 rows, one database growing over the rounds
as the server's does), alternated BENCH_SERVER_ROUNDS times; the medians are compared.
Reports records/s, p50/p99 latency per request and the ratios to the bare ceilings, and
checks that every acknowledged record is present afterwards.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import sqlite3
import subprocess
import tempfile
import threading
import time
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    BIN,
    ROOT,
    Server,
    create_key,
    have,
    ppserver,
    ratio,
    record,
    serve,
    server_env,
    show,
    show_ratio,
    table,
)
from putplace.metadata.sqlite import WRITER_CACHE_KIB, SQLiteMetadataStore, writer_checkpoints
from putplace.metadata.sqlite import _upsert_files as upsert_files  # the server's statement
from putplace.models import DEFAULT_NAMESPACE, FileMetadata

LUA = Path(__file__).with_name("put_file.lua")
BATCH = 1000


def _record(worker: str, n: int) -> dict[str, Any]:
    return {
        "filepath": f"/bench/{worker}/{n}", "hostname": "bench", "ip_address": "127.0.0.1",
        "sha256": hashlib.sha256(f"{worker}-{n}".encode()).hexdigest(), "file_size": 1,
        "file_mode": 0o100644, "file_uid": 0, "file_gid": 0,
        "file_mtime": 1.0, "file_atime": 1.0, "file_ctime": 1.0,
    }  # fmt: skip


def _client_thread(url: str, key: str, name: str, batch: int, stop: float, out: list[Any]) -> None:
    latencies: list[float] = []
    acknowledged = 0
    n = 0
    with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=120) as client:
        client.get("/")  # connect before the clock starts
        began = time.time()
        while time.time() < stop:
            if batch == 1:
                body: Any = _record(name, n)
                started = time.perf_counter()
                response = client.post("/put_file", json=body)
                ok = response.status_code == 201
            else:
                body = {"files": [_record(name, n + i) for i in range(batch)]}
                started = time.perf_counter()
                response = client.post("/put_files", json=body)
                ok = response.status_code == 200 and response.json()["stored"] == batch
            latencies.append(time.perf_counter() - started)
            if ok:
                acknowledged += batch
            n += batch
    out.append((latencies, acknowledged, name, n, began, time.time()))


def _process(
    url: str, key: str, prefix: str, threads: int, batch: int, stop: float, queue: Any
) -> None:
    out: list[Any] = []
    workers = [
        threading.Thread(target=_client_thread, args=(url, key, f"{prefix}-{t}", batch, stop, out))
        for t in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    queue.put(out)


def phase(
    url: str, key: str, clients: int, procs: int, batch: int, seconds: float, tag: str
) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    stop = time.time() + seconds + 3  # spawned processes take a moment to start
    per_proc = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    processes = [
        ctx.Process(target=_process, args=(url, key, f"{tag}{i}", n, batch, stop, queue))
        for i, n in enumerate(per_proc)
    ]
    for p in processes:
        p.start()
    results = [item for _ in processes for item in queue.get()]
    for p in processes:
        p.join()
    latencies = sorted(lat for lats, *_ in results for lat in lats)
    acknowledged = sum(a for _, a, *_ in results)
    elapsed = max(r[5] for r in results) - min(r[4] for r in results)
    return {
        "records_per_s": round(acknowledged / elapsed, 1),
        "requests": len(latencies),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2) if latencies else None,
        "acknowledged": acknowledged,
        "seconds": round(elapsed, 2),
    }


_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(number: str, unit: str) -> float:
    return float(number) * _SECONDS[unit]


def wrk(url: str, key: str, connections: int, seconds: float) -> dict[str, Any]:
    """Drive POST /put_file at *url* with wrk (one thread); parse its report."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
         "-s", str(LUA), url],
        env={**os.environ, "PP_KEY": key, "PP_RUN": str(time.time_ns())}, check=True,
        capture_output=True, text=True,
    ).stdout  # fmt: skip
    done = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    if done is None:
        raise RuntimeError(f"cannot read wrk's report:\n{out}")
    requests, elapsed = int(done[1]), _seconds(done[2], done[3])
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    acknowledged = requests - (int(failed[1]) if failed else 0)
    latency = {
        m[1]: round(_seconds(m[2], m[3]) * 1000, 2)
        for m in re.finditer(r"^\s+(50|99)%\s+([\d.]+)(\w+)$", out, re.MULTILINE)
    }
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "records_per_s": round(acknowledged / elapsed, 1),
        "requests": requests,
        "p50_ms": latency.get("50"),
        "p99_ms": latency.get("99"),
        "acknowledged": acknowledged,
        "seconds": round(elapsed, 2),
        "socket_errors": errors[1] if errors else None,
        "load_generator": "wrk -t1",
    }


def bare_fastapi_app(workers: int) -> AbstractContextManager[Server]:
    """bench/bare_app.py served by uvicorn with *workers* workers, like ppserver."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUTPLACE_")}
    command = [str(BIN / "uvicorn"), "bench.bare_app:app", "--workers", str(workers),
               "--log-level", "warning", "--no-access-log"]  # fmt: skip
    return serve(command, ROOT, env)


def alternated_wrk(
    server_url: str, bare_url: str, key: str, connections: int, seconds: float, rounds: int
) -> tuple[dict[str, Any], float, list[float]]:
    """wrk against the bare app then ppserver, *rounds* times: ppserver's median round
    (with every round's rate and all its acknowledged records), the bare app's median
    rate, and the bare app's rates. Of an even number of rounds, the upper median."""
    ours: list[dict[str, Any]] = []
    bare: list[float] = []
    for _ in range(rounds):
        bare.append(float(wrk(bare_url, "bare", connections, seconds)["records_per_s"]))
        ours.append(wrk(server_url, key, connections, seconds))
    return _median_round(ours), sorted(bare)[len(bare) // 2], bare


def _median_round(ours: list[dict[str, Any]]) -> dict[str, Any]:
    """The round of median rate (the upper one of an even number), with every round's
    rate and all their acknowledged records."""
    by_rate = sorted(ours, key=lambda run: float(run["records_per_s"]))
    median = dict(by_rate[len(by_rate) // 2])
    median["rounds_records_per_s"] = [run["records_per_s"] for run in ours]
    median["acknowledged"] = sum(int(run["acknowledged"]) for run in ours)
    return median


class BareUpserts:
    """The server's files upsert in a bare loop: one transaction per BATCH rows, the
    server's own multi-row statement, schema, writer PRAGMAs and checkpoint interval
    (only the SQLite time is counted, not building the rows). One database for every
    round, each round's rows new ones after those before: it grows as the server's does
    while the load runs, so a later round's ceiling is measured on as large a table as
    the load's."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        for pragma in ("journal_mode = WAL", "synchronous = FULL", "foreign_keys = ON",
                       f"cache_size = -{WRITER_CACHE_KIB}"):  # fmt: skip
            self.conn.execute(f"PRAGMA {pragma}")
        SQLiteMetadataStore._migrate(self.conn)  # the server's tables and indexes as now
        self.checkpoints = writer_checkpoints()
        self.checkpoints.apply(self.conn)  # the writer's rule: the database's size, bounded
        self.upserted = 0

    def run(self, rows: int) -> float:
        """Records/s of upserting *rows* more records."""
        stamp = datetime.now(UTC).isoformat()
        spent = 0.0
        first = self.upserted
        for start in range(first, first + rows, BATCH):
            values = [
                [
                    *FileMetadata.model_validate(_record("bare", n)).__dict__.values(),
                    stamp,
                    stamp,
                    stamp,
                    DEFAULT_NAMESPACE,
                ]
                for n in range(start, min(first + rows, start + BATCH))
            ]
            began = time.perf_counter()
            self.conn.execute("BEGIN IMMEDIATE")
            # New locations, as in the load's batches: the server's path for those.
            ids = upsert_files(self.conn, DEFAULT_NAMESPACE, values, all_new=True)
            self.conn.execute("COMMIT")
            self.checkpoints.after_commit(self.conn)
            spent += time.perf_counter() - began
            assert len(ids) == len(values)
        self.upserted += rows
        return rows / spent

    def close(self) -> None:
        self.conn.close()


def alternated_batches(
    url: str, key: str, clients: int, procs: int, seconds: float, rounds: int, bare: BareUpserts
) -> tuple[dict[str, Any], float | None, list[float]]:
    """Batches of BATCH records to /put_files for *seconds*, then the bare loop on as
    many records, *rounds* times: the load's median round (with every round's rate and
    all its acknowledged records), the bare loop's median rate (None when nothing was
    acknowledged) and its rates. One of each, a minute apart, made 0.52x once and 0.69x
    when run again at once; alternated, both see the same minutes. Of an even number of
    rounds, the upper median."""
    ours: list[dict[str, Any]] = []
    ceiling: list[float] = []
    for number in range(rounds):
        run = phase(url, key, clients, procs, BATCH, seconds, f"b{number}-")
        ours.append(run)
        if run["acknowledged"]:
            ceiling.append(round(bare.run(int(run["acknowledged"])), 1))
    bare_rate = sorted(ceiling)[len(ceiling) // 2] if ceiling else None
    return _median_round(ours), bare_rate, ceiling


def count_present(url: str, key: str) -> int:
    """Records of hostname "bench" the server holds."""
    present = 0
    after = None
    with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=120) as client:
        while True:
            params: dict[str, Any] = {"limit": 1000, "hostname": "bench"}
            if after:
                params["after"] = after
            page = client.get("/files", params=params).json()
            if not page:
                return present
            present += len(page)
            after = page[-1]["_id"]


def main() -> None:
    clients = int(os.environ.get("BENCH_CLIENTS", "64"))
    procs = int(os.environ.get("BENCH_PROCS", "4"))
    seconds = float(os.environ.get("BENCH_SECONDS", "20"))
    workers = int(os.environ.get("BENCH_SERVER_WORKERS", "2"))
    rounds = int(os.environ.get("BENCH_SERVER_ROUNDS", "3"))
    use_wrk = have("wrk")
    bare_app: float | None = None
    with tempfile.TemporaryDirectory(prefix="pp-bench-server-") as tmp:
        work = Path(tmp)
        env = server_env(work)
        key = create_key(work, env)
        with ppserver(work, env, workers=workers) as server:
            if use_wrk:
                with bare_fastapi_app(workers) as bare:
                    single, bare_app, bare_rounds = alternated_wrk(
                        server.url, bare.url, key, clients, seconds / 2, rounds
                    )
                single["bare_fastapi_rounds_records_per_s"] = bare_rounds
            else:
                single = phase(server.url, key, clients, procs, 1, seconds, "s")
            upserts = BareUpserts(work / "bare.db")
            try:
                batched, bare_db, bare_db_rounds = alternated_batches(
                    server.url, key, clients, procs, seconds / 2, rounds, upserts
                )
            finally:
                upserts.close()
            present = count_present(server.url, key)
        batched["bare_sqlite_rounds_records_per_s"] = bare_db_rounds
        rows = batched["acknowledged"]
    single["bare_fastapi_records_per_s"] = None if bare_app is None else round(bare_app, 1)
    single["ratio_to_bare_fastapi"] = ratio(single["records_per_s"], bare_app)
    batched["bare_sqlite_records_per_s"] = None if bare_db is None else round(bare_db, 1)
    batched["ratio_to_bare_sqlite"] = ratio(batched["records_per_s"], bare_db)
    expected = single["acknowledged"] + batched["acknowledged"]
    results = {
        "clients": clients, "server_workers": workers, "seconds": seconds, "rounds": rounds,
        "single": single, "batched": batched,
        "acknowledged_total": expected, "present_total": present,
        "all_present": present >= expected,
    }  # fmt: skip
    table(
        f"server: {clients} concurrent clients, {workers} server workers, single records and "
        f"batches each {rounds} x {seconds / 2:.0f} s alternated with their ceilings",
        [
            (f"single /put_file ({single.get('load_generator', 'Python clients')}"
             f"{', median of ' + str(rounds) + ' rounds' if use_wrk else ''})",
             show(single["records_per_s"], "records/s")),
            ("  p50 / p99", f"{single['p50_ms']} / {single['p99_ms']} ms"),
            ("  bare FastAPI app", show(bare_app, "records/s")),
            ("  ratio to bare FastAPI", show_ratio(single["ratio_to_bare_fastapi"])),
            (f"batched /put_files x{BATCH} (median of {rounds} rounds)",
             show(batched["records_per_s"], "records/s")),
            ("  p50 / p99", f"{batched['p50_ms']} / {batched['p99_ms']} ms"),
            (f"  bare SQLite upsert loop ({rows:,} rows)", show(bare_db, "records/s")),
            ("  ratio to bare SQLite", show_ratio(batched["ratio_to_bare_sqlite"])),
            ("acknowledged / present", f"{expected:,} / {present:,}"),
        ],
    )  # fmt: skip
    record("server_load", results)
    if present < expected:
        raise SystemExit(f"LOST RECORDS: {expected - present} acknowledged records missing")


if __name__ == "__main__":
    main()
