"""Local-disk specifics of writing content: direct writes of whole blocks, the page-cache
fallback with writeback as it goes, short writes. (Groups of small contents go into pack
files: tests/blobs/test_packs.py.)"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import random
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future
from pathlib import Path

import pytest

from putplace.blobs import fsio, local
from putplace.blobs.base import BlobError
from putplace.blobs.fsio import DIRECT_ALIGN, DIRECT_BUFFER, WRITEBACK_STEP, FileAppender
from putplace.service.ingest import store_verified


async def chunks_of(data: bytes, step: int) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), step):
        yield data[offset : offset + step]


def direct_possible(directory: Path) -> bool:
    """Does this file system take O_DIRECT (tmpfs does not)?"""
    probe = directory / "probe"
    probe.touch()
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_DIRECT))
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return False
    finally:
        probe.unlink()
    return True


def needs_direct(directory: Path) -> None:
    if not direct_possible(directory):
        pytest.fail(f"{directory} takes no O_DIRECT: put the test directory on a disk")


def no_direct(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every O_DIRECT open fail as on tmpfs."""
    real = os.open

    def refusing(path: object, flags: int, *args: object) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(fsio.os, "open", refusing)


def append(path: Path, offset: int, pieces: list[bytes], *, durable: bool) -> FileAppender:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        appender = FileAppender(path, fd, offset, durable=durable)
        for start in range(0, len(pieces), 3):
            appender.write(pieces[start : start + 3])
        appender.close()
        os.fsync(fd)
    finally:
        os.close(fd)
    return appender


def random_pieces(rng: random.Random, total: int) -> list[bytes]:
    pieces = []
    while total > 0:
        size = min(total, rng.choice([1, 40, 4095, 4096, 4097, 70_000, DIRECT_BUFFER + 3]))
        pieces.append(rng.randbytes(size))
        total -= size
    return pieces


@pytest.mark.parametrize("durable", [True, False])
@pytest.mark.parametrize("offset", [0, 1, 4095, 4096, 3 * 4096 + 17])
def test_appended_bytes_land_exactly_after_what_was_there(
    tmp_path: Path, offset: int, durable: bool
) -> None:
    rng = random.Random(offset)
    before = rng.randbytes(offset + 5000)  # bytes past the offset are overwritten
    path = tmp_path / "file"
    path.write_bytes(before)
    pieces = random_pieces(rng, 3 * DIRECT_BUFFER + 12345)
    appender = append(path, offset, pieces, durable=durable)
    assert path.read_bytes() == before[:offset] + b"".join(pieces)
    assert appender.position == offset + sum(map(len, pieces))
    # A durable writer bypasses the page cache wherever the file system allows it.
    assert (appender.direct_bytes > 0) == (durable and direct_possible(tmp_path))


def test_without_o_direct_every_byte_goes_cached_with_writeback_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_direct(monkeypatch)
    started: list[tuple[int, int]] = []
    real = fsio.start_writeback
    monkeypatch.setattr(
        fsio, "start_writeback", lambda fd, o, n: (started.append((o, n)), real(fd, o, n))
    )
    data = os.urandom(3 * WRITEBACK_STEP + 12345)
    path = tmp_path / "file"
    appender = append(
        path, 0, [data[i : i + 256 * 1024] for i in range(0, len(data), 256 * 1024)], durable=True
    )
    assert path.read_bytes() == data
    assert not appender.direct_bytes > 0
    # Writeback was started as the bytes came, range after range, without gaps.
    assert len(started) == 3
    assert [offset for offset, _ in started] == [0, *(sum(started[i]) for i in range(2))]


