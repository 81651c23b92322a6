"""Real ``ppserver`` and ``ppclient`` processes, as a user would run them."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil

from putplace.config import Settings
from tests.support.servers import free_port

BIN = Path(sys.executable).parent
SETTING_NAMES = tuple(Settings.model_fields)
LOG_TAIL = 4000


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a ``ppserver`` process use *settings*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUTPLACE_")}
    for name in SETTING_NAMES:
        value = getattr(settings, name)
        if value is not None:
            env[f"PUTPLACE_{name.upper()}"] = str(getattr(value, "value", value))
    return env


def run_ppserver(
    settings: Settings, *args: str, cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "ppserver"), *args],
        cwd=cwd,
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextmanager
def ppserver_process(settings: Settings, cwd: Path, *extra: str) -> Iterator[str]:
    """Start ``ppserver serve`` on a free port; yield its base URL; stop it (SIGTERM)."""
    port = free_port()
    log = (cwd / f"ppserver-{port}.log").open("w")
    process = subprocess.Popen(
        [str(BIN / "ppserver"), "serve", "--port", str(port), *extra],
        cwd=cwd,
        env=settings_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, process)
        yield url
    finally:
        stop_process(process, timeout=30)
        log.close()
        # The server's own account, shown in the report of a test that fails (pytest
        # shows captured output only then), also when the failure is found after this.
        tail = (cwd / f"ppserver-{port}.log").read_text(errors="replace")[-LOG_TAIL:]
        if tail:
            print(f"--- ppserver log (last {LOG_TAIL} characters) ---\n{tail}", file=sys.stderr)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM, wait, and SIGKILL if it does not go in time."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_until_healthy(
    url: str,
    process: subprocess.Popen[bytes],
    timeout: float = 60,
    verify: bool | ssl.SSLContext = True,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ppserver exited with {process.returncode} before serving")
        try:
            if httpx.get(f"{url}/health", timeout=2, verify=verify).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"ppserver at {url} not healthy after {timeout} s")


def worker_processes(url: str) -> list[psutil.Process]:
    """The uvicorn workers of the ``ppserver serve`` listening at *url*."""
    port = url.rpartition(":")[2]
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "serve" in cmdline and port in cmdline:
            return [
                child for child in process.children() if "spawn_main" in " ".join(child.cmdline())
            ]
    raise AssertionError(f"no ppserver on port {port}")
