"""Limits shared by the worker processes of one ``ppserver serve``, through a SQLite file
the parent makes for them (named by :data:`SHARED_FILE_ENV`): the per-key rate limit,
quota reservations and key revocations hold across its workers without Redis.

The file holds nothing that must survive: buckets refill, reservations lapse, and a
revocation is also in the metadata store. So it is written without fsync, in a fresh
temporary directory per ``serve``. Each check is one short transaction on the event
loop's thread: a statement holds SQLite's lock for microseconds, so a worker waiting
for another's is a wait of microseconds too, shorter than a hop to a thread. Times come
from ``time.monotonic()``, the one clock of the machine (``CLOCK_MONOTONIC``), which
every worker reads alike.

Revocations are polled: every :data:`POLL_SECONDS` each worker reads the ones announced
since it last looked, so a key revoked through one worker is refused by the others
within that time (by the announcing one at once).

Like Redis, the file is a helper, never a reason to refuse a request: when it cannot be
used (a full temporary directory), each worker counts alone meanwhile, says so in
``/health`` and the log, and forgets every cached key once it can read the file again
(announcements may have been missed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
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
)
from putplace.coordination.local import LocalCoordinator
from putplace.sqlite_files import connect, setting_up

log = logging.getLogger("putplace.coordination")
T = TypeVar("T")

#: Where ``ppserver serve`` tells its workers the shared file is (set before they start).
SHARED_FILE_ENV = "PPSERVER_SHARED_LIMITS_FILE"
#: How often each worker reads the revocations the others announced.
POLL_SECONDS = 0.2
#: Announcements older than this are deleted: every worker has read them long since.
ANNOUNCEMENT_SECONDS = 3600
#: A bucket nobody took from for this long is deleted (it has refilled, at any rate of
#: at least its burst an hour), so the file keeps only the keys in use.
IDLE_BUCKET_SECONDS = 3600
#: How often a worker deletes them.
PRUNE_SECONDS = 60

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS buckets (name TEXT PRIMARY KEY, tokens REAL NOT NULL, "
    "at REAL NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS reservations (bucket TEXT NOT NULL, token TEXT NOT NULL, "
    "amount INTEGER NOT NULL, until REAL NOT NULL, PRIMARY KEY (bucket, token)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS key_changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
    "key_hash TEXT NOT NULL, origin TEXT NOT NULL, at REAL NOT NULL)",
)


class HostCoordinator(Coordinator):
    """Token buckets, reservations and announcements in a SQLite file the processes of
    one machine share (see the module's description)."""

    kind = "host"
    shared = True

    def __init__(self, path: Path) -> None:
        self._path = path
        with setting_up(path):
            self._db = connect(path)
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = OFF")  # nothing here must survive a crash
            for statement in _SCHEMA:
                self._db.execute(statement)
        #: Marks this process's own announcements, which it has heard already.
        self._origin = secrets.token_hex(8)
        self._heard = self._last_seq()
        self._listener: KeyListener | None = None
        self._listening: asyncio.Task[None] | None = None
        self._local = LocalCoordinator()  # while the file cannot be used
        self._failing = False

    def _or_alone(self, shared: Callable[[], T], alone: Callable[[], T]) -> T:
        """*shared* on the file; *alone* (this process's own limits) when it fails."""
        try:
            result = shared()
        except sqlite3.Error as exc:
            if not self._failing:
                log.warning("limits shared by the workers failed (%s); each counts alone", exc)
            self._failing = True
            return alone()
        self._failing = False
        return result

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

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

    async def take(self, bucket: str, per_second: float, burst: int) -> int:
        if per_second <= 0:
            return 0
        return self._or_alone(
            lambda: self._take(bucket, per_second, burst),
            lambda: self._local.take_now(bucket, per_second, burst),
        )

    def _take(self, bucket: str, per_second: float, burst: int) -> int:
        now = time.monotonic()
        with self._transaction() as db:
            row = db.execute("SELECT tokens, at FROM buckets WHERE name = ?", (bucket,)).fetchone()
            tokens, at = row if row is not None else (float(burst), now)
            tokens = min(burst, tokens + max(0.0, now - at) * per_second)
            wait = 0 if tokens >= 1 else max(1, math.ceil((1 - tokens) / per_second))
            if not wait:
                tokens -= 1
            db.execute("INSERT OR REPLACE INTO buckets VALUES (?, ?, ?)", (bucket, tokens, now))
        return wait

    async def reserve(self, bucket: str, amount: int) -> tuple[Reservation, int]:
        reservation = Reservation(bucket, secrets.token_hex(8), amount)
        others = self._or_alone(
            lambda: self._reserve(reservation), lambda: self._local.hold(reservation)
        )
        return reservation, others

    def _reserve(self, reservation: Reservation) -> int:
        bucket, amount = reservation.bucket, reservation.amount
        now = time.monotonic()
        with self._transaction() as db:
            db.execute("DELETE FROM reservations WHERE bucket = ? AND until <= ?", (bucket, now))
            (others,) = db.execute(
                "SELECT COALESCE(SUM(amount), 0) FROM reservations WHERE bucket = ?", (bucket,)
            ).fetchone()
            db.execute(
                "INSERT INTO reservations VALUES (?, ?, ?, ?)",
                (bucket, reservation.token, amount, now + RESERVATION_SECONDS),
            )
        return int(others)

    async def release(self, reservation: Reservation) -> None:
        if self._local.drop(reservation):  # taken while the file failed
            return
        self._or_alone(lambda: self._release(reservation), lambda: None)

    def _release(self, reservation: Reservation) -> None:
        with self._transaction() as db:
            db.execute(
                "DELETE FROM reservations WHERE bucket = ? AND token = ?",
                (reservation.bucket, reservation.token),
            )

    async def announce_key_change(self, key_hash: str) -> None:
        self._or_alone(lambda: self._announce(key_hash), lambda: None)
        await self._local.announce_key_change(key_hash)  # this process at once

    def _announce(self, key_hash: str) -> None:
        now = time.monotonic()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO key_changes (key_hash, origin, at) VALUES (?, ?, ?)",
                (key_hash, self._origin, now),
            )
            db.execute("DELETE FROM key_changes WHERE at < ?", (now - ANNOUNCEMENT_SECONDS,))

    def _last_seq(self) -> int:
        (seq,) = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM key_changes").fetchone()
        return int(seq)

    async def _poll(self) -> None:
        listener = self._listener
        assert listener is not None
        pruned = time.monotonic()
        while True:
            await asyncio.sleep(POLL_SECONDS)
            missed = self._failing
            rows = self._or_alone(self._announced, _none_announced)
            if missed and not self._failing:
                listener(None)  # read again: announcements made meanwhile were missed
            for seq, key_hash, origin in rows:
                self._heard = seq
                if origin != self._origin:
                    listener(key_hash)
            if time.monotonic() - pruned >= PRUNE_SECONDS:
                pruned = time.monotonic()
                self._or_alone(self._prune, lambda: None)

    def _announced(self) -> list[tuple[int, str, str]]:
        """The announcements made since this process last read them, oldest first."""
        return self._db.execute(
            "SELECT seq, key_hash, origin FROM key_changes WHERE seq > ? ORDER BY seq",
            (self._heard,),
        ).fetchall()

    def _prune(self) -> None:
        with self._transaction() as db:
            db.execute(
                "DELETE FROM buckets WHERE at < ?", (time.monotonic() - IDLE_BUCKET_SECONDS,)
            )

    def describe(self) -> dict[str, Any]:
        if self._failing:
            return {"type": self.kind, "shared": False, "status": "unavailable"}
        return {"type": self.kind, "shared": True, "status": "healthy"}


def _none_announced() -> list[tuple[int, str, str]]:
    return []


def shared_file() -> Path | None:
    """The file the workers of this ``ppserver serve`` share, if it made one."""
    named = os.environ.get(SHARED_FILE_ENV)
    return Path(named) if named else None
