"""``GET /metrics``: the counters move by exactly what a scripted workload did, in one
process and summed over several workers; access as the setting says."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from putplace.blobs.base import BlobNotFoundError
from putplace.blobs.local import LocalBlobStore
from putplace.config import Settings
from putplace.metadata.base import StoreUnavailableError
from putplace.metadata.sqlite import SQLiteMetadataStore
from putplace.server.metrics import RequestMetrics, exposition
from putplace.server.observe import ObserveRequestsMiddleware
from putplace.server.store_metrics import (
    STORE_UP,
    UNFINISHED_UPLOADS,
    measured,
    observe_state,
)
from putplace.service.errors import TooLargeError
from putplace.service.stores import Stores
from tests.conftest import Keys, make_settings, seed_keys
from tests.support.payloads import metadata
from tests.support.processes import ppserver_process, run_ppserver, worker_processes
from tests.support.servers import running_server

SAMPLE = re.compile(r"^([a-z_]+)(\{.*\})? (\S+)$", re.MULTILINE)


def samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value, from the text format."""
    return {m[1] + (m[2] or ""): float(m[3]) for m in SAMPLE.finditer(text)}


def requests(values: dict[str, float], route: str, method: str, status: int) -> float:
    key = f'putplace_http_requests_total{{method="{method}",route="{route}",status="{status}"}}'
    return values.get(key, 0.0)


