"""Local-disk specifics: the durability barrier really runs (fsync on), with ``syncfs`` and
with the per-file fallback used where ``syncfs`` does not exist."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from putplace.blobs import local
from putplace.service.ingest import store_verified


@pytest.mark.parametrize("with_syncfs", [True, False])
async def test_group_write_with_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_syncfs: bool
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(local.os, "fsync", counting_fsync)
    if not with_syncfs:
        monkeypatch.setattr(local, "_SYNCFS", None)
    store = local.LocalBlobStore(tmp_path / "blobs", fsync=True)
    await store.open()
    group = [os.urandom(n) for n in (10, 2000, 70_000)]
    await store.put_many([(hashlib.sha256(d).hexdigest(), d) for d in group])
    for data in group:
        name = hashlib.sha256(data).hexdigest()
        assert (tmp_path / "blobs" / name[:2] / name).read_bytes() == data
    assert list((tmp_path / "blobs" / ".tmp").iterdir()) == []
    if with_syncfs:
        assert local._SYNCFS is not None
        assert synced == []  # two syncfs calls did it all
    else:  # every temporary file, then every directory renamed into
        assert sum(".tmp/" in path for path in synced) == len(group)
        assert len([p for p in synced if ".tmp" not in p]) == len(
            {hashlib.sha256(d).hexdigest()[:2] for d in group}
        )


async def chunks_of(data: bytes, step: int) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), step):
        yield data[offset : offset + step]


async def test_streamed_blob_with_fsync_and_writeback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[tuple[int, int]] = []
    real = local._start_writeback
    monkeypatch.setattr(
        local, "_start_writeback", lambda fd, o, n: (started.append((o, n)), real(fd, o, n))
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
