"""Each server process holds at most PUTPLACE_REQUEST_MEMORY_BYTES of request bodies:
bundles and large batches of records wait for room, first come first served, and one
that gets none in time is answered 503 with Retry-After, having stored nothing."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from putplace.config import Settings
from putplace.server.app import create_app
from putplace.service import bundles
from tests.conftest import Keys, seed_keys
from tests.support.payloads import bundle, metadata
from tests.support.servers import running_server

BUNDLE = {"Content-Type": "application/vnd.putplace.bundle"}
LIMIT = 256 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        database_url=f"sqlite:///{tmp_path}/putplace.db",
        storage_url=f"file://{tmp_path}/blobs",
        fsync=False,
        max_bundle_bytes=LIMIT,
        request_memory_bytes=LIMIT,
    )


@pytest.fixture
def wait_seconds() -> float:
    return 10.0


@pytest.fixture
def server_url(settings: Settings, wait_seconds: float) -> Iterator[str]:
    app = create_app(settings)
    app.state.request_memory.wait_seconds = wait_seconds
    with running_server(settings, app) as url:
        yield url


@pytest.fixture
async def api(server_url: str, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    keys: Keys = await seed_keys(settings)
    async with httpx.AsyncClient(
        base_url=server_url, headers={"X-API-Key": keys.write}, timeout=30
    ) as client:
        yield client


class HeldBundle:
    """A bundle of one member whose body stops halfway until :meth:`finish`."""

    def __init__(self, data: bytes) -> None:
        self.body = bundle([(sha(data), data)])
        self.sent_half = asyncio.Event()
        self.go_on = asyncio.Event()

    async def chunks(self) -> AsyncIterator[bytes]:
        half = len(self.body) // 2
        yield self.body[:half]
        self.sent_half.set()
        await self.go_on.wait()
        yield self.body[half:]

    def finish(self) -> None:
        self.go_on.set()


async def register(api: httpx.AsyncClient, *contents: bytes) -> None:
    answer = await api.post("/put_files", json={"files": [metadata(c) for c in contents]})
    assert answer.json()["stored"] == len(contents)


async def started(api: httpx.AsyncClient, held: HeldBundle) -> asyncio.Task[httpx.Response]:
    task = asyncio.create_task(api.post("/bundles", content=held.chunks(), headers=BUNDLE))
    await asyncio.wait_for(held.sent_half.wait(), 10)
    await asyncio.sleep(0.2)  # the server has read the header and taken the room
    return task


async def overloaded(api: httpx.AsyncClient) -> float:
    response = await api.get("/metrics")
    for line in response.text.splitlines():
        if line.startswith("putplace_overloaded_total "):
            return float(line.split()[1])
    return 0.0


def a_large_batch() -> list[dict[str, object]]:
    """Records whose JSON body is over 64 KiB: counted at 16 times that, the whole budget."""
    records = [metadata(os.urandom(16)) for _ in range(400)]
    assert len(json.dumps({"files": records})) > 64 * 1024
    return records


async def test_a_bundle_waits_until_the_one_before_it_is_stored(api: httpx.AsyncClient) -> None:
    first, second = os.urandom(200 * 1024), os.urandom(100 * 1024)  # 300 KiB > LIMIT
    await register(api, first, second)
    held = HeldBundle(first)
    holding = await started(api, held)
    waiting = asyncio.create_task(
        api.post("/bundles", content=bundle([(sha(second), second)]), headers=BUNDLE)
    )
    await asyncio.sleep(0.5)
    assert not waiting.done()  # no room: its body stays in the connection

    held.finish()
    for response in (await holding, await waiting):
        assert response.status_code == 200, response.text
        assert [r["status"] for r in response.json()["results"]] == ["stored"]
    assert (await api.get(f"/download/{sha(second)}")).content == second


async def test_a_bundle_holds_room_for_two_slices_not_its_whole_size(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bundle is read, verified and written a slice at a time, one arriving while the
    one before is written: 200 KiB of 50 KiB members (a slice each) still arriving hold
    100 KiB, and leave room for another such bundle."""
    monkeypatch.setattr(bundles, "SLICE_BYTES", 64 * 1024)
    arriving = [os.urandom(50 * 1024) for _ in range(4)]
    other = [os.urandom(50 * 1024) for _ in range(2)]  # 300 KiB in all > LIMIT
    await register(api, *arriving, *other)
    held = HeldBundle(b"")
    held.body = bundle([(sha(data), data) for data in arriving])
    holding = await started(api, held)
    response = await asyncio.wait_for(
        api.post("/bundles", content=bundle([(sha(d), d) for d in other]), headers=BUNDLE), 5
    )
    assert [r["status"] for r in response.json()["results"]] == ["stored"] * 2
    assert not holding.done()
    held.finish()
    assert [r["status"] for r in (await holding).json()["results"]] == ["stored"] * 4


