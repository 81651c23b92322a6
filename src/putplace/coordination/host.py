"""Limits shared by the worker processes of one ``ppserver serve``, through a SQLite file
the parent makes for them (named by :data:`SHARED_FILE_ENV`): the per-key rate limit,
quota reservations and key revocations hold across its workers without Redis.

The file holds nothing that must survive: buckets refill, reservations lapse, and a
revocation is also in the metadata store. So it is written without fsync, in a fresh
temporary directory per ``serve``. Each check is one short transaction on the event
loop's thread, the workers taking turns on an ``flock`` (the kernel wakes the next one
the moment it is released; SQLite's own busy handler would sleep 1, 2, 5... ms). Times
come from ``time.monotonic()``, the one clock of the machine (``CLOCK_MONOTONIC``),
which every worker reads alike, taken once the lock is held.

Revocations are polled: every :data:`POLL_SECONDS` each worker reads the ones announced
since it last looked, so a key revoked through one worker is refused by the others
within that time (by the announcing one at once).

Like Redis, the file is a helper, never a reason to refuse a request. When it cannot be
used (a full temporary directory), the worker counts alone for :data:`RETRY_SECONDS`
before trying it again, says so in ``/health`` and the log, keeps the releases and
announcements it could not write to write them later, and forgets every cached key once
it reads the file again (announcements may have been missed meanwhile). Reservations of
a worker that died are dropped by the next reservation in their bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from putplace.coordination.base import (
    RESERVATION_SECONDS,
    Coordinator,
    KeyListener,
    Reservation,
    take_token,
)
from putplace.coordination.local import LocalCoordinator
from putplace.sqlite_files import connect, setting_up

log = logging.getLogger("putplace.coordination")
T = TypeVar("T")

#: Where ``ppserver serve`` tells its workers the shared file is (set before they start).
SHARED_FILE_ENV = "PPSERVER_SHARED_LIMITS_FILE"
#: How often each worker reads the revocations the others announced.
POLL_SECONDS = 0.2
#: After the file failed, how long a worker counts alone before trying it again.
RETRY_SECONDS = 2.0
#: How long a statement waits for SQLite's lock (the flock is what workers queue on).
BUSY_TIMEOUT_MS = 100
#: Announcements older than this are deleted: every worker has read them long since.
ANNOUNCEMENT_SECONDS = 3600
#: How often a worker deletes full buckets, lapsed reservations and old announcements.
PRUNE_SECONDS = 60

_SCHEMA = (
    # full_at: when the bucket holds its burst again, and is as good as none.
    "CREATE TABLE IF NOT EXISTS buckets (name TEXT PRIMARY KEY, tokens REAL NOT NULL, "
    "at REAL NOT NULL, full_at REAL NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS reservations (bucket TEXT NOT NULL, token TEXT NOT NULL, "
    "amount INTEGER NOT NULL, until REAL NOT NULL, pid INTEGER NOT NULL, "
    "PRIMARY KEY (bucket, token)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS key_changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
    "key_hash TEXT NOT NULL, origin TEXT NOT NULL, at REAL NOT NULL)",
)

#: A write to make on the file: run inside a transaction, given the time then.
_Write = Callable[[sqlite3.Connection, float], T]


class HostCoordinator(Coordinator):
    """Token buckets, reservations and announcements in a SQLite file the processes of
    one machine share (see the module's description)."""

    kind = "host"
    shared = True

    def __init__(self, path: Path) -> None:
        with setting_up(path):
            self._db = connect(path)
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = OFF")  # nothing here must survive a crash
            for statement in _SCHEMA:
                self._db.execute(statement)
        # What the workers queue on for their turn at the file (see _transaction).
        self._turns = os.open(f"{path}.turns", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._pid = os.getpid()
        #: Marks this process's own announcements, which it has heard already.
        self._origin = secrets.token_hex(8)
        (self._heard,) = self._db.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM key_changes"
        ).fetchone()
        self._listener: KeyListener | None = None
        self._listening: asyncio.Task[None] | None = None
        self._local = LocalCoordinator()  # while the file cannot be used
        self._down_until = 0.0  # counting alone until then
        self._missed = False  # announcements may have been missed since the last read
        self._unwritten: list[_Write[None]] = []  # releases and announcements to write

    # -- the file, and what to do without it -------------------------------------------
    @contextlib.contextmanager
    def _transaction(self) -> Iterator[float]:
        """Hold the workers' turn and a write transaction; yield the time then."""
        fcntl.flock(self._turns, fcntl.LOCK_EX)
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield time.monotonic()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        finally:
            fcntl.flock(self._turns, fcntl.LOCK_UN)

    def _write(self, write: _Write[T]) -> T:
        with self._transaction() as now:
            return write(self._db, now)

    def _shared(self, shared: Callable[[], T], alone: Callable[[], T], *, writes: bool = True) -> T:
        """*shared* on the file; *alone* (this process's own limits) while it fails. Only
        a write that works ends a failure: a full disk still lets the file be read."""
        if time.monotonic() < self._down_until:
            return alone()
        try:
            result = shared()
        except sqlite3.Error as exc:
            self._went_down(exc)
            return alone()
        if writes and self._down_until:
            log.info("limits shared by the workers work again")
            self._down_until = 0.0
        if writes:
            self._write_unwritten()
        return result

    def _went_down(self, exc: sqlite3.Error) -> None:
        if not self._down_until:  # once per failure, not once per request
            log.warning("limits shared by the workers failed (%s); each counts alone", exc)
        self._down_until = time.monotonic() + RETRY_SECONDS
        self._missed = True

    def _write_unwritten(self) -> None:
        """What could not be written before, in order, now that a write worked."""
        try:
            while self._unwritten:
                self._write(self._unwritten[0])
                self._unwritten.pop(0)
        except sqlite3.Error as exc:
            self._went_down(exc)

    def _shared_later(self, write: _Write[None]) -> None:
        """*write* now, or once the file can be written again."""

        def later() -> None:
            self._unwritten.append(write)

        self._shared(lambda: self._write(write), later)

    # -- Coordinator -----------------------------------------------------------------
    def listen(self, on_key_change: KeyListener) -> None:
        self._listener = on_key_change
        self._local.listen(on_key_change)
        self._listening = asyncio.create_task(self._poll())

    async def close(self) -> None:
        if self._listening is not None:
            self._listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listening
        self._db.close()
        os.close(self._turns)

    async def take(self, bucket: str, per_second: float, burst: int) -> int:
        if per_second <= 0:
            return 0

        def take(db: sqlite3.Connection, now: float) -> int:
            row = db.execute("SELECT tokens, at FROM buckets WHERE name = ?", (bucket,)).fetchone()
            tokens, at = row if row is not None else (float(burst), now)
            tokens, wait = take_token(tokens, at, now, per_second, burst)
            full_at = now + (burst - tokens) / per_second
            db.execute(
                "INSERT OR REPLACE INTO buckets VALUES (?, ?, ?, ?)", (bucket, tokens, now, full_at)
            )
            return wait

        return self._shared(
            lambda: self._write(take), lambda: self._local.take_now(bucket, per_second, burst)
        )

    async def reserve(self, bucket: str, amount: int) -> tuple[Reservation, int]:
        reservation = Reservation(bucket, secrets.token_hex(8), amount)

        def reserve(db: sqlite3.Connection, now: float) -> int:
            held = db.execute(
                "SELECT DISTINCT pid FROM reservations WHERE bucket = ? AND pid != ?",
                (bucket, self._pid),
            ).fetchall()
            for (pid,) in held:
                if not _alive(pid):  # a worker that died: nobody will release its room
                    db.execute("DELETE FROM reservations WHERE pid = ?", (pid,))
            db.execute("DELETE FROM reservations WHERE bucket = ? AND until <= ?", (bucket, now))
            (others,) = db.execute(
                "SELECT COALESCE(SUM(amount), 0) FROM reservations WHERE bucket = ?", (bucket,)
            ).fetchone()
            db.execute(
                "INSERT INTO reservations VALUES (?, ?, ?, ?, ?)",
                (bucket, reservation.token, amount, now + RESERVATION_SECONDS, self._pid),
            )
            return int(others)

        others = self._shared(lambda: self._write(reserve), lambda: self._local.hold(reservation))
        return reservation, others

    async def release(self, reservation: Reservation) -> None:
        if self._local.drop(reservation):  # taken while the file failed
            return

        def release(db: sqlite3.Connection, now: float) -> None:
            db.execute(
                "DELETE FROM reservations WHERE bucket = ? AND token = ?",
                (reservation.bucket, reservation.token),
            )

        self._shared_later(release)

    async def announce_key_change(self, key_hash: str) -> None:
        def announce(db: sqlite3.Connection, now: float) -> None:
            db.execute(
                "INSERT INTO key_changes (key_hash, origin, at) VALUES (?, ?, ?)",
                (key_hash, self._origin, now),
            )

        self._shared_later(announce)
        await self._local.announce_key_change(key_hash)  # this process at once

    def describe(self) -> dict[str, Any]:
        if time.monotonic() < self._down_until:
            return {"type": self.kind, "shared": False, "status": "unavailable"}
        return {"type": self.kind, "shared": True, "status": "healthy"}

    # -- announcements and housekeeping ----------------------------------------------
    async def _poll(self) -> None:
        listener = self._listener
        assert listener is not None
        pruned = time.monotonic()
        while True:
            await asyncio.sleep(POLL_SECONDS)
            if time.monotonic() < self._down_until:
                continue
            missed = self._missed
            rows = self._shared(self._announced, _none_announced, writes=False)
            if missed and time.monotonic() >= self._down_until:  # read again
                self._missed = False
                listener(None)  # every cached key looked up again
            for seq, key_hash, origin in rows:
                self._heard = seq
                if origin != self._origin:
                    listener(key_hash)
            if time.monotonic() - pruned >= PRUNE_SECONDS:
                pruned = time.monotonic()
                self._shared(lambda: self._write(_prune), lambda: None)

    def _announced(self) -> list[tuple[int, str, str]]:
        """The announcements made since this process last read them, oldest first."""
        return self._db.execute(
            "SELECT seq, key_hash, origin FROM key_changes WHERE seq > ? ORDER BY seq",
            (self._heard,),
        ).fetchall()


def _prune(db: sqlite3.Connection, now: float) -> None:
    db.execute("DELETE FROM buckets WHERE full_at <= ?", (now,))
    db.execute("DELETE FROM reservations WHERE until <= ?", (now,))
    db.execute("DELETE FROM key_changes WHERE at < ?", (now - ANNOUNCEMENT_SECONDS,))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's (a pid reused since)
        return True
    return True


def _none_announced() -> list[tuple[int, str, str]]:
    return []


def shared_file() -> Path | None:
    """The file the workers of this ``ppserver serve`` share, if it made one."""
    named = os.environ.get(SHARED_FILE_ENV)
    return Path(named) if named else None
