"""The local store's pack files: a group is one durable pack, found through the index;
crashes leave nothing a reader could see half-written; deleted space comes back."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
import tracemalloc
from pathlib import Path

import pytest

from putplace.blobs import packs
from putplace.blobs.base import StorageUnavailableError
from putplace.blobs.local import LocalBlobStore


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pack_files(root: Path) -> list[Path]:
    return sorted((root / packs.PACK_DIR).glob(f"*{packs.PACK_SUFFIX}"))


def members_of(pack: Path) -> list[tuple[str, bytes]]:
    """Parse a pack by its own headers alone, as a recovery tool would."""
    raw = pack.read_bytes()
    found, offset = [], 0
    while offset < len(raw):
        digest, size = packs.MEMBER_HEADER.unpack_from(raw, offset)
        offset += packs.MEMBER_HEADER.size
        found.append((digest.hex(), raw[offset : offset + size]))
        offset += size
    return found


async def read_all(store: LocalBlobStore, name: str) -> bytes:
    return b"".join([chunk async for chunk in store.read(name)])


@pytest.fixture
async def store(tmp_path: Path) -> LocalBlobStore:
    blobs = LocalBlobStore(tmp_path / "blobs", fsync=False)
    await blobs.open()
    yield blobs
    await blobs.close()


async def test_a_group_is_one_pack_made_durable_before_it_is_indexed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        events.append(f"fsync {os.readlink(f'/proc/self/fd/{fd}')}")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store = LocalBlobStore(tmp_path / "blobs", fsync=True)
    await store.open()
    events.clear()  # opening makes its directories durable; the group's own come next
    group = [os.urandom(n) for n in (0, 10, 2000, 70_000)]
    await store.put_many([(sha(d), d) for d in group])
    [pack] = pack_files(store.root)
    assert members_of(pack) == [(sha(d), d) for d in group]
    # The pack's bytes, then its directory entry: two fsyncs for the whole group.
    assert events == [f"fsync {pack}", f"fsync {pack.parent}"]
    # Another process reading the index finds every member, committed.
    with sqlite3.connect(store.root / packs.PACK_DIR / packs.INDEX_NAME) as db:
        assert {r[0].hex() for r in db.execute("SELECT digest FROM packed")} == set(map(sha, group))
    for data in group:
        assert await read_all(store, sha(data)) == data
        assert await store.size(sha(data)) == len(data)
    assert list((store.root / ".tmp").iterdir()) == []
    await store.close()


async def test_ranges_of_packed_blobs_stay_inside_the_blob(store: LocalBlobStore) -> None:
    group = [b"A" * 100, b"B" * 100, b"C" * 100]
    await store.put_many([(sha(d), d) for d in group])
    middle = sha(group[1])
    assert b"".join([c async for c in store.read(middle, 90, 50)]) == b"B" * 10
    assert b"".join([c async for c in store.read(middle, 150)]) == b""
    assert b"".join([c async for c in store.read(middle, 0, 5)]) == b"B" * 5


async def test_a_failed_index_write_leaves_no_pack(
    store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(packs.Packs, "_commit_rows", broken)
    data = b"never indexed"
    with pytest.raises(StorageUnavailableError):
        await store.put_many([(sha(data), data)])
    assert pack_files(store.root) == []
    assert not await store.exists(sha(data))


async def test_a_pack_never_indexed_is_swept_once_old(store: LocalBlobStore) -> None:
    kept = b"indexed"
    await store.put_many([(sha(kept), kept)])
    # What a kill between writing a pack and committing its rows leaves behind.
    orphan = store.root / packs.PACK_DIR / packs.pack_name(packs.new_pack_id())
    orphan.write_bytes(b"half a pack")
    assert await store.cleanup_temporary(3600) == 0  # young: may still be being indexed
    old = time.time() - 7200
    for pack in pack_files(store.root):
        os.utime(pack, (old, old))
    assert await store.cleanup_temporary(3600) == 1
    assert not orphan.exists()
    assert (store.root / packs.PACK_DIR / packs.INDEX_NAME).exists()  # not a pack
    assert await read_all(store, sha(kept)) == kept  # an indexed pack is never swept


async def test_deleting_packed_blobs_gives_the_space_back(store: LocalBlobStore) -> None:
    group = [os.urandom(10_000) for _ in range(4)]
    await store.put_many([(sha(d), d) for d in group])
    [first] = pack_files(store.root)
    assert await store.delete(sha(group[0])) is True
    assert await store.delete(sha(group[0])) is False
    assert pack_files(store.root) == [first]  # 3/4 live: not worth rewriting
    assert await store.delete(sha(group[1])) is True
    assert pack_files(store.root) == [first]  # half live
    assert await store.delete(sha(group[2])) is True
    [second] = pack_files(store.root)  # 1/4 live: the live member was moved
    assert second != first
    assert members_of(second) == [(sha(group[3]), group[3])]
    assert await read_all(store, sha(group[3])) == group[3]
    assert {b.sha256 async for b in store.list()} == {sha(group[3])}
    assert await store.delete(sha(group[3])) is True
    assert pack_files(store.root) == []


async def test_the_same_content_in_two_groups_is_indexed_once(store: LocalBlobStore) -> None:
    data = b"twice"
    await store.put_many([(sha(data), data)])
    await store.put_many([(sha(data), data)])
    assert len(pack_files(store.root)) == 1  # the second group had nothing new
    assert [b.sha256 async for b in store.list()] == [sha(data)]
    assert await store.delete(sha(data)) is True
    assert not await store.exists(sha(data))
    assert pack_files(store.root) == []


async def test_a_store_without_its_group_writer_refuses_groups(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs", fsync=False)
    with pytest.raises(StorageUnavailableError):
        await store.put_many([(sha(b"x"), b"x")])


async def test_listing_pages_through_every_packed_blob_once(store: LocalBlobStore) -> None:
    contents = [i.to_bytes(4, "big") for i in range(2500)]  # more than two pages
    for start in range(0, len(contents), 1000):
        await store.put_many([(sha(d), d) for d in contents[start : start + 1000]])
    listed = [b.sha256 async for b in store.list()]
    assert sorted(listed) == sorted(map(sha, contents))
    assert len(listed) == len(set(listed))


def test_writing_a_large_group_holds_little_beside_its_members(tmp_path: Path) -> None:
    # A bundle may be up to a gigabyte (max_bundle_bytes): writing its pack must not need
    # a second copy of it in memory. The pack still holds every member, in order.
    index = packs.Packs(tmp_path, fsync=True)
    index.open()
    contents = [(sha(data), data) for data in (os.urandom(8192) for _ in range(2048))]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        writer = index.writer()
        writer.append(contents)
        index.commit(writer)
        extra = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
        index.close()
    assert extra < 8 * 2**20  # 16 MiB of members
    assert members_of(*pack_files(tmp_path)) == contents
