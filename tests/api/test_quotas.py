"""Namespace quotas (PUTPLACE_QUOTAS) on both metadata backends: a write that would go over
is refused whole, saying which quota, the use and the limit, and stores nothing."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from putplace.config import Settings
from tests.conftest import Keys, make_settings, seed_keys
from tests.support.payloads import bundle, metadata, put
from tests.support.servers import running_server

BUNDLE = {"Content-Type": "application/vnd.putplace.bundle"}


@pytest.fixture(params=["sqlite-local", "mongodb-local"])
def limited(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Keys]]:
    settings = make_settings(request, request.param, tmp_path,
                             quotas="lab:files=3,bytes=100; other:bytes=1K")  # fmt: skip
    keys = asyncio.run(seed_keys(settings))
    with running_server(settings) as url:
        yield url, keys


def files_of(answer: httpx.Response) -> list[str]:
    return sorted(f["filepath"] for f in answer.json())


async def test_files_and_bytes_quotas(limited: tuple[str, Keys]) -> None:
    url, keys = limited
    lab = {"namespace": "lab"}
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": keys.admin}) as api:
        batch = [metadata(f"{n}".encode(), filepath=f"/f{n}") for n in range(2)]
        assert (await api.post("/put_files", params=lab, json={"files": batch})).status_code == 200
        # Two more would make four: refused whole, nothing of it stored.
        more = [metadata(b"2", filepath="/f2"), metadata(b"3", filepath="/f3")]
        refused = await api.post("/put_files", params=lab, json={"files": more})
        assert refused.status_code == 403
        assert refused.json()["detail"] == (
            "namespace 'lab' is over its files quota: 2 live records of 3 allowed, and this "
            "request adds 2"
        )
        assert files_of(await api.get("/files", params=lab)) == ["/f0", "/f1"]
        # Changing a live record adds none; the third record fits.
        assert (await put(api, metadata(b"changed", filepath="/f0"), params=lab)).status_code == 201
        assert (await put(api, metadata(b"2", filepath="/f2"), params=lab)).status_code == 201
        assert (await put(api, metadata(b"4", filepath="/f4"), params=lab)).status_code == 403

        # Bytes: content the namespace sends. 60 bytes fit; 60 more do not.
        first, second = b"a" * 60, b"b" * 60
        for n, content in enumerate((first, second)):
            await put(api, metadata(content, filepath=f"/f{n}"), params=lab)
        sha = hashlib.sha256(first).hexdigest()
        assert (await api.put(f"/blobs/{sha}", params=lab, content=first)).status_code == 201
        over = hashlib.sha256(second).hexdigest()
        refused = await api.put(f"/blobs/{over}", params=lab, content=second)
        assert refused.status_code == 403
        assert refused.json()["detail"].startswith(
            "namespace 'lab' is over its bytes quota: 60 bytes of 100 allowed"
        )
        sent = await api.post("/bundles", params=lab, content=bundle([(over, second)]),
                              headers=BUNDLE)  # fmt: skip
        assert sent.status_code == 403
        assert (await api.get(f"/download/{over}", params=lab)).status_code == 404  # not stored

        stats: Any = (await api.get("/stats", params=lab)).json()
        assert stats["quotas"] == [
            {"namespace": "lab", "files": 3, "files_limit": 3, "bytes": 60, "bytes_limit": 100}
        ]
        everyone: Any = (await api.get("/stats")).json()
        assert [q["namespace"] for q in everyone["quotas"]] == ["lab", "other"]
        # A namespace without quotas is not limited.
        free = [metadata(f"{n}".encode(), filepath=f"/g{n}") for n in range(5)]
        assert (await api.post("/put_files", json={"files": free})).json()["stored"] == 5


def test_quota_settings_are_checked() -> None:
    assert Settings(quotas="lab:files=3,bytes=2G").quota("lab").bytes == 2 << 30
    for bad in ("lab", "lab:files=1K", "Lab:files=1", "lab:files=1;lab:bytes=2", "lab:size=1"):
        with pytest.raises(ValueError, match=r"quota|namespace|files=N"):
            Settings(quotas=bad)


async def race_for_the_last_room(first_url: str, second_url: str, key: str) -> httpx.Response:
    """Send 60 bytes to *first_url* slowly, and while they are on their way, 60 other bytes
    to *second_url*, in namespace ``lab`` (100 bytes allowed). The second answer."""
    lab = {"namespace": "lab"}
    slow, quick = b"s" * 60, b"q" * 60
    arrived_half = asyncio.Event()
    go_on = asyncio.Event()

    async def slowly() -> Any:
        yield slow[:30]
        arrived_half.set()
        await go_on.wait()
        yield slow[30:]

    async with (
        httpx.AsyncClient(base_url=first_url, headers={"X-API-Key": key}) as first,
        httpx.AsyncClient(base_url=second_url, headers={"X-API-Key": key}) as second,
    ):
        for n, content in enumerate((slow, quick)):
            assert (await put(first, metadata(content, filepath=f"/r{n}"), params=lab)).is_success
        sending = asyncio.create_task(
            first.put(f"/blobs/{hashlib.sha256(slow).hexdigest()}", params=lab, content=slowly())
        )
        await arrived_half.wait()
        await asyncio.sleep(0.5)  # the first request is being stored (its room reserved)
        raced = await second.put(
            f"/blobs/{hashlib.sha256(quick).hexdigest()}", params=lab, content=quick
        )
        go_on.set()
        assert (await sending).status_code == 201
    return raced


async def test_content_on_its_way_holds_its_room(limited: tuple[str, Keys]) -> None:
    """Two uploads racing for the last of a quota: the one still streaming holds its room,
    so both cannot pass (and go over) and the second is told why."""
    url, keys = limited
    raced = await race_for_the_last_room(url, url, keys.admin)
    assert raced.status_code == 403
    assert raced.json()["detail"] == (
        "namespace 'lab' is over its bytes quota: 0 bytes (and 60 more on their way) of 100 "
        "allowed, and this request adds 60"
    )
