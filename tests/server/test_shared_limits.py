"""Several server instances behind a load balancer: with Redis (``PUTPLACE_REDIS_URL``)
a key's rate limit holds in total and a revocation through one instance is refused by the
others on their next request; without it each process keeps its own (as documented); and
Redis going away never takes the API down. The workers of one ``ppserver serve`` share
theirs through a file it makes for them, which two instances are pointed at here (a
request cannot choose its worker)."""

from __future__ import annotations

import asyncio
import http.client
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from putplace.coordination.host import POLL_SECONDS, SHARED_FILE_ENV
from tests.api.test_quotas import race_for_the_last_room
from tests.conftest import make_settings, seed_keys
from tests.server.test_metrics import scrape, worker_processes
from tests.support.processes import ppserver_process
from tests.support.redis import redis_server
from tests.support.servers import free_port, running_server

BURST = 8


@pytest.mark.parametrize("sharing", ["redis", "host", "per-process"])
async def test_two_instances_share_limits_and_revocations(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sharing: str,
) -> None:
    shared = sharing != "per-process"
    redis_url = request.getfixturevalue("redis_url") if sharing == "redis" else ""
    if sharing == "host":  # what ppserver serve --workers N gives its workers
        monkeypatch.setenv(SHARED_FILE_ENV, str(tmp_path / "limits.sqlite3"))
    settings = make_settings(
        request, "sqlite-local", tmp_path, redis_url=redis_url,
        rate_limit_per_second=0.01, rate_limit_burst=BURST, key_cache_seconds=300,
        quotas="lab:bytes=100",
    )  # fmt: skip
    keys = await seed_keys(settings)
    with ExitStack() as stack:
        # One process each: what one instance's workers share is the last test's.
        first, second = (
            stack.enter_context(ppserver_process(settings, tmp_path, "--workers", "1"))
            for _ in "12"
        )
        # The rate limit: the same key, alternating between the instances.
        answers = [
            httpx.get(f"{url}/files", headers={"X-API-Key": keys.read}).status_code
            for url in (first, second) * BURST
        ]  # (the admin key below has its own bucket)
        assert answers.count(200) == (BURST if shared else 2 * BURST)
        assert set(answers) <= {200, 429}
        # Revocation: both instances have the write key cached; revoked through the first.
        writer = {"X-API-Key": keys.write}
        for url in (first, second):
            assert httpx.get(f"{url}/files", headers=writer).status_code == 200
        admin = {"X-API-Key": keys.admin}
        listed = httpx.get(f"{first}/api_keys", headers=admin).json()
        (key_id,) = [k["_id"] for k in listed if k["name"] == "write"]
        assert httpx.put(f"{first}/api_keys/{key_id}/revoke", headers=admin).status_code == 200
        assert httpx.get(f"{first}/files", headers=writer).status_code == 401
        if sharing == "host":  # heard within POLL_SECONDS
            await asyncio.sleep(4 * POLL_SECONDS)
        refused_by_second = httpx.get(f"{second}/files", headers=writer).status_code
        # Without Redis the second instance honours its cached key until the cache TTL.
        assert refused_by_second == (401 if shared else 200)
        # The quota: content on its way through one instance holds its room in the other.
        raced = await race_for_the_last_room(first, second, keys.admin)
        assert raced.status_code == (403 if shared else 201)


async def test_a_redis_outage_keeps_the_api_up_and_shows(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    port = free_port()
    with redis_server(tmp_path, port) as url:
        settings = make_settings(request, "sqlite-local", tmp_path, redis_url=url)
        keys = await seed_keys(settings)
        with running_server(settings) as api:
            health = httpx.get(f"{api}/health").json()
            assert health["limits"] == {
                "type": "redis", "url": f"127.0.0.1:{port}", "shared": True, "status": "healthy"
            }  # fmt: skip
    with running_server(settings) as api:  # Redis is gone (a server started, too)
        answer = httpx.get(f"{api}/health")  # it checks Redis itself
        assert answer.status_code == 200  # the stores answer: keep it behind the balancer
        assert answer.json()["status"] == "healthy"
        assert answer.json()["limits"]["status"] == "unavailable"
        assert answer.json()["limits"]["shared"] is False
        assert httpx.get(f"{api}/files", headers={"X-API-Key": keys.read}).status_code == 200
        assert scrape(api, keys.read)["putplace_redis_up"] == 0


def test_the_workers_of_one_server_share_their_limits(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without Redis, ``ppserver serve --workers 2`` counts a key's requests once for
    both workers: new connections, spread over them by the kernel (both are seen to
    answer), get the burst in all."""
    monkeypatch.delenv(SHARED_FILE_ENV, raising=False)
    settings = make_settings(
        request, "sqlite-local", tmp_path, rate_limit_per_second=0.01, rate_limit_burst=BURST
    )
    keys = asyncio.run(seed_keys(settings))
    with ppserver_process(settings, tmp_path, "--workers", "2") as url:
        assert httpx.get(f"{url}/health").json()["limits"] == {
            "type": "host", "shared": True, "status": "healthy"
        }  # fmt: skip
        workers = worker_processes(url)
        answered_by: set[int] = set()
        answers = []
        for _ in range(5 * BURST):
            status, worker = answer_and_worker(url, "/files", keys.read, workers)
            answers.append(status)
            answered_by.add(worker)
        assert len(answered_by) == 2
        assert answers.count(200) == BURST


def answer_and_worker(
    url: str, path: str, key: str, workers: list[psutil.Process]
) -> tuple[int, int]:
    """The status of GET *path* on a new connection, and the pid of the worker that
    holds the server's end of that connection."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    connection = http.client.HTTPConnection(str(host), port, timeout=30)
    try:
        connection.request("GET", path, headers={"X-API-Key": key})
        status = connection.getresponse().status
        assert connection.sock is not None
        mine = connection.sock.getsockname()[1]
        for worker in workers:
            for tcp in worker.net_connections(kind="tcp"):
                if tcp.raddr and tcp.raddr.port == mine:
                    return status, worker.pid
    finally:
        connection.close()
    raise AssertionError("no worker holds the connection")
