"""Retry policy of ApiClient against a real HTTP server on loopback that fails on purpose."""

from __future__ import annotations

import email.utils
import hashlib
import io
import time
from pathlib import Path
from typing import IO

import pytest

from putplace.client.uploader import ApiClient, ApiError, AuthError
from putplace.digest import CHUNK_SIZE
from tests.client.fake_server import KEY, FakeServer, fake_server
from tests.client.helpers import record

RECORD = record()


def client(server: FakeServer, retries: int = 5, sleeps: list[float] | None = None) -> ApiClient:
    sleep = (lambda seconds: None) if sleeps is None else sleeps.append
    return ApiClient(server.url, KEY, retries=retries, sleep=sleep)


def test_503_twice_then_201() -> None:
    sleeps: list[float] = []
    with fake_server(script={"/put_file": [503, 503]}) as server:
        answer = client(server, sleeps=sleeps).put_file(RECORD)
    assert answer["upload_required"] is True
    assert len(server.requests) == 3
    assert len(sleeps) == 2
    assert sleeps[1] > sleeps[0]  # exponential backoff (jitter stays within +-20%)


@pytest.mark.parametrize("status", [400, 404, 409, 413, 422])
def test_client_errors_are_not_retried_and_carry_the_detail(status: int) -> None:
    with fake_server(script={"/put_file": [status]}) as server, pytest.raises(ApiError) as caught:
        client(server).put_file(RECORD)
    assert len(server.requests) == 1
    assert (caught.value.status, caught.value.detail) == (status, f"scripted {status}")


@pytest.mark.parametrize("status", [401, 403])
def test_bad_key_is_not_retried(status: int) -> None:
    with fake_server(script={"/put_file": [status]}) as server, pytest.raises(AuthError):
        client(server).put_file(RECORD)
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504, 507])
def test_every_5xx_is_retried(status: int) -> None:
    with fake_server(script={"/put_file": [status]}) as server:
        client(server).put_file(RECORD)
    assert len(server.requests) == 2


def test_429_honours_retry_after_seconds() -> None:
    sleeps: list[float] = []
    with fake_server(script={"/put_file": [429]}, retry_after="7") as server:
        client(server, sleeps=sleeps).put_file(RECORD)
    assert sleeps == [7.0]


def test_429_honours_retry_after_http_date() -> None:
    sleeps: list[float] = []
    when = email.utils.formatdate(time.time() + 20, usegmt=True)
    with fake_server(script={"/put_file": [429]}, retry_after=when) as server:
        client(server, sleeps=sleeps).put_file(RECORD)
    assert 15 < sleeps[0] <= 21


def test_gives_up_after_the_retry_budget() -> None:
    with (
        fake_server(script={"/put_file": [503] * 10}) as server,
        pytest.raises(ApiError) as caught,
    ):
        client(server, retries=2).put_file(RECORD)
    assert len(server.requests) == 3
    assert caught.value.status == 503
    assert "gave up after 3 tries" in caught.value.detail


def test_connection_refused_is_retried_then_reported() -> None:
    sleeps: list[float] = []
    api = ApiClient("http://127.0.0.1:1", KEY, retries=2, sleep=sleeps.append)
    with pytest.raises(ApiError) as caught:
        api.put_file(RECORD)
    assert len(sleeps) == 2
    assert caught.value.status is None


def test_upload_retry_sends_the_whole_file_again(tmp_path: Path) -> None:
    data = b"x" * 300_000
    (tmp_path / "f").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    opened: list[IO[bytes]] = []

    def opener() -> IO[bytes]:
        opened.append(open(tmp_path / "f", "rb"))  # noqa: SIM115
        return opened[-1]

    with fake_server(script={"/upload_file": [502]}) as server:
        client(server).put_file(record(data, "/d/f"))
        answer = client(server).upload_file(sha, opener, hostname="h", filepath="/d/f")
    assert answer["file_size"] == len(data)
    assert [(u.status, u.content) for u in server.uploads] == [(502, data), (200, data)]
    assert len(opened) == 2
    assert all(handle.closed for handle in opened)  # no file handle left open


class RecordingFile(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[int] = []

    def read(self, size: int | None = -1) -> bytes:
        self.reads.append(-1 if size is None else size)
        return super().read(size)


@pytest.mark.parametrize("legacy", [True, False])
def test_uploads_stream_in_bounded_chunks(legacy: bool) -> None:
    data = bytes(range(256)) * (3 * CHUNK_SIZE // 256)  # 3 MiB
    sha = hashlib.sha256(data).hexdigest()
    source = RecordingFile(data)
    progress: list[int] = []
    with fake_server(legacy=legacy) as server:
        api = client(server)
        api.put_file(record(data))
        if legacy:
            api.upload_file(
                sha, lambda: source, hostname="h", filepath="/f", progress=progress.append
            )
        else:
            api.put_blob(sha, lambda: source, progress.append)
    assert server.uploads[0].content == data
    assert server.uploads[0].status in (200, 201)  # the real server verified it
    assert all(0 < size <= CHUNK_SIZE for size in source.reads)
    assert len(source.reads) >= 3  # never the whole file in one read
    assert sum(progress) == len(data)
