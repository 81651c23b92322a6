"""Shared benchmark plumbing: a real ppserver on loopback, the real ppclient, results."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil

BIN = Path(sys.executable).parent
RESULTS = Path(__file__).with_name("results.json")


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


def create_key(workdir: Path, env: dict[str, str]) -> str:
    out = subprocess.run(
        [str(BIN / "ppserver"), "keys", "create", "--name", "bench", "--json"],
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


@contextmanager
def ppserver(workdir: Path, env: dict[str, str], workers: int = 1) -> Iterator[Server]:
    port = free_port()
    process = subprocess.Popen(
        [str(BIN / "ppserver"), "serve", "--port", str(port), "--workers", str(workers)],
        cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
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
            raise RuntimeError("ppserver did not start")
        time.sleep(0.1)
    try:
        yield Server(url, process)
    finally:
        process.terminate()
        process.wait(timeout=60)


def run_client(url: str, key: str, *args: str) -> tuple[float, float, str]:
    """Run ppclient; return (seconds, peak RSS MiB, stdout)."""
    env = {**os.environ, "PUTPLACE_API_KEY": key}
    started = time.perf_counter()
    process = psutil.Popen(
        [str(BIN / "ppclient"), "--url", url, "--no-progress", *args],
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
    results[name] = {**data, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


def table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in rows)
    print(f"\n{title}")
    print("-" * (width + 20))
    for label, value in rows:
        print(f"{label:<{width}}  {value:>16}")