def scrape(url: str, key: str | None) -> dict[str, float]:
    headers = {"X-API-Key": key} if key else {}
    answer = httpx.get(f"{url}/metrics", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return samples(answer.text)


async def test_counters_move_by_what_the_workload_did(server_url: str, keys: Keys) -> None:
    before = scrape(server_url, keys.read)
    bodies = [
        json.dumps({**metadata(b"counted"), "filepath": f"/m/{i}"}).encode() for i in range(4)
    ]
    json_type = {"Content-Type": "application/json"}
    with httpx.Client(base_url=server_url, headers={"X-API-Key": keys.write}) as client:
        for sent in bodies:
            assert client.post("/put_file", content=sent, headers=json_type).status_code == 201
        assert client.get(f"/get_file/{'ab' * 32}").status_code == 404
        assert client.get("/no/such/path/for/metrics").status_code == 404
        assert client.get("/put_file").status_code == 405
    after = scrape(server_url, keys.read)
    assert (
        requests(after, "/put_file", "POST", 201) - requests(before, "/put_file", "POST", 201) == 4
    )
    assert (
        requests(after, "/get_file/{sha256}", "GET", 404)
        - requests(before, "/get_file/{sha256}", "GET", 404)
        == 1
    )
    # A path no route knows is counted under one label, never under its own path.
    assert requests(after, "unmatched", "GET", 404) - requests(before, "unmatched", "GET", 404) == 1
    assert not any("/no/such/path" in name for name in after)
    # A known path with a method it does not take is counted under its route.
    assert requests(after, "/put_file", "GET", 405) - requests(before, "/put_file", "GET", 405) == 1
    count = 'putplace_http_request_duration_seconds_count{method="POST",route="/put_file"}'
    assert after[count] - before.get(count, 0) == 4
    received = 'putplace_http_received_bytes_total{route="/put_file"}'
    assert after[received] - before.get(received, 0) == sum(map(len, bodies))
    assert "putplace_resumable_uploads_unfinished" in after


@pytest.mark.parametrize(
    ("access", "anonymous", "reader"), [("key", 401, 200), ("open", 200, 200), ("off", 404, 404)]
)
async def test_access_follows_the_setting(
    request: pytest.FixtureRequest, tmp_path: Path, access: str, anonymous: int, reader: int
) -> None:
    settings = make_settings(request, "sqlite-local", tmp_path, metrics=access)
    keys = await seed_keys(settings)
    with running_server(settings) as url:
        assert httpx.get(f"{url}/metrics").status_code == anonymous
        assert httpx.get(f"{url}/metrics", headers={"X-API-Key": keys.read}).status_code == reader


def test_workers_are_summed(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Two uvicorn workers: whichever answers the scrape, it counts both workers'
    requests."""
    settings = make_settings(request, "sqlite-local", tmp_path)
    created = run_ppserver(
        settings, "keys", "create", "--name", "m", "--scope", "read", "--json", cwd=tmp_path
    )
    key = json.loads(created.stdout)["api_key"]
    with ppserver_process(settings, tmp_path, "--workers", "2") as url:
        base = scrape(url, key)
        for _ in range(40):  # new connections: the kernel spreads them over the workers
            assert httpx.get(f"{url}/files", headers={"X-API-Key": key}).status_code == 200
        # The other worker writes its counts within a quarter of a second.
        deadline = time.monotonic() + 5
        while (
            requests(scrape(url, key), "/files", "GET", 200) - requests(base, "/files", "GET", 200)
            != 40
            and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        for _ in range(5):
            seen = scrape(url, key)
            assert requests(seen, "/files", "GET", 200) - requests(base, "/files", "GET", 200) == 40
        # Memory is the workers' together, not the one that answered.
        workers = worker_processes(url)
        assert len(workers) == 2
        resident = sum(worker.memory_info().rss for worker in workers)
        assert seen["process_resident_memory_bytes"] == pytest.approx(resident, rel=0.25)
        assert seen["process_cpu_seconds_total"] > 0
        assert seen["process_open_fds"] > 2 * 5


def content_workload(client: httpx.Client, content: bytes, directory: str) -> None:
    """Five requests: store *content*, register it again elsewhere (a duplicate, not sent
    again), and have an upload refused for not matching its hash."""
    wrong = b"not what was registered"
    first = metadata(content, filepath=f"{directory}/1")
    assert client.post("/put_file", json=first).json()["upload_required"] is True
    assert client.put(f"/blobs/{first['sha256']}", content=content).status_code == 201
    again = client.post("/put_file", json={**first, "filepath": f"{directory}/2"})
    assert again.json()["upload_required"] is False
    liar = metadata(wrong.upper(), filepath=f"{directory}/3")
    assert client.post("/put_file", json=liar).status_code == 201
    assert client.put(f"/blobs/{liar['sha256']}", content=wrong).status_code == 400


async def test_content_counters_follow_the_uploads(server_url: str, keys: Keys) -> None:
    """One content stored, one duplicate not sent again, one upload refused for its hash:
    the counters say exactly that."""
    content = b"stored once" * 100
    before = scrape(server_url, keys.read)
    with httpx.Client(base_url=server_url, headers={"X-API-Key": keys.write}) as client:
        content_workload(client, content, "/c")
    after = scrape(server_url, keys.read)

    def moved(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert moved("putplace_contents_stored_total") == 1
    assert moved("putplace_content_stored_bytes_total") == len(content)
    assert moved("putplace_duplicates_avoided_total") == 1
    assert moved("putplace_duplicate_bytes_avoided_total") == len(content)
    assert moved('putplace_uploads_refused_total{reason="hash_mismatch"}') == 1
    lookups = moved('putplace_key_cache_lookups_total{result="miss"}') + moved(
        'putplace_key_cache_lookups_total{result="hit"}'
    )
    assert lookups == 5 + 1  # the workload's five requests and the second scrape


def family(values: dict[str, float], name: str, **labels: str) -> float:
    """The sum of *name*'s samples whose labels include *labels*."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(
        value
        for sample, value in values.items()
        if sample.partition("{")[0] == name and all(w in sample for w in wanted)
    )


async def test_store_operations_and_state_are_exported(
    server_url: str, keys: Keys, settings: Settings
) -> None:
    """Each store's operations are timed under its backend's name; a scrape says the
    stores answer, how many scans are open and, on local disk, how full it is."""
    content = b"timed" * 50
    body = metadata(content)
    before = scrape(server_url, keys.read)
    with httpx.Client(base_url=server_url, headers={"X-API-Key": keys.write}) as client:
        assert client.post("/put_file", json=body).status_code == 201
        assert client.put(f"/blobs/{body['sha256']}", content=content).status_code == 201
        for root in ("/srv", "/home"):
            scan = client.post("/scans", json={"hostname": "host-a", "root": root})
            assert scan.status_code == 201
        for root in ("/data", "/empty"):  # the upload's file is under /data
            scan = client.post("/scans", json={"hostname": "host-a", "root": root})
            assert client.post(f"/scans/{scan.json()['scan_id']}/complete").status_code == 200
    after = scrape(server_url, keys.read)
    metadata_backend = "sqlite" if settings.database_url.startswith("sqlite") else "mongodb"
    blob_backend = "local" if settings.storage_url.startswith("file") else "s3"
    timed = "putplace_store_operation_duration_seconds_count"

    def moved(store: str, backend: str, operation: str) -> float:
        labels = {"store": store, "backend": backend, "operation": operation}
        return family(after, timed, **labels) - family(before, timed, **labels)

    assert moved("blobs", blob_backend, "writer.commit") == 1  # the one upload
    assert moved("metadata", metadata_backend, "create_scan") == 4
    # Completing a scan looks for what it missed only where there was something to miss:
    # under /data, a page (the record, now deleted) and the empty page that ends it.
    assert moved("metadata", metadata_backend, "unseen_under") == 2
    # Every key cache miss is one lookup in the store.
    misses = 'putplace_key_cache_lookups_total{result="miss"}'
    assert moved("metadata", metadata_backend, "get_api_key") == after[misses] - before[misses]
    assert after[misses] > before[misses]
    errors = "putplace_store_errors_total"
    assert family(after, errors) == family(before, errors)
    assert after[f'putplace_store_up{{backend="{metadata_backend}",store="metadata"}}'] == 1
    assert after[f'putplace_store_up{{backend="{blob_backend}",store="blobs"}}'] == 1
    assert after["putplace_scans_open"] == 2
    if blob_backend == "local":
        free = shutil.disk_usage(settings.storage_url.removeprefix("file://")).free
        free_bytes = after['putplace_blob_store_free_bytes{backend="local"}']
        assert abs(free_bytes - free) < 256 * 1024 * 1024
        assert after['putplace_blob_store_capacity_bytes{backend="local"}'] >= free_bytes
    else:  # no sample, rather than a 0 that would look like a full disk
        assert 'putplace_blob_store_free_bytes{backend="s3"}' not in after


async def test_store_failures_are_counted_and_answers_are_not(tmp_path: Path) -> None:
    """A store that fails counts an error for that operation; 'not found' does not."""
    opened = Stores(SQLiteMetadataStore(tmp_path / "m.db"), LocalBlobStore(tmp_path / "b"))
    await opened.metadata.open()
    await opened.blobs.open()
    stores = measured(opened)
    errors = "putplace_store_errors_total"
    before = samples(exposition()[0].decode())
    with pytest.raises(BlobNotFoundError):
        async for _ in stores.blobs.read("ab" * 32):
            pass
    with pytest.raises(ValueError, match="SHA256"):
        await stores.blobs.delete("../escape")  # the caller's mistake, not the store's
    assert await stores.metadata.get_api_key("00" * 32) is None
    staging = stores.blobs.staging()
    state = await staging.create("ab" * 16, 10)

    async def too_much() -> AsyncIterator[bytes]:
        yield b"12345"
        raise TooLargeError("the client sent more than it said")

    with pytest.raises(TooLargeError):  # the client's fault, raised inside the store
        await staging.append("ab" * 16, state, 0, 10, too_much())
    await opened.metadata.close()
    with pytest.raises(StoreUnavailableError):
        await stores.metadata.get_api_key("00" * 32)
    await opened.blobs.close()
    after = samples(exposition()[0].decode())
    assert (
        family(after, errors, operation="get_api_key")
        - family(before, errors, operation="get_api_key")
        == 1
    )
    for answered in ("read", "delete", "staging.append"):
        assert family(after, errors, operation=answered) == family(
            before, errors, operation=answered
        )


def test_verify_results_reach_every_server(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """`ppserver verify` finds a corrupt blob; the server exports when it ran and what it
    found, so an alert can fire."""
    settings = make_settings(request, "sqlite-local", tmp_path)
    created = run_ppserver(
        settings, "keys", "create", "--name", "m", "--scope", "write", "--json", cwd=tmp_path
    )
    key = json.loads(created.stdout)["api_key"]
    content = b"will rot" * 10
    body = metadata(content)
    with ppserver_process(settings, tmp_path) as url:
        with httpx.Client(base_url=url, headers={"X-API-Key": key}) as client:
            assert client.post("/put_file", json=body).status_code == 201
            assert client.put(f"/blobs/{body['sha256']}", content=content).status_code == 201
        assert not any("putplace_maintenance" in sample for sample in scrape(url, key))
        blob = tmp_path / "blobs" / body["sha256"][:2] / body["sha256"]
        blob.write_bytes(b"rotten")
        started = time.time()
        run_ppserver(settings, "verify", cwd=tmp_path)
        seen = scrape(url, key)
        # A sample that finds nothing is its own task: it does not clear what the full
        # run found.
        run_ppserver(settings, "verify", "--sample", "5", cwd=tmp_path)
        sampled = scrape(url, key)
    ran = seen['putplace_maintenance_last_run_timestamp_seconds{task="verify"}']
    assert started - 1 <= ran <= time.time()
    assert seen['putplace_maintenance_last_problems{problem="corrupt",task="verify"}'] == 1
    assert seen['putplace_maintenance_last_problems{problem="missing",task="verify"}'] == 0
    corrupt = "putplace_maintenance_last_problems"
    assert sampled[f'{corrupt}{{problem="corrupt",task="verify"}}'] == 1
    assert sampled[f'{corrupt}{{problem="corrupt",task="verify_sample"}}'] == 0


async def test_a_failing_state_query_costs_only_its_own_gauge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counting open scans fails (a bug, a lock): the scrape still says the stores are up
    and how many uploads are unfinished."""
    opened = Stores(SQLiteMetadataStore(tmp_path / "m.db"), LocalBlobStore(tmp_path / "b"))
    await opened.metadata.open()
    await opened.blobs.open()
    try:
        STORE_UP.labels("metadata", "sqlite").set(0)
        UNFINISHED_UPLOADS.set(-1)

        async def fails() -> int:
            raise RuntimeError("database is locked")

        monkeypatch.setattr(opened.metadata, "count_open_scans", fails)
        await observe_state(opened)
        seen = samples(exposition()[0].decode())
        assert seen['putplace_store_up{backend="sqlite",store="metadata"}'] == 1
        assert seen["putplace_resumable_uploads_unfinished"] == 0
    finally:
        await opened.metadata.close()
        await opened.blobs.close()


async def test_a_method_of_the_clients_own_gets_one_label() -> None:
    """HTTP allows any token as a method (uvicorn's h11 parser passes them on): each must
    not become a series of its own."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 405, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        pass

    other = 'putplace_http_requests_total{method="other",route="unmatched",status="405"}'
    before = samples(exposition()[0].decode()).get(other, 0)
    for method in ("BREW", "WHEN"):
        scope = {"type": "http", "method": method, "path": "/x", "headers": []}
        await ObserveRequestsMiddleware(app, RequestMetrics())(scope, receive, send)
    after = samples(exposition()[0].decode())
    assert after[other] - before == 2
    assert not any("BREW" in name or "WHEN" in name for name in after)
