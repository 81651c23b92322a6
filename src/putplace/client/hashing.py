"""Streaming SHA-256 of files, with detection of files that change while being read."""

from __future__ import annotations

import hashlib
import os

from putplace.client.scanner import Entry
from putplace.digest import CHUNK_SIZE


class FileChangedError(Exception):
    """The file's size or times changed while it was read: the hash would be wrong."""


def hash_entry(entry: Entry) -> str:
    """Hex SHA-256 of a file's bytes, or of a symlink's target path."""
    if entry.is_symlink:
        return hashlib.sha256(os.fsencode(os.readlink(entry.path))).hexdigest()
    hasher = hashlib.sha256()
    with open(entry.path, "rb", buffering=0) as handle:
        buffer = bytearray(CHUNK_SIZE)
        view = memoryview(buffer)
        while count := handle.readinto(buffer):
            hasher.update(view[:count])
        after = os.fstat(handle.fileno())
    before = entry.stat
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise FileChangedError("changed while being read")
    return hasher.hexdigest()
