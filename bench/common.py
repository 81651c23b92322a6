"""Shared benchmark plumbing: a real ppserver on loopback, the real ppclient, the peers
(restic, cp + sync, wrk), results."""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil

#: Where ppserver and ppclient are: beside the interpreter running the benchmark (``make
#: bench`` runs it on the deployment interpreter, see scripts/find-bench-python.sh).
BIN = Path(sys.executable).parent
#: Another virtualenv's bin folder (``make bench``: the development one), whose ppclient and
#: ppserver the small-files benchmark also runs, so each run shows what the interpreter's
#: build is worth. Unset: not run.
# Absolute: the servers start with another working directory, against which a relative
# program path would be looked up.
ALSO_BIN = (
    Path(os.environ["BENCH_ALSO_BIN"]).absolute() if os.environ.get("BENCH_ALSO_BIN") else None
)
ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results.json")

# ppclient and ppserver start as they would on a user's machine: compiling their modules
# again at every start (a shell that sets this) cost the client ~0.2 s of each run.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(workdir: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUTPLACE_")}
    env.update(
        PUTPLACE_DATABASE_URL=f"sqlite:///{workdir}/putplace.db",
        PUTPLACE_STORAGE_URL=f"file://{workdir}/blobs",
        PUTPLACE_LOG_LEVEL="warning",
    )
    env.update({f"PUTPLACE_{k.upper()}": v for k, v in settings.items()})
    return env


def _python(version: str, prefix: str) -> str:
    return f"Python {version} ({prefix})"


#: The Python running this benchmark, as results.json and the summary name it.
THIS_PYTHON = _python(platform.python_version(), sys.base_prefix)


def interpreter(bin_dir: Path = BIN) -> str:
    """The version and path of the Python that *bin_dir*'s ppserver and ppclient run on."""
    if bin_dir == BIN:
        return THIS_PYTHON
    version, prefix = subprocess.run(
        [str(bin_dir / "python"), "-c", "import platform, sys; "
         "print(platform.python_version(), sys.base_prefix)"],
        check=True, capture_output=True, text=True,
    ).stdout.split(maxsplit=1)  # fmt: skip
    return _python(version, prefix.strip())


def create_key(workdir: Path, env: dict[str, str], bin_dir: Path = BIN) -> str:
    out = subprocess.run(
        [str(bin_dir / "ppserver"), "keys", "create", "--name", "bench", "--json"],
        cwd=workdir, env=env, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return str(json.loads(out)["api_key"])


class Server:
    def __init__(self, url: str, process: subprocess.Popen[bytes]) -> None:
        self.url = url
        self.process = process

    def peak_rss_mib(self) -> float:
        """Peak RSS of the server and its worker processes (VmHWM), MiB."""
        peak = 0
        proc = psutil.Process(self.process.pid)
        for p in [proc, *proc.children(recursive=True)]:
            try:
                for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
            except (OSError, psutil.Error):
                continue
        return peak / 1024

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server and its live workers have used so far."""
        proc = psutil.Process(self.process.pid)
        total = 0.0
        for p in [proc, *proc.children(recursive=True)]:
            try:
                times = p.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total

    def written_bytes(self) -> int:
        """Bytes the server and its live workers have written so far (``write_chars``:
        to files and sockets alike, whether or not they reached the disk yet)."""
        proc = psutil.Process(self.process.pid)
        total = 0
        for p in [proc, *proc.children(recursive=True)]:
            try:
                total += p.io_counters().write_chars
            except psutil.Error:
                continue
        return total


@contextmanager
def serve(command: list[str], cwd: Path, env: dict[str, str]) -> Iterator[Server]:
    """Run an HTTP server command with ``--port``; yield once its /health answers 200."""
    port = free_port()
    process = subprocess.Popen(
        [*command, "--port", str(port)],
        cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError(f"{command[0]} did not start")
        time.sleep(0.1)
    try:
        yield Server(url, process)
    finally:
        process.terminate()
        process.wait(timeout=60)


def ppserver(
    workdir: Path, env: dict[str, str], workers: int | None = None, bin_dir: Path = BIN
) -> AbstractContextManager[Server]:
    """``ppserver serve`` with *workers* processes; None: as a user gets it (its default)."""
    chosen = [] if workers is None else ["--workers", str(workers)]
    return serve([str(bin_dir / "ppserver"), "serve", *chosen], workdir, env)


def run_client(url: str, key: str, *args: str, bin_dir: Path = BIN) -> tuple[float, float, str]:
    """Run ppclient; return (seconds, peak RSS MiB, stdout)."""
    env = {**os.environ, "PUTPLACE_API_KEY": key}
    started = time.perf_counter()
    process = psutil.Popen(
        [str(bin_dir / "ppclient"), "--url", url, "--no-progress", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    peak = [0.0]
    watcher = threading.Thread(target=_watch_peak_rss, args=(process.pid, peak), daemon=True)
    watcher.start()
    out, err = process.communicate()
    elapsed = time.perf_counter() - started
    watcher.join()
    if process.returncode != 0:
        raise RuntimeError(f"ppclient failed ({process.returncode}): {err[-2000:]}")
    return elapsed, peak[0], out


def _watch_peak_rss(pid: int, peak: list[float]) -> None:
    """Keep the process's high-water RSS (VmHWM) in *peak* until it exits."""
    status = Path(f"/proc/{pid}/status")
    while True:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak[0] = max(peak[0], int(line.split()[1]) / 1024)
        except (OSError, ValueError):
            return
        time.sleep(0.05)


def record(name: str, data: dict[str, Any]) -> None:
    """Merge one benchmark's numbers into bench/results.json."""
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[name] = {
        **data,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": THIS_PYTHON,
    }
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


def table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in rows)
    print(f"\n{title}")
    print("-" * (width + 20))
    for label, value in rows:
        print(f"{label:<{width}}  {value:>16}")


