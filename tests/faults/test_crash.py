"""kill -9 of a real ppserver during a stream of uploads loses nothing it acknowledged.

Several client threads register and upload random content as fast as they can; the server
is SIGKILLed at a random moment, restarted on the same data, and every upload that had
been answered 2xx must be intact: its record present, its bytes downloadable with the
right hash, no partial blob under a final name, and the temporary directory swept.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from putplace.config import Settings
from tests.support.payloads import metadata
from tests.support.processes import BIN, run_ppserver, settings_env, wait_until_healthy
from tests.support.servers import free_port

ROUNDS = 3
CLIENTS = 6


def start(settings: Settings, cwd: Path, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [str(BIN / "ppserver"), "serve", "--port", str(port)],
        cwd=cwd, env=settings_env(settings),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_until_healthy(f"http://127.0.0.1:{port}", process)
    return process


def uploader(url: str, key: str, stop: threading.Event, acked: list[dict[str, Any]]) -> None:
    rng = random.Random()
    with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=10) as client:
        while not stop.is_set():
            content = os.urandom(rng.choice([100, 50_000, 1_500_000, 3_000_000]))
            body = metadata(content, hostname=f"crash-{threading.get_ident()}")
            try:
                if client.post("/put_files", json={"files": [body]}).status_code != 200:
                    continue
                answer = client.put(f"/blobs/{body['sha256']}", content=content)
            except httpx.TransportError:
                continue  # the server died mid-request: not acknowledged
            if answer.status_code in (200, 201):
                acked.append({**body, "content": content})


@pytest.mark.slow
def test_kill_9_loses_nothing_acknowledged(tmp_path: Path) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/putplace.db", storage_url=f"file://{tmp_path}/blobs"
    )
    created = run_ppserver(settings, "keys", "create", "--name", "crash", "--json", cwd=tmp_path)
    key = httpx.Response(200, content=created.stdout).json()["api_key"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    acked: list[dict[str, Any]] = []
    for _ in range(ROUNDS):
        server = start(settings, tmp_path, port)
        stop = threading.Event()
        threads = [
            threading.Thread(target=uploader, args=(url, key, stop, acked)) for _ in range(CLIENTS)
        ]
        for thread in threads:
            thread.start()
        time.sleep(random.uniform(1.0, 3.0))
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        stop.set()
        for thread in threads:
            thread.join()

    # Start again on the same data; stale temporary uploads must be swept at start-up.
    temp = tmp_path / "blobs" / ".tmp"
    old = time.time() - 2 * 24 * 3600
    for leftover in temp.iterdir():
        os.utime(leftover, (old, old))
    server = start(settings, tmp_path, port)
    try:
        intact = 0
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=30) as client:
            for item in acked:
                found = client.get("/files", params={"sha256": item["sha256"], "limit": 1000})
                paths = {r["filepath"] for r in found.json()}
                download = client.get(f"/download/{item['sha256']}")
                if (
                    item["filepath"] in paths
                    and download.status_code == 200
                    and hashlib.sha256(download.content).hexdigest() == item["sha256"]
                ):
                    intact += 1
        print(f"\nkill -9 x{ROUNDS}: acknowledged uploads {len(acked)}, intact {intact}")
        assert acked, "no upload was acknowledged before the kills"
        assert intact == len(acked)
        for shard in (tmp_path / "blobs").iterdir():
            if shard.name.startswith("."):
                continue
            for blob in shard.iterdir():
                assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name, blob
        assert list(temp.iterdir()) == []
    finally:
        server.terminate()
        server.wait(timeout=30)
