"""Redis for tests: a private ``redis-server`` on loopback (Debian's package, installed by
``make setup``), or the one ``PUTPLACE_TEST_REDIS_URL`` names. Each test gets its own
database number cleared before use, so tests sharing the server do not see each other's
limits."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import cycle
from pathlib import Path

import pytest
import redis

from tests.support.servers import free_port

ENV_URL = "PUTPLACE_TEST_REDIS_URL"
DATABASES = 16  # Redis's default


def _our_databases() -> Iterator[int]:
    """The database numbers this test process takes in turn: all of them, or under
    pytest-xdist its own share, since every worker uses the one server named by
    ``PUTPLACE_TEST_REDIS_URL`` (each starts its own private server otherwise)."""
    if not os.environ.get(ENV_URL):
        return cycle(range(DATABASES))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > DATABASES:
        raise RuntimeError(f"a shared Redis has {DATABASES} databases for {workers} workers")
    return cycle(range(worker, DATABASES, workers))


_databases = _our_databases()


@contextmanager
def redis_server(directory: Path, port: int | None = None) -> Iterator[str]:
    """Start ``redis-server`` on a loopback port (no persistence); yield its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        where = "in CI, where Redis tests must run" if os.environ.get("CI") else "here"
        pytest.fail(
            f"Redis tests cannot run {where}: redis-server is not installed (`make setup` "
            f"installs it: apt-get install redis-server) and {ENV_URL} is not set."
        )
    port = port or free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if url := os.environ.get(ENV_URL):
        yield url.rstrip("/")
        return
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def redis_url(redis_base_url: str) -> str:
    """A URL of an empty database of the test Redis."""
    server = re.sub(r"/\d*$", "", redis_base_url)
    url = f"{server}/{next(_databases)}"
    redis.Redis.from_url(url).flushdb()
    return url
