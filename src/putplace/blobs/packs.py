"""Pack files: many small blobs in one file, found through an index beside them.

A file per small content costs the local store a create, a rename and their journal work
each (measured on a 30,000-file first ingest: 6.5 s of server CPU with a file per blob,
2.6 s with one pack per group). A group stored with :meth:`LocalBlobStore.group` (or
``put_many``) is therefore written as one pack file, ``packs/<id>.pack``: each member is
a 40-byte header (its SHA-256 and length, so a pack describes itself) followed by its
bytes. The index,
``packs/index.sqlite3``, maps a hash to ``(pack, offset, size)``.

Durability order: the pack is written and fsynced (and its directory entry), then the
index rows are committed. A crash between the two leaves a pack no row points to, which
:meth:`Packs.sweep` removes once it is old; a reader or a crash never sees an index row
whose bytes are not durable.

Space: deleting a packed blob drops its row; when no row points to a pack any more the
pack is deleted, and when less than half of a pack's bytes are still pointed to, the live
members are copied to a new pack (written durably first, then the rows are moved in one
transaction, then the old pack is deleted), so a pack never holds more dead bytes than
live ones for long.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from putplace.blobs.base import Contents
from putplace.blobs.fsio import DIRECT_BUFFER, FileAppender, fsync_dir
from putplace.sequences import chunked
from putplace.sqlite_files import connect, execute_rows, marks, setting_up, values

PACK_DIR = "packs"
INDEX_NAME = "index.sqlite3"
PACK_SUFFIX = ".pack"
#: Each member's header: its SHA-256 (32 bytes) and length (8 bytes, big-endian).
MEMBER_HEADER = struct.Struct(">32sQ")
#: A pack whose live bytes fall below this fraction of its size is rewritten.
COMPACT_BELOW = 0.5
#: Page cache of the index, KiB: its pages are touched at random by every group.
INDEX_CACHE_KIB = 16 * 1024
#: Checkpoint the index's WAL every this many pages (~80 MB), not SQLite's default 1,000:
#: once the index outgrows its cache every insert dirties a page of its own, and each
#: checkpoint writes them all again. Measured with 1,000,000 rows indexed, 75,000 more in
#: groups of 750: 24,000 -> 40,500 rows/s, 822 -> 648 MB written.
INDEX_CHECKPOINT_PAGES = 20_000

#: Rows are kept small because each group inserts its hashes at random places in the
#: index, and every page touched is written to the WAL at commit: 32-byte digests (not 64
#: hex digits) and integer pack ids that grow with time, so that ``packed_by_pack`` is
#: appended to, not written all over (with text keys the index cost 0.85 page writes per
#: blob on a 30,000-file ingest, counted with strace). A pack's time is its file's.
SCHEMA = """
CREATE TABLE IF NOT EXISTS packed (
    digest BLOB PRIMARY KEY,
    pack INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    size INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS packed_by_pack ON packed (pack);
"""

Row = tuple[bytes, int, int, int]  # digest, pack, offset, size
#: Index rows per statement (4 variables each; SQLite allows 32,766).
_INSERT_ROWS = 500


def _joined(parts: Sequence[bytes | memoryview], size: int) -> Iterator[bytes]:
    """*parts* joined into runs of about *size* bytes (a part larger than that alone).

    The appender's work per piece, for two pieces per member, cost more than copying the
    group once (1.8 against 3.2 ms of CPU for a pack of 750 members of 1-8 KiB); in runs,
    the copy never holds more than *size* bytes beside the members."""
    run: list[bytes | memoryview] = []
    length = 0
    for part in parts:
        if run and length + len(part) > size:
            yield b"".join(run)
            run, length = [], 0
        run.append(part)
        length += len(part)
    if run:
        yield b"".join(run)


@functools.cache
def _insert_rows_sql(rows: int) -> str:
    return f"INSERT OR IGNORE INTO packed {values(4, rows)}"


def new_pack_id() -> int:
    """A pack id that grows with time (nanoseconds), unique in practice; creating its file
    with O_EXCL catches the rest."""
    return time.time_ns()


def pack_name(pack: int) -> str:
    return f"{pack:016x}{PACK_SUFFIX}"


def pack_id(name: str) -> int | None:
    """The id in a pack file's name, or None for any other file."""
    stem = name.removesuffix(PACK_SUFFIX)
    if stem == name or len(stem) != 16:
        return None
    try:
        return int(stem, 16)
    except ValueError:
        return None


@dataclass(frozen=True)
class Location:
    """Where a packed blob's bytes are: *size* bytes at *offset* of pack *pack*."""

    pack: int
    offset: int
    size: int


class Packs:
    """The pack files and their index under ``<root>/packs``. Thread-safe and blocking:
    the store calls it from worker threads. Several processes (uvicorn workers) may share
    one directory; SQLite serialises their index writes."""

    def __init__(self, root: Path, *, fsync: bool) -> None:
        self.directory = root / PACK_DIR
        self.fsync = fsync
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    # -- set-up ---------------------------------------------------------------------
    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / INDEX_NAME
        with setting_up(path):
            db = connect(path)
            try:
                db.execute("PRAGMA journal_mode = WAL")
                db.execute(f"PRAGMA synchronous = {'FULL' if self.fsync else 'OFF'}")
                db.execute(f"PRAGMA cache_size = -{INDEX_CACHE_KIB}")
                db.execute(f"PRAGMA wal_autocheckpoint = {INDEX_CHECKPOINT_PAGES}")
                db.executescript(SCHEMA)
            except BaseException:
                db.close()
                raise
        self._db = db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    @contextmanager
    def _index(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._db is None:
                raise sqlite3.ProgrammingError("the pack index is not open")
            yield self._db

    def path_of(self, pack: int) -> Path:
        return self.directory / pack_name(pack)

    # -- writing --------------------------------------------------------------------
    def writer(self) -> PackWriter:
        """A new pack, written in parts (see :meth:`commit`)."""
        return PackWriter(self)

    def unpacked(self, contents: Contents) -> list[tuple[str, bytes | memoryview]]:
        """*contents* without those packed already: a pack holds no copy nobody reads."""
        with self._index() as db:
            known = {
                row[0].hex()
                for digests in chunked([bytes.fromhex(sha256) for sha256, _ in contents], 500)
                for row in db.execute(
                    f"SELECT digest FROM packed WHERE digest IN ({marks(len(digests))})",  # noqa: S608
                    digests,
                )
            }
        return [(sha256, data) for sha256, data in contents if sha256 not in known]

    def commit(self, writer: PackWriter) -> None:
        """Make *writer*'s pack durable, then index its members (see the module's
        durability order). A failure leaves no pack behind."""
        try:
            rows = writer.seal()
            if rows:
                self._commit_rows(rows)
        except BaseException:
            writer.discard()
            raise

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """The index in one write transaction: committed at the end, or rolled back."""
        with self._index() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _commit_rows(self, rows: list[Row]) -> None:
        with self._transaction() as db:
            # A content packed meanwhile by another process keeps its first copy.
            execute_rows(db, _insert_rows_sql, rows, _INSERT_ROWS)

    # -- reading --------------------------------------------------------------------
    def locate(self, sha256: str) -> Location | None:
        with self._index() as db:
            row = db.execute(
                "SELECT pack, offset, size FROM packed WHERE digest = ?", (bytes.fromhex(sha256),)
            ).fetchone()
        return None if row is None else Location(*row)

    def open_range(
        self, sha256: str, start: int, length: int | None
    ) -> tuple[BinaryIO, int] | None:
        """A pack opened at byte *start* of the packed blob *sha256* and how many bytes to
        read from there (at most *length*), or None when the blob is not packed."""
        for _ in range(3):  # a compaction may move the blob between lookup and open
            location = self.locate(sha256)
            if location is None:
                return None
            start = min(start, location.size)
            available = location.size - start
            try:
                handle = open(self.path_of(location.pack), "rb")  # noqa: SIM115 - returned
            except FileNotFoundError:
                continue
            handle.seek(location.offset + start)
            return handle, available if length is None else min(length, available)
        return None

    def listing(self, after: bytes = b"", limit: int = 1000) -> list[tuple[bytes, int, float]]:
        """One page of packed blobs in digest order, after *after*: ``(digest, size,
        stored_at)``, a blob's time being its pack's. A page at a time, so that listing
        millions of blobs (``gc``) holds one page in memory."""
        with self._index() as db:
            rows = db.execute(
                "SELECT digest, size, pack FROM packed WHERE digest > ? ORDER BY digest LIMIT ?",
                (after, limit),
            ).fetchall()
        times: dict[int, float] = {}
        found = []
        for digest, size, pack in rows:
            if pack not in times:
                try:
                    times[pack] = self.path_of(pack).stat().st_mtime
                except FileNotFoundError:  # moved by a compaction meanwhile
                    times[pack] = time.time()
            found.append((digest, size, times[pack]))
        return found

    # -- removing -------------------------------------------------------------------
    def remove(self, sha256: str) -> bool:
        """Drop a packed blob; reclaim its pack's space when that is worth it."""
        with self._index() as db:
            digest = bytes.fromhex(sha256)
            row = db.execute("SELECT pack FROM packed WHERE digest = ?", (digest,)).fetchone()
            if row is None:
                return False
            db.execute("DELETE FROM packed WHERE digest = ?", (digest,))
        self._reclaim(row[0])
        return True

    def _reclaim(self, pack: int) -> None:
        path = self.path_of(pack)
        with self._index() as db:
            live = db.execute(
                "SELECT digest, offset, size FROM packed WHERE pack = ? ORDER BY offset", (pack,)
            ).fetchall()
        if not live:
            path.unlink(missing_ok=True)
            return
        try:
            total = path.stat().st_size
        except FileNotFoundError:
            return
        live_bytes = sum(MEMBER_HEADER.size + size for _, _, size in live)
        if live_bytes >= COMPACT_BELOW * total:
            return
        with open(path, "rb") as handle:
            members = []
            for digest, offset, size in live:
                handle.seek(offset)
                members.append((digest.hex(), handle.read(size)))
        self._move(pack, members)

    def _move(self, old: int, members: list[tuple[str, bytes]]) -> None:
        """Rewrite *members* of pack *old* into a new pack, then delete *old* if no row
        points to it any more."""
        writer = self.writer()
        try:
            writer.append(members)
            rows = writer.seal()
        except BaseException:
            writer.discard()
            raise
        with self._transaction() as db:
            db.executemany(
                "UPDATE packed SET pack = ?, offset = ? WHERE digest = ? AND pack = ?",
                [(new, offset, digest, old) for digest, new, offset, _ in rows],
            )
            remaining = db.execute("SELECT 1 FROM packed WHERE pack = ? LIMIT 1", (old,))
            emptied = remaining.fetchone() is None
        if emptied:
            self.path_of(old).unlink(missing_ok=True)

    def sweep(self, older_than_seconds: float) -> int:
        """Remove packs no row points to (a crash between writing a pack and indexing
        it), once older than the given age, and the file of a move that never finished."""
        cutoff = time.time() - older_than_seconds
        removed = 0
        for entry in os.scandir(self.directory):
            pack = pack_id(entry.name)
            if pack is None:
                continue
            try:
                if entry.stat().st_mtime > cutoff:
                    continue
            except FileNotFoundError:
                continue
            with self._index() as db:
                used = db.execute("SELECT 1 FROM packed WHERE pack = ? LIMIT 1", (pack,))
                if used.fetchone() is not None:
                    continue
            os.unlink(entry.path)
            removed += 1
        return removed


class PackWriter:
    """One new pack file, written a part at a time (from one thread at a time): created
    with the first member appended, made durable by :meth:`seal`. Its members are found
    only once :meth:`Packs.commit` indexes them."""

    def __init__(self, packs: Packs) -> None:
        self._packs = packs
        self._fd: int | None = None
        self._appender: FileAppender | None = None
        self._path: Path | None = None
        self._pack = 0
        self._offset = 0
        self._rows: list[Row] = []

    def append(self, contents: Contents) -> None:
        """Write *contents* (valid names, verified bytes) after what the pack holds; their
        bytes are copied (to the disk or a buffer) before this returns."""
        if not contents:
            return
        appender = self._appender or self._create()
        parts: list[bytes | memoryview] = []
        for sha256, data in contents:
            digest = bytes.fromhex(sha256)
            header = MEMBER_HEADER.pack(digest, len(data))
            self._offset += len(header)
            self._rows.append((digest, self._pack, self._offset, len(data)))
            parts += (header, data)
            self._offset += len(data)
        appender.write(_joined(parts, DIRECT_BUFFER))

    def _create(self) -> FileAppender:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        pack = new_pack_id()
        while True:
            path = self._packs.path_of(pack)
            try:
                self._fd = os.open(path, flags, 0o644)
                break
            except FileExistsError:  # the same nanosecond in another process
                pack = new_pack_id() + 1
        self._pack, self._path = pack, path
        self._appender = FileAppender(path, self._fd, 0, durable=self._packs.fsync)
        return self._appender

    def seal(self) -> list[Row]:
        """Write what is buffered and make the pack durable (the file and its directory
        entry); the index rows of its members (none, and no file, if nothing was
        appended)."""
        if self._appender is None or self._fd is None:
            return []
        self._appender.close()
        self._appender = None
        if self._packs.fsync:
            os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        if self._packs.fsync:
            fsync_dir(self._packs.directory)
        return self._rows

    def discard(self) -> None:
        """Give up the pack: its file is removed (safe to call more than once, and after
        :meth:`seal`, as long as no row was committed)."""
        if self._appender is not None:
            self._appender.close(keep=False)
            self._appender = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._path is not None:
            self._path.unlink(missing_ok=True)
            self._path = None
