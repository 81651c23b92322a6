"""Local-disk specifics of streamed blobs: writeback during the upload, short writes.
(Groups of small contents go into pack files: tests/blobs/test_packs.py.)"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from putplace.blobs import local
from putplace.service.ingest import store_verified


async def chunks_of(data: bytes, step: int) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), step):
        yield data[offset : offset + step]


async def test_streamed_blob_with_fsync_and_writeback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[tuple[int, int]] = []
    real = local.start_writeback
    monkeypatch.setattr(
        local, "start_writeback", lambda fd, o, n: (started.append((o, n)), real(fd, o, n))
    )
    store = local.LocalBlobStore(tmp_path / "blobs", fsync=True)
    await store.open()
    data = os.urandom(3 * local.WRITEBACK_STEP + 12345)
    name = hashlib.sha256(data).hexdigest()
    assert await store_verified(store, name, chunks_of(data, 256 * 1024)) == len(data)
    assert (tmp_path / "blobs" / name[:2] / name).read_bytes() == data
    # Writeback was started as the bytes came, range after range, without gaps.
    assert len(started) == 3
    assert [offset for offset, _ in started] == [0, *(sum(started[i]) for i in range(2))]


async def test_short_writes_are_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.writev
    calls = 0

    def stingy(fd: int, buffers: list[memoryview]) -> int:  # the kernel may write less
        nonlocal calls
        calls += 1
        if calls > 1000:  # 300 are enough; a writer that never advances fails, not fills a disk
            raise AssertionError("the writer does not resume after a short write")
        return real(fd, [buffers[0][:1000]])

    monkeypatch.setattr(local.os, "writev", stingy)
    store = local.LocalBlobStore(tmp_path / "blobs", fsync=False)
    await store.open()
    data = os.urandom(300_000)
    name = hashlib.sha256(data).hexdigest()
    assert await store_verified(store, name, chunks_of(data, 70_000)) == len(data)
    assert (tmp_path / "blobs" / name[:2] / name).read_bytes() == data