def test_a_direct_write_refused_midway_goes_on_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    needs_direct(tmp_path)
    real = os.pwrite
    calls = 0

    def refusing_second(fd: int, data: memoryview, offset: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(fsio.os, "pwrite", refusing_second)
    data = os.urandom(4 * DIRECT_BUFFER + 100)
    path = tmp_path / "file"
    appender = append(
        path, 0, [data[i : i + 65536] for i in range(0, len(data), 65536)], durable=True
    )
    assert path.read_bytes() == data
    assert calls == 2  # the first direct write went through, none after the refusal
    assert not appender.direct


def test_short_writes_are_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.pwritev
    calls = 0

    def stingy(fd: int, buffers: list[memoryview], offset: int) -> int:  # the kernel may
        nonlocal calls  # write less
        calls += 1
        if calls > 1000:  # 300 are enough; a writer that never advances fails, not fills a disk
            raise AssertionError("the writer does not resume after a short write")
        return real(fd, [buffers[0][:1000]], offset)

    monkeypatch.setattr(fsio.os, "pwritev", stingy)
    data = os.urandom(300_000)
    path = tmp_path / "file"
    append(path, 0, [data[i : i + 70_000] for i in range(0, len(data), 70_000)], durable=False)
    assert path.read_bytes() == data


def test_an_abandoned_appender_writes_nothing_more(tmp_path: Path) -> None:
    path = tmp_path / "file"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        appender = FileAppender(path, fd, 0, durable=True)
        appender.write([b"x" * (DIRECT_BUFFER // 2)])
        appender.close(keep=False)
    finally:
        os.close(fd)
    assert path.stat().st_size == 0


def _mapping_flags(address: int) -> set[str]:
    """The kernel's VmFlags of the mapping that holds *address* (``/proc/self/smaps``)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if "-" in line.split()[0] and not line.startswith("VmFlags"):
            low, high = (int(part, 16) for part in line.split()[0].split("-"))
            inside = low <= address < high
        elif inside and line.startswith("VmFlags:"):
            return set(line.split()[1:])
    raise AssertionError("the buffer's mapping is not in /proc/self/smaps")


@pytest.mark.skipif(
    not Path("/sys/kernel/mm/transparent_hugepage").exists(),
    reason="Linux with transparent huge pages only",
)
def test_direct_write_buffers_are_private_memory_advised_to_be_huge_pages() -> None:
    # Private: a buffer made before a fork is not written by parent and child alike. On
    # a 2 MiB boundary and advised: the kernel can back it with a huge page, which the
    # disk took 2 GiB from at about 450 MiB/s against 225-422 from scattered pages (see
    # fsio.DirectBuffer).
    buffer = fsio.DirectBuffer()
    try:
        address = ctypes.addressof(ctypes.c_char.from_buffer(buffer.view))
        flags = _mapping_flags(address)
        assert len(buffer.view) == DIRECT_BUFFER
    finally:
        buffer.close()
    assert address % fsio.HUGE_PAGE == 0
    assert "sh" not in flags
    assert "hg" in flags


def test_a_durable_writer_flushes_the_disk_as_it_goes_and_close_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Direct writes may sit in the disk's cache until a flush: flushing only at the end
    left each 512 MiB request of a large upload idle for most of a second. Flushes start
    as the bytes go, and close waits for the last, as the caller closes the file next."""
    needs_direct(tmp_path)
    monkeypatch.setattr(fsio, "FLUSH_STEP", 2 * DIRECT_BUFFER)
    flushes: list[str] = []
    started = threading.Event()
    real = os.fdatasync

    def slow_flush(fd: int) -> None:
        flushes.append("started")
        started.set()
        time.sleep(0.2)
        real(fd)
        flushes.append("done")

    monkeypatch.setattr(fsio.os, "fdatasync", slow_flush)
    data = os.urandom(9 * DIRECT_BUFFER)
    path = tmp_path / "file"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        appender = FileAppender(path, fd, 0, durable=True)
        appender.write([data[: 3 * DIRECT_BUFFER]])
        assert started.wait(5)  # under way while more bytes arrive, before close
        appender.write([data[3 * DIRECT_BUFFER :]])
        appender.close()
        assert flushes[-1:] == ["done"]
        assert flushes.count("started") == flushes.count("done")
        os.fsync(fd)
    finally:
        os.close(fd)
    assert path.read_bytes() == data


@pytest.mark.timeout(30)
def test_a_flush_still_queued_is_dropped_at_close_not_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With many large uploads at once the helper threads are all busy: an upload ending
    must not wait its turn for a flush its own fsync is about to do."""
    needs_direct(tmp_path)
    monkeypatch.setattr(fsio, "FLUSH_STEP", DIRECT_BUFFER)
    queued: list[Future[None]] = []
    monkeypatch.setattr(fsio, "_start_flush", lambda fd: queued.append(Future()) or queued[-1])
    data = os.urandom(2 * DIRECT_BUFFER)
    path = tmp_path / "file"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        appender = FileAppender(path, fd, 0, durable=True)
        appender.write([data])
        appender.close()  # the queued flush never runs: waiting for it would hang
        os.fsync(fd)
    finally:
        os.close(fd)
    assert len(queued) == 1
    assert queued[0].cancelled()
    assert path.read_bytes() == data


def test_a_failed_flush_fails_the_write_even_if_the_last_fsync_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linux reports a write error to one fsync of an open file, not to each: if the early
    flush took it, the caller's fsync would pass and bytes never written count as
    stored."""
    needs_direct(tmp_path)
    monkeypatch.setattr(fsio, "FLUSH_STEP", DIRECT_BUFFER)
    ran = threading.Event()

    def failing(fd: int) -> None:
        ran.set()
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fsio.os, "fdatasync", failing)
    path = tmp_path / "file"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        appender = FileAppender(path, fd, 0, durable=True)
        appender.write([os.urandom(DIRECT_BUFFER)])  # the flush starts, and fails
        assert ran.wait(5)
        with pytest.raises(OSError, match="Input/output error"):
            appender.close()
    finally:
        os.close(fd)


async def test_a_streamed_blob_whose_flush_failed_is_not_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    needs_direct(tmp_path)
    monkeypatch.setattr(fsio, "FLUSH_STEP", DIRECT_BUFFER)
    store = local.LocalBlobStore(tmp_path / "blobs", fsync=True)
    await store.open()
    monkeypatch.setattr(
        fsio.os, "fdatasync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "EIO"))
    )
    data = os.urandom(3 * DIRECT_BUFFER)
    name = hashlib.sha256(data).hexdigest()
    with pytest.raises(BlobError):
        await store_verified(store, name, chunks_of(data, 256 * 1024))
    assert not await store.exists(name)
    await store.close()


@pytest.mark.parametrize("fsync", [True, False])
async def test_streamed_blob_is_whole_under_its_name(tmp_path: Path, fsync: bool) -> None:
    store = local.LocalBlobStore(tmp_path / "blobs", fsync=fsync)
    await store.open()
    data = os.urandom(3 * DIRECT_BUFFER + DIRECT_ALIGN + 7)
    name = hashlib.sha256(data).hexdigest()
    assert await store_verified(store, name, chunks_of(data, 256 * 1024 + 3)) == len(data)
    assert (tmp_path / "blobs" / name[:2] / name).read_bytes() == data
    assert list((tmp_path / "blobs" / local.TEMP_DIR).iterdir()) == []
    await store.close()


async def test_every_shard_is_made_durable_before_any_upload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A content's file is made durable in its shard; the shard's own entry in the root
    must be durable before anything in it is acknowledged. Made when the store opens,
    no upload creates a shard (two making one at once could both skip that step)."""
    synced: list[Path] = []
    real = fsio.fsync_dir

    def recording(path: Path) -> None:
        synced.append(path)
        real(path)

    monkeypatch.setattr(local, "fsync_dir", recording)
    root = tmp_path / "blobs"
    store = local.LocalBlobStore(root, fsync=True)
    await store.open()
    assert sorted(p.name for p in root.iterdir() if len(p.name) == 2) == [
        f"{shard:02x}" for shard in range(256)
    ]
    assert root in synced
    content = b"x" * 20_000
    name = hashlib.sha256(content).hexdigest()
    synced.clear()
    await store_verified(store, name, chunks_of(content, 4096))
    assert synced == [root / name[:2]]  # the file's entry in its shard, nothing more
    await store.close()
