"""The floor server of ``bench/floor.py``: the least a server on PutPlace's stack must do
for a first ingest, and nothing else. Not PutPlace: no keys, scans, history, counters,
namespaces, record ids or checks of the records; what is kept is what any such server
pays for.

It speaks the two requests of PutPlace's protocol that a first ingest makes, so the
same client can be timed against it and against ``ppserver``:

- ``POST /put_files``: the records (``{"files": [...]}``) upserted into PutPlace's own
  SQLite schema (migrated by the store itself: the same tables and indexes), WAL with
  ``synchronous=FULL``, one transaction per request on one writer thread; answered with
  ``upload_required`` per record (whether a blob record of its hash exists).
- ``POST /bundles`` (PutPlace's framing): each member hashed and checked, all of them
  written to one new pack file made durable with one ``fdatasync`` (and its directory
  synced), then their blob records and pack index rows committed in one transaction of
  the one database. ``ppserver`` keeps its pack index in a database of its own (the blob
  store's), with a commit of its own per bundle: that is one of the differences measured.

Run by uvicorn (one process, uvloop, httptools) with ``FLOOR_DIR`` naming where it keeps
its files.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import sqlite3
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from putplace.client.uploader import BUNDLE_MAGIC
from putplace.metadata.base import FILE_FIELDS
from putplace.metadata.sqlite import SQLiteMetadataStore, _upsert_blobs_sql, _upsert_files_sql
from putplace.sqlite_files import execute_rows, marks

_COUNT = struct.Struct(">I")
_ENTRY = struct.Struct(">32sQ")
_PACK_INDEX_ROWS = 200

HOME = Path(os.environ["FLOOR_DIR"])
DATABASE = HOME / "putplace.db"
PACKS = HOME / "packs"


def _connect() -> sqlite3.Connection:
    # PutPlace's own store creates the schema (and closes), so the upserts below write
    # the same tables and indexes a real first ingest writes.
    store = SQLiteMetadataStore(DATABASE)
    store._open_sync()
    for conn in (store._writer, store._reader):
        if conn is not None:
            conn.close()
    conn = sqlite3.connect(DATABASE, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA cache_size = -65536")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS pack_index (sha256 BLOB PRIMARY KEY, pack INTEGER, "
        "offset INTEGER, length INTEGER) WITHOUT ROWID"
    )
    return conn


PACKS.mkdir(parents=True, exist_ok=True)
_db = _connect()
_writer = ThreadPoolExecutor(1, thread_name_prefix="floor-writer")
_packs = itertools.count()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())


def _write_records(rows: list[list[Any]]) -> set[str]:
    """Upsert *rows*; the hashes among them with a blob record."""
    _db.execute("BEGIN IMMEDIATE")
    try:
        execute_rows(_db, _upsert_files_sql, rows, 500)
        keys = list({bytes.fromhex(row[3]) for row in rows})
        stored: set[str] = set()
        for start in range(0, len(keys), 900):
            chunk = keys[start : start + 900]
            sql = f"SELECT sha256 FROM blobs WHERE sha256 IN ({marks(len(chunk))})"
            stored.update(key.hex() for (key,) in _db.execute(sql, chunk))
        _db.execute("COMMIT")
    except BaseException:
        _db.execute("ROLLBACK")
        raise
    return stored


async def put_files(request: Request) -> Response:
    records = orjson.loads(await request.body())["files"]
    now = _now()
    rows = [[*(r.get(f) for f in FILE_FIELDS), now, now, now, "default"] for r in records]
    loop = asyncio.get_running_loop()
    stored = await loop.run_in_executor(_writer, _write_records, rows)
    results = [{"file": {"upload_required": r["sha256"] not in stored}} for r in records]
    return Response(orjson.dumps({"results": results}), media_type="application/json")


def _write_pack(number: int, data: memoryview) -> None:
    fd = os.open(PACKS / f"{number}.pack", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    directory = os.open(PACKS, os.O_RDONLY)  # the new name, durable as ppserver makes it
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _write_blobs(blobs: list[tuple[Any, ...]], index: list[tuple[Any, ...]]) -> None:
    _db.execute("BEGIN IMMEDIATE")
    try:
        execute_rows(_db, _upsert_blobs_sql, blobs, 150)
        execute_rows(
            _db,
            lambda n: "INSERT OR IGNORE INTO pack_index VALUES " + ", ".join(["(?, ?, ?, ?)"] * n),
            index,
            _PACK_INDEX_ROWS,
        )
        _db.execute("COMMIT")
    except BaseException:
        _db.execute("ROLLBACK")
        raise


async def bundles(request: Request) -> Response:
    body = memoryview(await request.body())
    if bytes(body[: len(BUNDLE_MAGIC)]) != BUNDLE_MAGIC:
        return Response(b"not a bundle", status_code=400)
    (count,) = _COUNT.unpack_from(body, len(BUNDLE_MAGIC))
    at = len(BUNDLE_MAGIC) + _COUNT.size
    members = [_ENTRY.unpack_from(body, at + i * _ENTRY.size) for i in range(count)]
    data_at = position = at + count * _ENTRY.size
    number, now = next(_packs), _now()
    blobs: list[tuple[Any, ...]] = []
    index: list[tuple[Any, ...]] = []
    statuses = []
    for digest, length in members:
        ok = hashlib.sha256(body[position : position + length]).digest() == digest
        if ok:
            blobs.append((digest, length, "present", now, "floor", now))
            index.append((digest, number, position - data_at, length))
        statuses.append({"status": "stored" if ok else "refused"})
        position += length
    await asyncio.to_thread(_write_pack, number, body[data_at:position])
    await asyncio.get_running_loop().run_in_executor(_writer, _write_blobs, blobs, index)
    return Response(orjson.dumps({"results": statuses}), media_type="application/json")


async def health(request: Request) -> Response:
    return Response(b'{"status": "healthy"}', media_type="application/json")


app = Starlette(
    routes=[
        Route("/put_files", put_files, methods=["POST"]),
        Route("/bundles", bundles, methods=["POST"]),
        Route("/health", health),
    ]
)
