"""Where a first ingest's CPU goes: the small-files tree through a fresh ppserver, several
times, with the server's CPU per thread and the client's, and how busy the machine was.

Not part of ``make bench`` (it has no peer; it explains the small-files ratio). Run it
before and after a change to the ingest path: ``python -m bench.ingest_profile``.
BENCH_FILES (default 100000) files, BENCH_PROFILE_RUNS (default 3) runs. Server threads
are named when ``py-spy`` is installed (``uv pip install py-spy``), by id otherwise.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench.common import BIN, create_key, ppserver, record, run_client, server_env, table
from bench.small_files import make_tree


class BusySampler:
    """The share of both cores in use (not idle, not waiting on I/O), every half second."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> BusySampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _jiffies() -> tuple[int, int]:
        fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, all

    def _run(self) -> None:
        idle, total = self._jiffies()
        while not self._stop.wait(0.5):
            idle2, total2 = self._jiffies()
            self.samples.append(1 - (idle2 - idle) / max(1, total2 - total))
            idle, total = idle2, total2


def thread_names(pid: int) -> dict[int, str]:
    """Python thread names by OS thread id, from ``py-spy dump`` (empty without it)."""
    spy = shutil.which("py-spy") or shutil.which(str(BIN / "py-spy"))
    if spy is None:
        return {}
    dump = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True)
    return {
        int(m.group(1), 0): m.group(2)
        for m in re.finditer(r'Thread (\S+) \(\w+\): "([^"]+)"', dump.stdout)
    }


def server_threads(pid: int) -> dict[str, tuple[float, float]]:
    """(user, system) CPU seconds per server thread so far, largest first: the threads of
    the serving process and of each of its worker processes (``--workers`` > 1), named
    ``worker <n>: <thread>`` for a worker."""
    root = psutil.Process(pid)
    processes = [("", root)] + [
        (f"worker {number}: ", child)
        for number, child in enumerate(sorted(root.children(recursive=True), key=lambda p: p.pid))
    ]
    per: dict[str, tuple[float, float]] = {}
    for prefix, process in processes:
        try:
            names = thread_names(process.pid)
            threads = process.threads()
        except psutil.Error:  # a helper that ended between the listing and the reading
            continue
        for thread in threads:
            name = prefix + names.get(thread.id, f"tid {thread.id}")
            user, system = per.get(name, (0.0, 0.0))
            per[name] = (user + thread.user_time, system + thread.system_time)
    return dict(sorted(per.items(), key=lambda kv: -sum(kv[1])))


def one_run(tree: Path, count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pp-bench-profile-") as tmp:
        work = Path(tmp)
        env = server_env(work)
        key = create_key(work, env)
        with ppserver(work, env) as server:
            before = server_threads(server.process.pid)
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            with BusySampler() as busy:
                seconds, _, _ = run_client(
                    server.url, key, "--cache-file", str(work / "cache.sqlite3"), str(tree)
                )
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            threads = {
                name: (round(u - before.get(name, (0, 0))[0], 2),
                       round(s - before.get(name, (0, 0))[1], 2))
                for name, (u, s) in server_threads(server.process.pid).items()
            }  # fmt: skip
    return {
        "files_per_s": round(count / seconds, 1),
        "seconds": round(seconds, 2),
        "server_cpu_s": round(sum(u + s for u, s in threads.values()), 2),
        "server_threads_user_system_s": {k: v for k, v in threads.items() if sum(v) >= 0.05},
        "client_cpu_s": round(
            after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime, 2
        ),
        "cores_busy": round(sum(busy.samples) / max(1, len(busy.samples)), 2),
    }


def main() -> None:
    count = int(os.environ.get("BENCH_FILES", "100000"))
    runs = int(os.environ.get("BENCH_PROFILE_RUNS", "3"))
    with tempfile.TemporaryDirectory(prefix="pp-bench-profile-tree-") as tmp:
        tree = Path(tmp) / "tree"
        make_tree(tree, count)
        results = []
        for number in range(1, runs + 1):
            result = one_run(tree, count)
            results.append(result)
            rows = [
                ("first ingest", f"{result['files_per_s']:,.0f} files/s"),
                ("server CPU", f"{result['server_cpu_s']:.2f} s"),
                *(
                    (f"  {name} user + system", f"{u:.2f} + {s:.2f} s")
                    for name, (u, s) in result["server_threads_user_system_s"].items()
                ),
                ("client CPU", f"{result['client_cpu_s']:.2f} s"),
                ("cores busy", f"{result['cores_busy']:.0%}"),
            ]
            table(f"first ingest of {count:,} files, run {number} of {runs}", rows)
            time.sleep(1)
    record("ingest_profile", {"files": count, "runs": results})


if __name__ == "__main__":
    main()
