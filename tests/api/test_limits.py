"""Limits and failures: JSON body size, rate limit, stalled and abandoned uploads, full disk."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from putplace.blobs.fsio import FileAppender
from tests.conftest import make_settings, seed_keys
from tests.support.payloads import metadata, put, upload
from tests.support.servers import running_server


@pytest.fixture
def limited(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    settings = make_settings(
        request, "sqlite-local", tmp_path,
        max_json_bytes=4096, rate_limit_per_second=1, rate_limit_burst=20,
        upload_idle_timeout_seconds=0.5,
    )  # fmt: skip
    keys = asyncio.run(seed_keys(settings))
    with running_server(settings) as url:
        yield url, keys


async def test_oversized_json_is_413_and_stores_nothing(limited: tuple[str, Any]) -> None:
    url, keys = limited
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": keys.admin}) as client:
        huge = metadata(b"x", ip_address="1" * 5000)
        assert (await client.post("/put_file", json=huge)).status_code == 413
        assert (await client.post("/put_files", json={"files": [huge]})).status_code == 413
        body = b'{"name": "' + b"n" * 5000 + b'"}'

        async def chunked() -> Any:  # no Content-Length: caught while streaming
            for start in range(0, len(body), 1000):
                yield body[start : start + 1000]

        streamed = await client.post(
            "/api_keys", content=chunked(), headers={"Content-Type": "application/json"}
        )
        assert streamed.status_code == 413
        assert (await client.get("/files")).json() == []
        assert len((await client.get("/api_keys")).json()) == 4


async def test_rate_limit_answers_429_with_retry_after(limited: tuple[str, Any]) -> None:
    url, keys = limited
    async with httpx.AsyncClient(base_url=url) as client:
        codes = [
            (await client.get("/files", headers={"X-API-Key": keys.read})).status_code
            for _ in range(25)
        ]
        assert codes[:20] == [200] * 20
        assert 429 in codes[20:]
        limited_answer = await client.get("/files", headers={"X-API-Key": keys.read})
        assert limited_answer.status_code == 429
        assert int(limited_answer.headers["retry-after"]) >= 1
        other = await client.get("/files", headers={"X-API-Key": keys.write})
        assert other.status_code == 200  # the limit is per key


async def _raw_put(url: str, key: str, sha256: str, declared: int, sent: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"PUT /blobs/{sha256} HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {declared}\r\n\r\n".encode()
        + sent
    )
    await writer.drain()
    return await asyncio.wait_for(reader.read(4096), 10)


async def test_stalled_upload_is_408_and_abandoned_one_stores_nothing(
    limited: tuple[str, Any],
) -> None:
    url, keys = limited
    content = b"z" * 100_000
    body = metadata(content)
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": keys.write}) as client:
        await put(client, body)
        answer = await _raw_put(url, keys.write, body["sha256"], len(content), content[:50_000])
        assert b" 408 " in answer.split(b"\r\n")[0]
        # A client that disconnects mid-upload.
        host, port = url.removeprefix("http://").split(":")
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"PUT /blobs/{body['sha256']} HTTP/1.1\r\nHost: x\r\nX-API-Key: {keys.write}\r\n"
            f"Content-Length: {len(content)}\r\n\r\n".encode()
            + content[:30_000]
        )
        await writer.drain()
        writer.close()
        await asyncio.sleep(0.3)
        assert (await client.get(f"/download/{body['sha256']}")).status_code == 404
        assert (await client.get("/")).status_code == 200
        done = await client.put(f"/blobs/{body['sha256']}", content=content)
        assert done.status_code == 201


async def test_a_stalled_json_body_is_408_within_the_idle_timeout_and_stores_nothing(
    limited: tuple[str, Any],
) -> None:
    """A record sent in part, then nothing: answered 408 once the body has been idle for
    the timeout (0.5 s here; stalls are checked every quarter of it), and not stored.
    Requests beside it are answered meanwhile."""
    url, keys = limited
    record = json.dumps(metadata(b"never finished")).encode()
    host, port = url.removeprefix("http://").split(":")
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": keys.write}) as client:
        for _ in range(2):  # the second after a quiet second: the watch starts again
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                f"POST /put_file HTTP/1.1\r\nHost: x\r\nX-API-Key: {keys.write}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(record)}\r\n\r\n".encode()
                + record[:40]
            )
            await writer.drain()
            started = time.monotonic()
            assert (await client.get("/files")).json() == []  # served while that one waits
            answer = await asyncio.wait_for(reader.read(4096), 10)
            waited = time.monotonic() - started
            assert b" 408 " in answer.split(b"\r\n")[0]
            assert 0.45 < waited < 2.0
            assert (await client.get("/files")).json() == []
            writer.close()
            await asyncio.sleep(1)


@pytest.mark.parametrize("stack", ["sqlite-local", "mongodb-local"], indirect=True)
@pytest.mark.parametrize(
    ("error", "status", "retry_after"),
    [(errno.ENOSPC, 507, None), (errno.EIO, 503, "5")],
    ids=["disk-full-507", "io-error-503"],
)
async def test_storage_failure_answers_clearly_stores_nothing_and_serving_goes_on(
    api: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    error: int,
    status: int,
    retry_after: str | None,
) -> None:
    content = b"q" * 200_000
    body = metadata(content)
    await put(api, body)

    def failing_write(self: FileAppender, chunks: object) -> int:
        raise OSError(error, os.strerror(error))  # as the kernel reports a full or bad disk

    with monkeypatch.context() as patch:
        patch.setattr(FileAppender, "write", failing_write)
        response = await upload(api, body, content)
    assert response.status_code == status
    assert "blob store" in response.json()["detail"]
    assert response.headers.get("retry-after") == retry_after
    assert (await api.get(f"/download/{body['sha256']}")).status_code == 404
    assert (await upload(api, body, content)).status_code == 200
