"""Local-disk specifics: the durability barrier really runs (fsync on), with ``syncfs`` and
with the per-file fallback used where ``syncfs`` does not exist."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from putplace.blobs import local


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
