"""Streaming SHA-256 and detection of files that change under the client."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from putplace.client.hashing import FileChangedError, hash_entry, in_page_cache, read_whole
from putplace.client.scanner import FileEntry
from putplace.digest import CHUNK_SIZE


def entry(path: Path) -> FileEntry:
    st = os.lstat(path)
    return FileEntry(str(path), st, os.readlink(path) if path.is_symlink() else None)


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, 3 * CHUNK_SIZE + 17])
def test_streamed_hash_equals_hashlib(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    assert hash_entry(entry(tmp_path / "f")) == hashlib.sha256(data).hexdigest()


class GrowDuringRead(threading.Event):
    """Stands in for the stop event, which is checked after every chunk: appends once."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def is_set(self) -> bool:
        if self.path.exists():
            with open(self.path, "ab") as handle:
                handle.write(b"appended while hashing")
            self.path = self.path.with_name("done")
        return False


def test_change_during_read_is_detected(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * (2 * CHUNK_SIZE))
    scanned = entry(tmp_path / "f")
    with pytest.raises(FileChangedError):
        hash_entry(scanned, GrowDuringRead(tmp_path / "f"))


Reader = Callable[[FileEntry], object]
#: Both ways a file is read: streamed for its hash, or whole for a bundle.
READERS = pytest.mark.parametrize("read", [hash_entry, read_whole], ids=["hash", "whole"])


@READERS
def test_file_replaced_by_another_file_is_not_read_as_it(tmp_path: Path, read: Reader) -> None:
    (tmp_path / "f").write_bytes(b"original")
    scanned = entry(tmp_path / "f")
    (tmp_path / "other").write_bytes(b"somebody")  # same size, another inode
    os.replace(tmp_path / "other", tmp_path / "f")
    with pytest.raises(FileChangedError, match="replaced"):
        read(scanned)


@READERS
def test_change_between_scan_and_hash_is_detected(tmp_path: Path, read: Reader) -> None:
    (tmp_path / "f").write_bytes(b"before")
    scanned = entry(tmp_path / "f")
    (tmp_path / "f").write_bytes(b"after, longer")
    with pytest.raises(FileChangedError):
        read(scanned)


@READERS
def test_file_replaced_by_a_symlink_is_not_followed(tmp_path: Path, read: Reader) -> None:
    (tmp_path / "secret").write_bytes(b"not yours")
    (tmp_path / "f").write_bytes(b"original")
    scanned = entry(tmp_path / "f")
    (tmp_path / "f").unlink()
    (tmp_path / "f").symlink_to(tmp_path / "secret")
    with pytest.raises(FileChangedError):
        read(scanned)


@READERS
def test_file_replaced_by_a_fifo_does_not_hang(tmp_path: Path, read: Reader) -> None:
    (tmp_path / "f").write_bytes(b"original")
    scanned = entry(tmp_path / "f")
    (tmp_path / "f").unlink()
    os.mkfifo(tmp_path / "f")
    with pytest.raises(FileChangedError):
        read(scanned)


def test_symlink_hash_is_of_its_target_path_not_the_file(tmp_path: Path) -> None:
    (tmp_path / "target").write_bytes(b"content")
    (tmp_path / "l").symlink_to("target")
    assert hash_entry(entry(tmp_path / "l")) == hashlib.sha256(b"target").hexdigest()


@pytest.mark.skipif(not hasattr(os, "RWF_NOWAIT"), reason="Linux only: preadv2's RWF_NOWAIT")
def test_the_page_cache_is_asked_whether_it_holds_a_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 5000)
    entry = FileEntry(str(path), os.lstat(path))
    read_whole(entry)
    assert in_page_cache(entry) is True
    fd = os.open(path, os.O_RDONLY)
    try:  # written back, then dropped: a read would now wait for the disk
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    assert in_page_cache(entry) is False
    read_whole(entry)
    assert in_page_cache(entry) is True


def test_a_file_gone_counts_as_cached_so_its_error_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    entry = FileEntry(str(path), os.lstat(path))
    path.unlink()
    assert in_page_cache(entry) in (True, None)
