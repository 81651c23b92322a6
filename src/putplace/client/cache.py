"""The client's local cache: hashes of unchanged files, and what the server already has.

A file is identified by ``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)``: if none
of these changed, neither did the bytes, so the file is never read again. Separately, the
cache remembers the metadata last registered for each ``(server, hostname, path)`` whose
content the server holds, so an unchanged file is not sent again; and, per directory, a
signature of its files as they were when all of them were last known to be on the server
(:func:`listing_signature`), so that a directory found the same is known unchanged
without looking at its files one by one.
"""

from __future__ import annotations

import hashlib
import json
import marshal
import os
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import platformdirs

from putplace.client.scanner import FileEntry
from putplace.sequences import chunked
from putplace.sqlite_files import execute_rows, hold_lock, json_row, marks, values

SCHEMA = """
CREATE TABLE IF NOT EXISTS hashes (
    dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL,
    PRIMARY KEY (dev, ino)
);
CREATE TABLE IF NOT EXISTS sent (
    server TEXT NOT NULL, hostname TEXT NOT NULL, path TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    PRIMARY KEY (server, hostname, path)
);
CREATE TABLE IF NOT EXISTS listings (
    server TEXT NOT NULL, hostname TEXT NOT NULL, directory TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (server, hostname, directory)
);
CREATE TABLE IF NOT EXISTS uploads (
    server TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL, urls TEXT NOT NULL,
    PRIMARY KEY (server, sha256)
);
"""


#: SQLite page cache of the client cache, KiB. A run touches its tables in walk order,
#: so a page once left is seldom needed again: a first ingest of 100,000 files and a
#: run after all of them were touched read the same pages from the file (10,141 and
#: 21,577 ``pread64``) with 4 MiB as with 32, which the cache filled (33 MiB of SQLite
#: memory at its peak, against 5).
CACHE_KIB = 4 * 1024
#: Bound variables per statement: SQLite before 3.32 allows at most 999.
MAX_VARIABLES = 999


def default_cache_path() -> Path:
    return Path(platformdirs.user_cache_dir("putplace")) / "ppclient-cache.sqlite3"


def identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


#: Changed when what a signature covers changes: every directory is then looked at anew.
LISTING_FORMAT = 1


def listing_signature(entries: Sequence[FileEntry], ip_address: str) -> str:
    """What must be the same for a directory's files all to be unchanged: their names
    and identities (as for the hash cache: the bytes are unchanged too), the mode and
    owner their records carry, and the address the records name. Any file added,
    removed, renamed, written, touched or chmod-ed changes it (ctime moves with all of
    these). marshal: 0.5 us a file, against 1.1 for ``repr``."""
    rows = [
        (e.path, *identity(st), st.st_mode, st.st_uid, st.st_gid)
        for e in entries
        for st in (e.stat,)
    ]
    data = marshal.dumps((LISTING_FORMAT, ip_address, rows))
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class CacheBusyError(Exception):
    """Another ``ppclient`` run is using the cache file."""


def _hold_exclusively(path: Path) -> int | None:
    """A descriptor holding ``<path>.lock`` for this run (see :func:`hold_lock`). Raises
    :class:`CacheBusyError` at once when another run holds it.

    A run keeps a write transaction open on its cache between commits, so a second run
    on the same file (an overlapping cron job) failed after SQLite's 5 s busy timeout
    with "database is locked", part-way through, as a traceback. Without ``flock`` (not
    POSIX) there is no such lock, and SQLite's own locking is all there is."""
    try:
        return hold_lock(f"{path}.lock", wait=False)
    except BlockingIOError:
        raise CacheBusyError(
            f"another ppclient run is using the cache {path}: wait for it to finish, or "
            "give this run a --cache-file of its own"
        ) from None


