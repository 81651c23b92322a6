"""``GET /metrics``: the counters move by exactly what a scripted workload did, in one
process and summed over several workers; access as the setting says."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from tests.conftest import Keys, make_settings, seed_keys
from tests.support.payloads import metadata
from tests.support.processes import ppserver_process, run_ppserver
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
        for _ in range(5):
            seen = scrape(url, key)
            assert requests(seen, "/files", "GET", 200) - requests(base, "/files", "GET", 200) == 40


async def test_content_counters_follow_the_uploads(server_url: str, keys: Keys) -> None:
    """One content stored, one duplicate not sent again, one upload refused for its hash:
    the counters say exactly that."""
    content, wrong = b"stored once" * 100, b"not what was registered"
    first = metadata(content, filepath="/c/1")
    before = scrape(server_url, keys.read)
    with httpx.Client(base_url=server_url, headers={"X-API-Key": keys.write}) as client:
        assert client.post("/put_file", json=first).json()["upload_required"] is True
        assert client.put(f"/blobs/{first['sha256']}", content=content).status_code == 201
        again = client.post("/put_file", json={**first, "filepath": "/c/2"})
        assert again.json()["upload_required"] is False
        liar = metadata(wrong.upper(), filepath="/c/3")
        assert client.post("/put_file", json=liar).status_code == 201
        assert client.put(f"/blobs/{liar['sha256']}", content=wrong).status_code == 400
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
