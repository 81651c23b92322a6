"""Benchmark 3: the server under many concurrent clients.

BENCH_CLIENTS (default 64) concurrent clients, spread over BENCH_PROCS processes, post
single records to /put_file for BENCH_SECONDS (default 20) seconds, then batches of 1000
to /put_files for the same time. Reports records/s and p50/p99 latency per request, and
checks that every acknowledged record is present afterwards.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import create_key, ppserver, record, server_env, table


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


def main() -> None:
    clients = int(os.environ.get("BENCH_CLIENTS", "64"))
    procs = int(os.environ.get("BENCH_PROCS", "4"))
    seconds = float(os.environ.get("BENCH_SECONDS", "20"))
    workers = int(os.environ.get("BENCH_SERVER_WORKERS", "2"))
    with tempfile.TemporaryDirectory(prefix="pp-bench-server-") as tmp:
        work = Path(tmp)
        env = server_env(work)
        key = create_key(work, env)
        with ppserver(work, env, workers=workers) as server:
            single = phase(server.url, key, clients, procs, 1, seconds, "s")
            batched = phase(server.url, key, clients, procs, 1000, seconds, "b")
            with httpx.Client(base_url=server.url, headers={"X-API-Key": key}, timeout=120) as c:
                present = 0
                after = None
                while True:
                    params: dict[str, Any] = {"limit": 1000, "hostname": "bench"}
                    if after:
                        params["after"] = after
                    page = c.get("/files", params=params).json()
                    if not page:
                        break
                    present += len(page)
                    after = page[-1]["_id"]
    expected = single["acknowledged"] + batched["acknowledged"]
    results = {
        "clients": clients, "server_workers": workers, "seconds": seconds,
        "single": single, "batched": batched,
        "acknowledged_total": expected, "present_total": present,
        "all_present": present >= expected,
    }  # fmt: skip
    table(
        f"server: {clients} concurrent clients, {workers} server workers, {seconds:.0f} s each",
        [
            ("single /put_file", f"{single['records_per_s']:,.0f} records/s"),
            ("  p50 / p99", f"{single['p50_ms']} / {single['p99_ms']} ms"),
            ("batched /put_files x1000", f"{batched['records_per_s']:,.0f} records/s"),
            ("  p50 / p99", f"{batched['p50_ms']} / {batched['p99_ms']} ms"),
            ("acknowledged / present", f"{expected:,} / {present:,}"),
        ],
    )
    record("server_load", results)
    if present < expected:
        raise SystemExit(f"LOST RECORDS: {expected - present} acknowledged records missing")


if __name__ == "__main__":
    main()