class ClientCache:
    """Thread-safe; writes are committed in batches by :meth:`commit`. One run at a time
    uses a cache file (:class:`CacheBusyError` for another)."""

    def __init__(self, path: Path | None) -> None:
        self._lock = threading.Lock()
        target = ":memory:" if path is None else str(path)
        self._held: int | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._held = _hold_exclusively(path)
        try:
            self._open(target)
        except BaseException:
            self._let_go()
            raise

    def _open(self, target: str) -> None:
        self._db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        # SQLite's default 2 MB was too little once, when a first ingest still looked
        # each file up (16,700 pages re-read for 30,000 files); see CACHE_KIB.
        self._db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        self._db.executescript(SCHEMA)
        self._db.execute("BEGIN")

    def holds_hashes(self) -> bool:
        with self._lock:
            return bool(self._db.execute("SELECT EXISTS (SELECT 1 FROM hashes)").fetchone()[0])

    def holds_records(self, server: str, hostname: str) -> bool:
        """Whether anything was remembered as registered for *hostname* on *server*."""
        with self._lock:
            return any(
                self._db.execute(
                    f"SELECT EXISTS (SELECT 1 FROM {table} "  # noqa: S608
                    "WHERE server = ? AND hostname = ?)",
                    (server, hostname),
                ).fetchone()[0]
                for table in ("sent", "listings")
            )

    def lookup_hashes(self, stats: list[os.stat_result]) -> list[str | None]:
        """The cached hash of each file whose identity is unchanged, else None (one query
        per 500 files of a device)."""
        wanted = [identity(st) for st in stats]
        by_device: dict[int, list[int]] = {}
        for ident in wanted:
            by_device.setdefault(ident[0], []).append(ident[1])
        known: dict[tuple[int, int, int, int, int], str] = {}
        with self._lock:
            for device, inodes in by_device.items():
                for chunk in chunked(inodes, 500):
                    # dev first: the primary key (dev, ino) serves the lookup. With ino
                    # alone SQLite scanned the whole table per query (39% of a rescan).
                    rows = json_row(
                        self._db,
                        "SELECT json_group_array(json_array(ino, size, mtime_ns, ctime_ns, "  # noqa: S608
                        "sha256)) FROM hashes "
                        f"WHERE dev = ? AND ino IN ({marks(len(chunk))})",
                        (device, *chunk),
                    )
                    known.update(((device, *row[:4]), row[4]) for row in rows)
        return [known.get(ident) for ident in wanted]

    def store_hash(self, st: os.stat_result, sha256: str) -> None:
        self.store_hashes([(st, sha256)])

    def store_hashes(self, hashed: Iterable[tuple[os.stat_result, str]]) -> None:
        self._replace("hashes", [(*identity(st), sha256) for st, sha256 in hashed])

    def sent_fingerprints(self, server: str, hostname: str, paths: Iterable[str]) -> dict[str, str]:
        return self._values("sent", "path", "fingerprint", server, hostname, list(paths))

    def unchanged_listings(
        self, server: str, hostname: str, signatures: Mapping[str, str]
    ) -> set[str]:
        """The directories of *signatures* (directory: signature) remembered with that
        same signature."""
        found = self._values("listings", "directory", "signature", server, hostname, [*signatures])
        return {d for d, signature in found.items() if signatures[d] == signature}

    def _values(
        self, table: str, key: str, value: str, server: str, hostname: str, keys: list[str]
    ) -> dict[str, str]:
        """*table*'s ``key: value`` for *keys* of (server, hostname): a query per 500."""
        found: dict[str, str] = {}
        with self._lock:
            for chunk in chunked(keys, 500):
                listed = marks(len(chunk))
                found.update(
                    json_row(
                        self._db,
                        f"SELECT json_group_object({key}, {value}) FROM {table} "  # noqa: S608
                        f"WHERE server = ? AND hostname = ? AND {key} IN ({listed})",
                        (server, hostname, *chunk),
                    )
                )
        return found

    def remember_listings(
        self, server: str, hostname: str, signatures: Iterable[tuple[str, str]]
    ) -> None:
        """Remember each ``(directory, signature)``: all its files are on the server."""
        self._replace("listings", [(server, hostname, d, sig) for d, sig in signatures])

    def forget_listings(self, server: str, hostname: str, directories: Iterable[str]) -> None:
        with self._lock:
            self._db.executemany(
                "DELETE FROM listings WHERE server = ? AND hostname = ? AND directory = ?",
                [(server, hostname, d) for d in directories],
            )

    def mark_all_sent(self, server: str, hostname: str, sent: Iterable[tuple[str, str]]) -> None:
        """Remember each ``(path, fingerprint)`` as registered with its content present."""
        self._replace("sent", [(server, hostname, path, fp) for path, fp in sent])

    def _replace(self, table: str, rows: list[tuple[object, ...]]) -> None:
        """INSERT OR REPLACE *rows* with as few statements as SQLite allows: one
        execution per row (``executemany``) cost a first ingest 17% of its hashing
        thread, which is the client's busiest."""
        if not rows:
            return
        width = len(rows[0])
        with self._lock:
            execute_rows(
                self._db,
                lambda count: f"INSERT OR REPLACE INTO {table} {values(width, count)}",
                rows,
                MAX_VARIABLES // width,
            )

    def unfinished_upload(self, server: str, sha256: str, size: int) -> list[str] | None:
        """The upload URLs of content this client began sending to *server* and did not
        finish (one, or one per part), if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT urls FROM uploads WHERE server = ? AND sha256 = ? AND size = ?",
                (server, sha256, size),
            ).fetchone()
        return None if row is None else list(json.loads(row[0]))

    def remember_upload(self, server: str, sha256: str, size: int, urls: list[str]) -> None:
        """Keep an upload's URLs, committed at once: a run killed a moment later still
        continues it next time."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO uploads VALUES (?, ?, ?, ?)",
                (server, sha256, size, json.dumps(urls)),
            )
            self._db.execute("COMMIT")
            self._db.execute("BEGIN")

    def forget_upload(self, server: str, sha256: str) -> None:
        with self._lock:
            self._db.execute(
                "DELETE FROM uploads WHERE server = ? AND sha256 = ?", (server, sha256)
            )

    def commit(self) -> None:
        with self._lock:
            self._db.execute("COMMIT")
            self._db.execute("BEGIN")

    def close(self) -> None:
        with self._lock:
            try:
                self._db.execute("COMMIT")
                self._db.close()
            finally:
                self._let_go()

    def _let_go(self) -> None:
        if self._held is not None:
            os.close(self._held)
            self._held = None
