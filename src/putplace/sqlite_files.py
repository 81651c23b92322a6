"""SQLite files that several processes open at once: the metadata database and the pack
index, which every server worker opens at start-up."""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: How long a statement waits for another process's lock before "database is locked".
BUSY_TIMEOUT_MS = 30_000


def connect(path: Path) -> sqlite3.Connection:
    """A connection that waits up to :data:`BUSY_TIMEOUT_MS` for other processes' locks,
    in autocommit mode (callers begin their transactions themselves), usable from any
    one thread at a time."""
    return sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )


@contextmanager
def setting_up(path: Path) -> Iterator[None]:
    """Hold ``<path>.setup-lock`` (an ``flock``) while this process sets up the database
    at *path*: its journal mode, tables and migrations.

    Two processes doing that at once can each hold SQLite's shared lock and want its
    exclusive one. SQLite then fails one of them at once with "database is locked"
    instead of waiting out the busy timeout, since waiting would never end. Two workers
    on a fresh data directory failed to start that way; four processes opening a fresh
    pack index at the same moment failed in 18 rounds of 50.
    """
    lock = os.open(f"{path}.setup-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock)  # closing the descriptor releases the lock
