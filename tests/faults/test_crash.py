"""kill -9 of a real ppserver during a stream of uploads loses nothing it acknowledged.

Several client threads register and upload random content as fast as they can, half of
them single uploads (``PUT /blobs``) and half bundles of small contents (``POST /bundles``);
the server is SIGKILLed at a random moment, three times, restarted on the same data, and
every upload or bundle member that had been acknowledged must be intact: its record
present, its bytes downloadable with the right hash. ``ppserver verify`` must find every
recorded blob whole; on local disk no partial blob may sit under a final name and the
temporary directory must be swept, and every pack file left must be indexed and whole.
Runs on every stack.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from putplace.blobs.packs import INDEX_NAME, MEMBER_HEADER, PACK_DIR, PACK_SUFFIX, pack_name
from putplace.config import Settings
from tests.conftest import make_settings
from tests.support.payloads import bundle, metadata
from tests.support.processes import BIN, run_ppserver, settings_env, wait_until_healthy
from tests.support.servers import free_port

ROUNDS = 3
CLIENTS = 6


def start(settings: Settings, cwd: Path, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        # One process: SIGKILL then kills the whole server (workers would outlive their
        # parent and keep the port), as the kernel's OOM killer or a power cut would.
        [str(BIN / "ppserver"), "serve", "--port", str(port), "--workers", "1"],
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
                acked.append(body)


def bundler(url: str, key: str, stop: threading.Event, acked: list[dict[str, Any]]) -> None:
    rng = random.Random()
    host = f"bundle-{threading.get_ident()}"
    with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=10) as client:
        while not stop.is_set():
            contents = [os.urandom(rng.randint(0, 20_000)) for _ in range(rng.randint(1, 40))]
            bodies = [metadata(content, hostname=host) for content in contents]
            try:
                if client.post("/put_files", json={"files": bodies}).status_code != 200:
                    continue
                answer = client.post(
                    "/bundles",
                    content=bundle(
                        [(b["sha256"], c) for b, c in zip(bodies, contents, strict=True)]
                    ),
                    headers={"Content-Type": "application/vnd.putplace.bundle"},
                )
            except httpx.TransportError:
                continue
            if answer.status_code != 200:
                continue
            kept = {r["sha256"] for r in answer.json()["results"] if r["status"] != "refused"}
            acked.extend(b for b in bodies if b["sha256"] in kept)


def wait_for_both_kinds(acked: list[dict[str, Any]], before: int, limit: float = 60) -> None:
    """Until this round has acknowledged a single upload and a bundle member."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        new = {item["hostname"].split("-")[0] for item in acked[before:]}
        if new >= {"crash", "bundle"}:
            return
        time.sleep(0.05)


def assert_packs_whole_and_indexed(pack_dir: Path) -> None:
    """Every pack left is pointed to by the index (a half-written one was swept) and every
    member in it, read by the pack's own headers, is whole: its bytes hash to its name."""
    with closing(sqlite3.connect(pack_dir / INDEX_NAME)) as db:
        indexed = {pack_name(row[0]) for row in db.execute("SELECT DISTINCT pack FROM packed")}
    packs = list(pack_dir.glob(f"*{PACK_SUFFIX}"))
    assert packs, "no bundle went into a pack"
    for pack in packs:
        assert pack.name in indexed, f"unindexed pack {pack}"
        raw, offset = pack.read_bytes(), 0
        while offset < len(raw):
            digest, size = MEMBER_HEADER.unpack_from(raw, offset)
            offset += MEMBER_HEADER.size
            assert hashlib.sha256(raw[offset : offset + size]).digest() == digest, pack
            offset += size
        assert offset == len(raw), f"{pack} ends inside a member"


@pytest.mark.slow
def test_kill_9_loses_nothing_acknowledged(
    request: pytest.FixtureRequest, stack: str, tmp_path: Path
) -> None:
    settings = make_settings(request, stack, tmp_path, fsync=True)
    created = run_ppserver(settings, "keys", "create", "--name", "crash", "--json", cwd=tmp_path)
    key = httpx.Response(200, content=created.stdout).json()["api_key"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    acked: list[dict[str, Any]] = []
    for _ in range(ROUNDS):
        server = start(settings, tmp_path, port)
        stop = threading.Event()
        threads = [
            threading.Thread(target=work, args=(url, key, stop, acked))
            for work in (uploader, bundler)
            for _ in range(CLIENTS // 2)
        ]
        for thread in threads:
            thread.start()
        wait_for_both_kinds(acked, before=len(acked))  # slow backends too get acks in
        time.sleep(random.uniform(0.0, 2.0))
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        stop.set()
        for thread in threads:
            thread.join()

    # Start again on the same data; stale temporary uploads must be swept at start-up.
    local = stack.endswith("local")
    temp = tmp_path / "blobs" / ".tmp"
    pack_dir = tmp_path / "blobs" / PACK_DIR
    old = time.time() - 2 * 24 * 3600
    for leftover in [*temp.iterdir(), *pack_dir.glob(f"*{PACK_SUFFIX}")] if local else []:
        os.utime(leftover, (old, old))  # only unindexed packs may be swept
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
        members = sum(item["hostname"].startswith("bundle-") for item in acked)
        print(f"\nkill -9 x{ROUNDS} on {stack}: acknowledged {len(acked)} "
              f"({members} bundle members), intact {intact}")  # fmt: skip
        assert members, "no bundle member was acknowledged before the kills"
        assert len(acked) > members, "no single upload was acknowledged before the kills"
        assert intact == len(acked)
        verified = run_ppserver(settings, "verify", "--json", cwd=tmp_path)
        report = json.loads(verified.stdout)
        assert (report["ok"], report["corrupt"], report["missing"]) == (True, [], [])
        if local:
            for shard in (tmp_path / "blobs").iterdir():
                if shard.name.startswith(".") or shard.name == PACK_DIR:
                    continue
                for blob in shard.iterdir():
                    assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name, blob
            assert list(temp.iterdir()) == []
            assert_packs_whole_and_indexed(pack_dir)
    finally:
        server.terminate()
        server.wait(timeout=30)
