"""SQLite files that several processes open at once: the metadata database and the pack
index, which every server worker opens at start-up; how both write many rows; and how
often a writer checkpoints its WAL (:class:`CheckpointInterval`)."""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from putplace.sequences import chunked

#: How long a statement waits for another process's lock before "database is locked".
BUSY_TIMEOUT_MS = 30_000


def _bind_bytes_and_none_directly() -> None:
    """Bind ``bytes`` and ``None`` parameters without the adaptation protocol's lookups.

    Python's sqlite3 binds int, float and str as they are, and sends every other
    parameter (a content's 32-byte key, a NULL) through its adapters: on Python 3.11 and
    earlier that looks up ``__adapt__`` on a class, which raises and clears an
    AttributeError each time, about 2,000 instructions (callgrind: 88,000 such errors, 2%
    of the server's instructions, in a first ingest of 10,000 files). A registered
    adapter is found first; these two give back what they get, in C. Python 3.12 looks
    such names up without raising, and there the adapters cost more than they save
    (rows of a blob and two NULLs: 1,330 -> 960 ns on 3.11, 1,070 -> 1,300 on 3.12)."""
    if sys.version_info < (3, 12):
        sqlite3.register_adapter(bytes, bytes)
        sqlite3.register_adapter(type(None), {}.get)  # {}.get(None) is None


_bind_bytes_and_none_directly()


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
    lock = hold_lock(f"{path}.setup-lock", wait=True)
    try:
        yield
    finally:
        if lock is not None:
            os.close(lock)  # closing the descriptor releases the lock


def hold_lock(path: str, *, wait: bool) -> int | None:
    """A descriptor holding an exclusive ``flock`` on *path* (created if need be); closing
    it lets go. Without *wait*, ``BlockingIOError`` at once when another holds it. None
    where there is no ``flock`` (not POSIX): the client runs there too, the server not."""
    try:
        import fcntl
    except ImportError:
        return None
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


def marks(count: int) -> str:
    """``?, ?, ...``: *count* parameter marks, for an ``IN (...)`` list or a row."""
    return ", ".join("?" * count)


def values(width: int, rows: int) -> str:
    """``VALUES (?, ...), ...`` for *rows* rows of *width* columns."""
    one = f"({marks(width)})"
    return f"VALUES {', '.join([one] * rows)}"


def json_row(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> Any:
    """The JSON value that the one-row aggregate query *sql* (``json_group_array`` or
    ``json_group_object``) returns, decoded: many values for one step (see
    :func:`execute_rows`). Measured in the client, 100,000 lookups in rows of 500: 1.0 s
    fetched row by row while a walk ran beside them, 0.23 s as one JSON row each. Decoded
    by orjson: half the time of the standard library's (110 against 225 us for 500
    rows)."""
    return orjson.loads(json_text(conn, sql, params))


def json_text(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> str:
    """The JSON text that the one-row aggregate query *sql* returns, undecoded (for a
    caller that validates it straight into models)."""
    (value,) = conn.execute(sql, params).fetchone()
    return str(value)


def execute_rows(
    conn: sqlite3.Connection,
    statement: Callable[[int], str],
    rows: Sequence[Sequence[Any]],
    per_statement: int,
) -> None:
    """Run a multi-row *statement* (its text for a number of rows) over *rows*,
    *per_statement* at a time, with no rows read back.

    Python's sqlite3 lets go of the GIL at every step: each row of an ``executemany``,
    each row a ``RETURNING`` clause or a query hands back. While the event loop runs, the
    thread then waits to take the GIL back at every row: measured in process on a first
    ingest, the pack index's rows written with ``executemany`` took 10.7 us of CPU each,
    6.8 us in statements of 200 rows.
    """
    for chunk in chunked(rows, per_statement):
        conn.execute(statement(len(chunk)), [value for row in chunk for value in row])


class CheckpointInterval:
    """Keeps a connection's ``wal_autocheckpoint`` at the database's size in pages, within
    ``[lowest, highest]``: set by :meth:`apply`, then re-read after every *every* groups
    written (:meth:`after_commit`).

    A checkpoint copies each page the WAL holds into the database once, so it never copies
    more pages than the database has: once the WAL holds more frames than that, it holds
    some pages twice. A small database then gains little from a long WAL (a checkpoint
    fewer now and then) and pays for it: a first ingest into an empty store wrote its
    whole WAL into memory the page cache took for the first time, and each commit into a
    WAL that grew cost more than the last. (Writing 206 MB of zeros into such memory took
    9-16 us a page on the development machine, into memory a deleted file had just freed
    2 us.) A large database keeps the long interval, where each checkpoint rewrites fewer
    of the pages its random-keyed indexes dirty again.
    """

    def __init__(self, lowest: int, highest: int, *, every: int = 16) -> None:
        if not 0 < lowest <= highest:
            raise ValueError(f"checkpoint interval bounds out of order: {lowest}, {highest}")
        self.lowest = lowest
        self.highest = highest
        self._every = every
        self._written = 0
        self.pages: int | None = None

    def apply(self, conn: sqlite3.Connection) -> int:
        """Set *conn*'s interval for the database's size now; the interval set."""
        (size,) = conn.execute("PRAGMA page_count").fetchone()
        pages = min(self.highest, max(self.lowest, int(size)))
        if pages != self.pages:
            conn.execute(f"PRAGMA wal_autocheckpoint = {pages}")
            self.pages = pages
        return pages

    def after_commit(self, conn: sqlite3.Connection) -> None:
        """Count a group written; re-read the size every *every* of them (a pragma costs
        nothing against a commit, but a database grows slowly between two). Never raises:
        the group is committed, and its writers must not hear that it failed."""
        self._written += 1
        if self._written >= self._every:
            self._written = 0
            try:
                self.apply(conn)
            except Exception:  # the interval stays as it was; tried again *every* later
                self.pages = None