# -- peers -------------------------------------------------------------------------------


def have(tool: str) -> bool:
    """Whether *tool* is on PATH; if not, say so (the peer's figures are recorded as null)."""
    if shutil.which(tool):
        return True
    print(
        f"skipped: {tool} not installed (apt-get install {tool}, or scripts/install-test-tools.sh)"
    )
    return False


def children_cpu() -> float:
    """CPU seconds (user + system) used so far by this process' children that ended."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(*command: str | Path, env: dict[str, str] | None = None) -> float:
    """Run a command to completion; return its wall-clock seconds."""
    started = time.perf_counter()
    subprocess.run([str(c) for c in command], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def warm(path: Path) -> None:
    """Read every file under *path* so each side starts from the page cache (dropping the
    cache needs root and would disturb others on a shared machine), after the writes of
    whatever ran before have reached the disk: otherwise the side timed right after a
    first ingest (PutPlace's rescan) pays for that ingest's writeback and the others do
    not."""
    os.sync()
    files = [path] if path.is_file() else (p for p in path.rglob("*") if p.is_file())
    for file in files:
        with file.open("rb") as handle:
            while handle.read(1 << 20):
                pass


class DiskWrites:
    """The write requests the block device under *path* served inside a ``with`` block:
    how many, the KiB written, their mean size and the mean time each took
    (``/sys/dev/block/MAJ:MIN/stat``, which counts every process's; for device-mapper,
    the virtual device's). They showed that the development machine's disk took 5-9 ms
    a request whatever its size, so the fewer the requests the faster a direct write.
    :attr:`figures` stays None where the file system's device has no such counters
    (tmpfs, overlay, btrfs, or no ``/sys``)."""

    def __init__(self, path: Path) -> None:
        device = os.stat(path).st_dev
        self._stat = Path(f"/sys/dev/block/{os.major(device)}:{os.minor(device)}/stat")
        self._before: list[int] | None = None
        self.figures: dict[str, float] | None = None

    def _read(self) -> list[int] | None:
        try:
            return [int(field) for field in self._stat.read_text().split()]
        except OSError:
            return None

    def __enter__(self) -> DiskWrites:
        self._before = self._read()
        return self

    def __exit__(self, *_: object) -> None:
        after = self._read()
        if self._before is None or after is None:
            return
        # Fields 5, 7 and 8 (Documentation/block/stat.rst): write requests, sectors of
        # 512 bytes, milliseconds spent on them (summed over requests in flight).
        requests, sectors, ms = (after[i] - self._before[i] for i in (4, 6, 7))
        self.figures = {
            "write_requests": requests,
            "written_kib": sectors / 2,
            "mean_request_kib": round(sectors / 2 / requests, 1) if requests else 0.0,
            "mean_request_ms": round(ms / requests, 2) if requests else 0.0,
        }


def cp_sync(source: Path, target: Path) -> float:
    """Seconds for ``cp -a source target`` plus ``sync`` of the target's file system."""
    warm(source)
    return timed("sh", "-c", 'cp -a "$0" "$1" && sync -f "$1"', source, target)


class Restic:
    """A fresh local restic repository (and cache) under *workdir*."""

    def __init__(self, workdir: Path) -> None:
        self.env = {
            **os.environ,
            "RESTIC_REPOSITORY": str(workdir / "restic-repo"),
            "RESTIC_PASSWORD": "bench",
            "RESTIC_CACHE_DIR": str(workdir / "restic-cache"),
        }
        timed("restic", "init", "--quiet", env=self.env)

    def backup(self, path: Path) -> float:
        """Seconds for one ``restic backup`` of *path* (warm)."""
        warm(path)
        return timed("restic", "backup", "--quiet", path, env=self.env)


def per_s(amount: float, seconds: float | None) -> float | None:
    return None if seconds is None else round(amount / seconds, 1)


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """PutPlace's rate over a peer's (higher is better); None when either is missing."""
    return None if ours is None or not theirs else round(ours / theirs, 3)


def show(value: float | None, unit: str) -> str:
    return "skipped" if value is None else f"{value:,.0f} {unit}"


def show_ratio(value: float | None) -> str:
    return "skipped" if value is None else f"{value:.2f}x"