async def test_a_large_batch_of_records_waits_for_room_too(api: httpx.AsyncClient) -> None:
    first = os.urandom(200 * 1024)
    await register(api, first)
    held = HeldBundle(first)
    holding = await started(api, held)
    records = a_large_batch()
    waiting = asyncio.create_task(api.post("/put_files", json={"files": records}))
    await asyncio.sleep(0.5)
    assert not waiting.done()

    held.finish()
    assert (await holding).status_code == 200
    answer = await waiting
    assert answer.status_code == 200, answer.text[:300]
    assert answer.json()["stored"] == len(records)


@pytest.mark.parametrize("wait_seconds", [0.3])
async def test_no_room_in_time_is_503_with_retry_after_and_stores_nothing(
    api: httpx.AsyncClient,
) -> None:
    first, second = os.urandom(200 * 1024), os.urandom(100 * 1024)
    await register(api, first, second)
    overloaded_before = await overloaded(api)
    held = HeldBundle(first)
    holding = await started(api, held)
    refused = await api.post("/bundles", content=bundle([(sha(second), second)]), headers=BUNDLE)
    records = a_large_batch()
    batch = await api.post("/put_files", json={"files": records})
    for response in (refused, batch):
        assert response.status_code == 503, response.text[:300]
        assert response.headers["Retry-After"] == "2"
        assert "PUTPLACE_REQUEST_MEMORY_BYTES" in response.json()["detail"]
    assert (await api.get(f"/download/{sha(second)}")).status_code == 404
    found = await api.get("/files", params={"path_prefix": records[0]["filepath"]})
    assert (found.status_code, found.json()) == (200, [])
    assert await overloaded(api) == overloaded_before + 2  # what operators alert on

    held.finish()  # with room again, both go through
    assert (await holding).status_code == 200
    again = await api.post("/bundles", content=bundle([(sha(second), second)]), headers=BUNDLE)
    assert [r["status"] for r in again.json()["results"]] == ["stored"]
    assert (await api.post("/put_files", json={"files": records})).json()["stored"] == len(records)


def test_a_budget_smaller_than_the_largest_bundle_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"request_memory_bytes .* must be at least"):
        Settings(
            database_url=f"sqlite:///{tmp_path}/p.db",
            max_bundle_bytes=LIMIT,
            request_memory_bytes=LIMIT - 1,
        )


async def test_a_body_that_has_not_arrived_holds_no_room(
    api: httpx.AsyncClient, server_url: str
) -> None:
    """A request without a key that declares a large body and sends none of it (or sends
    it slowly) does not keep others out: a batch waits for room only once it is read."""
    host, port = server_url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /put_files HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000\r\n\r\n{"
    )
    await writer.drain()
    try:
        await asyncio.sleep(0.3)
        whole = os.urandom(LIMIT)  # takes the whole budget
        await register(api, whole)
        response = await asyncio.wait_for(
            api.post("/bundles", content=bundle([(sha(whole), whole)]), headers=BUNDLE), 5
        )
        assert response.status_code == 200, response.text[:300]
    finally:
        writer.close()


async def test_a_bundle_slow_to_arrive_gives_its_room_back(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client on a slow link does not keep others waiting for as long as its bytes
    take: after the grace its bundle goes on without room, and others go in."""
    monkeypatch.setattr(bundles, "ARRIVAL_GRACE_SECONDS", 0.3)
    slow, other = os.urandom(200 * 1024), os.urandom(100 * 1024)  # 300 KiB > LIMIT
    await register(api, slow, other)
    held = HeldBundle(slow)
    arriving = await started(api, held)
    response = await asyncio.wait_for(
        api.post("/bundles", content=bundle([(sha(other), other)]), headers=BUNDLE), 5
    )
    assert [r["status"] for r in response.json()["results"]] == ["stored"]
    assert not arriving.done()  # still arriving, and still accepted once whole
    held.finish()
    assert [r["status"] for r in (await arriving).json()["results"]] == ["stored"]
