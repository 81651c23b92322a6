"""MongoDB for tests: mongoeco's wire server in a subprocess, or the MongoDB named by the env.

By default ``python -m tests.support.mongo_server`` is started once per session: mongoeco's
MongoDB wire-protocol server with its SQLite engine on a temporary file, on a free
loopback port. Tests reach it through PyMongo exactly as they would reach MongoDB, and
it is stopped at the end of the session.

``PUTPLACE_TEST_MONGODB_URI`` points the same tests at another server instead (a real
MongoDB, replica set or Atlas cluster). Every test uses its own database name, so the
server is shared safely; test databases are named ``pp_<random>``.

MongoDB tests are never skipped: if mongoeco is missing (it needs Python >= 3.13) and no
URI is given, the fixture fails with instructions.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from tests.support.processes import stop_process

ENV_URI = "PUTPLACE_TEST_MONGODB_URI"
ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0


def _wait_for_ping(uri: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = log_path.read_text(errors="replace")[-3000:]
            pytest.fail(f"mongoeco wire server exited with {process.returncode}:\n{output}")
        try:
            with MongoClient(uri, serverSelectionTimeoutMS=1000) as client:
                client.admin.command("ping")
            return
        except PyMongoError as exc:
            last_error = exc
            time.sleep(0.1)
    pytest.fail(f"mongoeco wire server at {uri} did not answer ping: {last_error}")


def _start_mongoeco(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start the server; its first stdout line is ``READY <uri>`` (port chosen by the OS)."""
    log_path = directory / "mongoeco.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.mongo_server", "--port", "0",
             "--path", str(directory / "mongoeco.sqlite")],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=log,
        )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline().decode()  # blocks until ready or the process dies
    if not line.startswith("READY "):
        process.wait(timeout=10)
        output = log_path.read_text(errors="replace")[-3000:]
        pytest.fail(f"mongoeco wire server failed to start ({process.returncode}):\n{output}")
    uri = line.split(maxsplit=1)[1].strip()
    _wait_for_ping(uri, process, log_path)
    return process, uri


def _stop(process: subprocess.Popen[bytes]) -> None:
    stop_process(process, timeout=15)
    if process.stdout is not None:
        process.stdout.close()


def drop_database(uri: str, name: str) -> None:
    """Drop a test's database when the test ends. mongoeco keeps every index of every
    database in one SQLite table, so each database left behind slows every later write
    (the suite took twice as long before its databases were dropped)."""
    with MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
        client.drop_database(name)


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A MongoDB URI for tests: ``PUTPLACE_TEST_MONGODB_URI`` or a private mongoeco server."""
    uri = os.environ.get(ENV_URI)
    if uri:
        yield uri
        return
    if importlib.util.find_spec("mongoeco") is None:
        where = "in CI, where MongoDB tests must run" if os.environ.get("CI") else "here"
        pytest.fail(
            f"MongoDB tests cannot run {where}: mongoeco is not installed (it needs Python "
            f">= 3.13; `pip install 'mongoeco[wire]'`), and {ENV_URI} is not set. Install "
            f"mongoeco, or set {ENV_URI}=mongodb://host:27017 to use a real MongoDB."
        )
    process, uri = _start_mongoeco(tmp_path_factory.mktemp("mongoeco"))
    try:
        yield uri
    finally:
        _stop(process)
