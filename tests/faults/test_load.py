"""Load: 64 concurrent clients for 30 s mixing registrations, uploads and downloads.

Nothing acknowledged may be lost (every acknowledged record is queried back and every
acknowledged upload downloads with the right hash) and no answer may be a 5xx.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import make_settings
from tests.support.payloads import metadata
from tests.support.processes import ppserver_process, run_ppserver

CLIENTS = 64
SECONDS = float(os.environ.get("PUTPLACE_LOAD_SECONDS", "30"))


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: list[dict[str, Any]] = []
        self.uploads: list[str] = []
        self.server_errors: list[str] = []
        self.failures: list[str] = []
        self.requests = 0

    def saw(self, response: httpx.Response) -> None:
        with self.lock:
            self.requests += 1
            if response.status_code >= 500:
                self.server_errors.append(f"{response.request.method} {response.request.url.path}")


def client_loop(url: str, key: str, name: str, stop: float, tally: Tally) -> None:
    try:
        _client_loop(url, key, name, stop, tally)
    except Exception as exc:  # reported by the test, not lost in a thread
        with tally.lock:
            tally.failures.append(f"{name}: {type(exc).__name__}: {exc}")


def _client_loop(url: str, key: str, name: str, stop: float, tally: Tally) -> None:
    rng = random.Random(name)
    mine: list[str] = []
    with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=120) as client:
        while time.monotonic() < stop:
            action = rng.random()
            if action < 0.5 or not mine:
                content = rng.randbytes(rng.choice([10, 2_000, 40_000]))
                body = metadata(content, hostname=name)
                answer = client.post("/put_file", json=body)
                tally.saw(answer)
                if answer.status_code != 201:
                    continue
                with tally.lock:
                    tally.records.append(body)
                if answer.json()["upload_required"]:
                    uploaded = client.put(f"/blobs/{body['sha256']}", content=content)
                    tally.saw(uploaded)
                    if uploaded.status_code in (200, 201):
                        mine.append(body["sha256"])
                        with tally.lock:
                            tally.uploads.append(body["sha256"])
            else:
                sha = rng.choice(mine)
                download = client.get(f"/download/{sha}")
                tally.saw(download)
                assert download.status_code == 200
                assert hashlib.sha256(download.content).hexdigest() == sha


@pytest.mark.slow
def test_64_clients_for_30_seconds_lose_nothing(
    request: pytest.FixtureRequest, stack: str, tmp_path: Path
) -> None:
    settings = make_settings(request, stack, tmp_path, fsync=True, log_level="warning")
    created = run_ppserver(settings, "keys", "create", "--name", "load", "--json", cwd=tmp_path)
    key = json.loads(created.stdout)["api_key"]
    tally = Tally()
    with ppserver_process(settings, tmp_path, "--workers", "2") as url:
        stop = time.monotonic() + SECONDS
        threads = [
            threading.Thread(target=client_loop, args=(url, key, f"load-{i}", stop, tally))
            for i in range(CLIENTS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=120) as client:
            stored: set[tuple[str, str]] = set()
            after = None
            while True:
                params: dict[str, Any] = {"limit": 1000}
                if after:
                    params["after"] = after
                page = client.get("/files", params=params).json()
                if not page:
                    break
                stored |= {(r["hostname"], r["filepath"]) for r in page}
                after = page[-1]["_id"]
            intact = sum(
                client.get(f"/download/{sha}").status_code == 200 for sha in set(tally.uploads)
            )
    print(
        f"\nload: {CLIENTS} clients x {SECONDS:.0f} s: {tally.requests} requests, "
        f"{len(tally.records)} records and {len(tally.uploads)} uploads acknowledged, "
        f"{len(stored)} records stored, {intact} uploads intact, "
        f"{len(tally.server_errors)} server errors"
    )
    assert tally.server_errors == []
    assert tally.failures == []
    assert len(tally.records) > CLIENTS
    assert {(r["hostname"], r["filepath"]) for r in tally.records} <= stored
    assert intact == len(set(tally.uploads))
