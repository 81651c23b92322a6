"""SQLite metadata store: one file, WAL mode, safe with several worker processes.

Writes from every request in a process are queued and applied by one writer thread in
group commits: each queued operation runs inside its own savepoint, the whole group in one
``BEGIN IMMEDIATE`` transaction with a single durable commit. Reads use a second
connection on their own thread (WAL lets them run while a write is in progress). Other
processes writing the same file wait on SQLite's busy timeout.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import json
import os
import re
import sqlite3
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson
from pydantic import TypeAdapter

from putplace.metadata import globs
from putplace.metadata.base import (
    FILE_FIELDS,
    DuplicateError,
    MaintenanceRun,
    MetadataStore,
    StoredFile,
    StoreUnavailableError,
    check_limit,
    dedupe_by_location,
)
from putplace.metadata.inventory import (
    CURRENT,
    HISTORY,
    SORT_FIELDS,
    Cursor,
    DuplicateGroup,
    FileQuery,
    FileState,
    Found,
    Growth,
    Listed,
    Totals,
    WritePlan,
    by_directory,
    current_version,
    plan_deletes,
    plan_puts,
    prefix_range,
    replaced_at,
    tie_rule,
)
from putplace.metadata.uploads import PROGRESS_FIELDS, Upload, upload_from_row, upload_to_row
from putplace.models import (
    DEFAULT_NAMESPACE,
    STORED,
    ApiKeyRecord,
    BlobRecord,
    BlobState,
    FileMetadata,
    FileRecord,
    FileVersion,
    Location,
    ScanRecord,
    ScanState,
    Scope,
)
from putplace.sequences import chunked
from putplace.sqlite_files import (
    CheckpointInterval,
    connect,
    execute_rows,
    json_row,
    json_text,
    marks,
    setting_up,
    values,
)

T = TypeVar("T")
WRITER_CACHE_KIB = 32 * 1024
#: The writer's WAL is checkpointed once it holds this many frames at most: a large
#: database's interval (see _set_up). Between the two bounds the interval is the
#: database's size in pages (see writer_checkpoints).
WAL_CHECKPOINT_PAGES = 50_000
#: ... and once it holds this many at least: a small database's interval.
WAL_CHECKPOINT_MIN_PAGES = 10_000
#: Values per ``IN`` list or multi-row statement (SQLite allows 32,766 variables). A batch
#: of 1,000 records is one statement each rather than two: every statement is a hop that
#: lets go of the GIL and waits to take it back (see sqlite_files.execute_rows); the
#: server's CPU in a first ingest was 0.97x that at 500 (6 alternated pairs, all lower).
_SQLITE_VARIABLE_CHUNK = 1000

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    filepath TEXT NOT NULL,
    hostname TEXT NOT NULL,
    ip_address TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    file_size INTEGER NOT NULL,
    file_mode INTEGER NOT NULL,
    file_uid INTEGER NOT NULL,
    file_gid INTEGER NOT NULL,
    file_mtime REAL NOT NULL,
    file_atime REAL NOT NULL,
    file_ctime REAL NOT NULL,
    is_symlink INTEGER NOT NULL,
    link_target TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (hostname, filepath)
);
CREATE INDEX IF NOT EXISTS files_sha256 ON files (sha256);
CREATE TABLE IF NOT EXISTS blobs (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    state TEXT NOT NULL,
    stored_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS api_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key_hash TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    description TEXT,
    scope TEXT NOT NULL,
    created_at TEXT NOT NULL,
    last_used_at TEXT,
    is_active INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS api_keys_is_active ON api_keys (is_active);
"""

_HISTORY_COLUMNS = ", ".join(FILE_FIELDS)
#: The reported fields' column types, in FILE_FIELDS order.
_FILE_COLUMN_TYPES = (
    ("filepath", "TEXT NOT NULL"),
    ("hostname", "TEXT NOT NULL"),
    ("ip_address", "TEXT NOT NULL"),
    ("sha256", "TEXT NOT NULL"),
    ("file_size", "INTEGER NOT NULL"),
    ("file_mode", "INTEGER NOT NULL"),
    ("file_uid", "INTEGER NOT NULL"),
    ("file_gid", "INTEGER NOT NULL"),
    ("file_mtime", "REAL NOT NULL"),
    ("file_atime", "REAL NOT NULL"),
    ("file_ctime", "REAL NOT NULL"),
    ("is_symlink", "INTEGER NOT NULL"),
    ("link_target", "TEXT"),
)
#: Kept by the database itself, so every path that writes blobs keeps the totals right.
_BLOB_TOTALS_TRIGGERS = (
    "CREATE TRIGGER blobs_added AFTER INSERT ON blobs BEGIN UPDATE blob_totals "
    "SET count = count + 1, bytes = bytes + NEW.size WHERE id = 0; END",
    "CREATE TRIGGER blobs_removed AFTER DELETE ON blobs BEGIN UPDATE blob_totals "
    "SET count = count - 1, bytes = bytes - OLD.size WHERE id = 0; END",
    "CREATE TRIGGER blobs_resized AFTER UPDATE OF size ON blobs BEGIN UPDATE blob_totals "
    "SET bytes = bytes - OLD.size + NEW.size WHERE id = 0; END",
)
#: The records of files and file_history are indexed by their hash's first 12 hex digits
#: (48 bits), not all 64: a record's hash is random, so each one written put an index
#: entry on a random page, and each commit wrote every page it touched to the WAL. The
#: short entries fit 4 times as many to a page. Measured, 100,000 records put 1,000 at
#: a time (five alternated pairs, CPU-s): 1.72-2.61 with the whole hash indexed,
#: 1.45-2.00 with its prefix, 1.43 with no index at all; 1,000,000 records (``python -m
#: bench.inventory``): 13,342 -> 16,252 records/s. A lookup names both, the prefix for the
#: index and the whole hash to match (see _same_content); 48 bits keep the rows a lookup
#: reads past to about none below ~10 million contents. Hashes made to share a prefix
#: (a record's hash is what its client says) are all read by a lookup of any of them.
_SHA_KEY_DIGITS = 12
_SHA_KEY = f"substr(sha256, 1, {_SHA_KEY_DIGITS})"
#: Dropped by step 9, and at every open after it: a release before it, started on the
#: database (a rollback, or an old worker in a rolling upgrade), makes the whole-hash
#: index again before it refuses the newer schema, and every write would pay for it.
_DROP_WHOLE_HASH_INDEXES = (
    "DROP INDEX IF EXISTS files_sha256",
    "DROP INDEX IF EXISTS history_sha256",
)
#: Schema changes in order; ``PRAGMA user_version`` counts those applied. Each runs in
#: one transaction, so a database is never half-migrated, and new databases take the
#: same path as old ones.
MIGRATIONS: list[list[str]] = [
    [  # 1: inventory: versions, deletions, scans, counters
        "ALTER TABLE files ADD COLUMN recorded_at TEXT",
        "ALTER TABLE files ADD COLUMN deleted_at TEXT",
        "UPDATE files SET recorded_at = updated_at",
        # Sort/filter by size; recorded_at grows with time, so its index only appends.
        "CREATE INDEX files_size ON files (file_size)",
        "CREATE INDEX files_recorded ON files (recorded_at)",
        f"""CREATE TABLE file_history (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            file_id INTEGER NOT NULL,
            {", ".join(f"{name} {kind}" for name, kind in _FILE_COLUMN_TYPES)},
            valid_from TEXT NOT NULL,
            valid_to TEXT NOT NULL,
            deleted INTEGER NOT NULL
        )""",
        "CREATE INDEX history_location ON file_history (hostname, filepath, valid_from)",
        "CREATE INDEX history_sha256 ON file_history (sha256)",
        "CREATE INDEX history_valid_to ON file_history (valid_to)",
        """CREATE TABLE scans (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            hostname TEXT NOT NULL,
            root TEXT NOT NULL,
            excludes TEXT NOT NULL,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            state TEXT NOT NULL,
            deleted INTEGER NOT NULL
        )""",
        # What each open scan saw: a row of names per directory, written as batches
        # arrive (a rescan writes a few rows per thousand files, not one per file).
        """CREATE TABLE scan_seen (
            scan_id INTEGER NOT NULL,
            dir TEXT NOT NULL,
            names TEXT NOT NULL
        )""",
        "CREATE INDEX scan_seen_dir ON scan_seen (scan_id, dir)",
        """CREATE TABLE growth (
            day TEXT NOT NULL,
            hostname TEXT NOT NULL,
            files_added INTEGER NOT NULL,
            bytes_added INTEGER NOT NULL,
            files_deleted INTEGER NOT NULL,
            bytes_deleted INTEGER NOT NULL,
            PRIMARY KEY (day, hostname)
        ) WITHOUT ROWID""",
        "INSERT INTO growth SELECT substr(recorded_at, 1, 10), hostname, COUNT(*), "
        "SUM(file_size), 0, 0 FROM files GROUP BY 1, 2",
        """CREATE TABLE blob_totals (
            id INTEGER PRIMARY KEY CHECK (id = 0),
            count INTEGER NOT NULL,
            bytes INTEGER NOT NULL
        )""",
        "INSERT INTO blob_totals SELECT 0, COUNT(*), COALESCE(SUM(size), 0) FROM blobs",
        *_BLOB_TOTALS_TRIGGERS,
    ],
    [  # 2: key lifecycle: host binding, expiry, rotation, last client address
        "ALTER TABLE api_keys ADD COLUMN hosts TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE api_keys ADD COLUMN expires_at TEXT",
        "ALTER TABLE api_keys ADD COLUMN replaced_by INTEGER",
        "ALTER TABLE api_keys ADD COLUMN last_used_ip TEXT",
    ],
    [  # 3: namespaces: a location is unique within its namespace
        f"""CREATE TABLE files_v3 (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            namespace TEXT NOT NULL,
            {", ".join(f"{name} {kind}" for name, kind in _FILE_COLUMN_TYPES)},
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            recorded_at TEXT,
            deleted_at TEXT,
            UNIQUE (hostname, filepath, namespace)
        )""",
        f"INSERT INTO files_v3 (id, namespace, {_HISTORY_COLUMNS}, created_at, updated_at, "
        f"recorded_at, deleted_at) SELECT id, 'default', {_HISTORY_COLUMNS}, created_at, "
        "updated_at, recorded_at, deleted_at FROM files",
        # Ids keep growing from where they were (pages resume by id).
        "DELETE FROM sqlite_sequence WHERE name = 'files_v3'",
        "INSERT INTO sqlite_sequence (name, seq) SELECT 'files_v3', seq FROM sqlite_sequence "
        "WHERE name = 'files'",
        "DROP TABLE files",
        "ALTER TABLE files_v3 RENAME TO files",
        "CREATE INDEX files_sha256 ON files (sha256)",
        "CREATE INDEX files_size ON files (file_size)",
        "CREATE INDEX files_recorded ON files (recorded_at)",
        "ALTER TABLE file_history ADD COLUMN namespace TEXT NOT NULL DEFAULT 'default'",
        # Host and path first: searches by host and path prefix in every namespace use
        # these indexes; a location is in few namespaces.
        "DROP INDEX history_location",
        "CREATE INDEX history_location ON file_history (hostname, filepath, namespace, valid_from)",
        "ALTER TABLE scans ADD COLUMN namespace TEXT NOT NULL DEFAULT 'default'",
        "ALTER TABLE api_keys ADD COLUMN grants TEXT NOT NULL DEFAULT '{}'",
        # Which namespaces proved they hold a content (sent its bytes). All content stored
        # so far came through the default namespace.
        """CREATE TABLE possession (
            sha256 TEXT NOT NULL,
            namespace TEXT NOT NULL,
            since TEXT NOT NULL,
            PRIMARY KEY (sha256, namespace)
        ) WITHOUT ROWID""",
        "INSERT INTO possession SELECT sha256, 'default', stored_at FROM blobs "
        "WHERE state = 'present'",
        "CREATE INDEX possession_namespace ON possession (namespace)",
        """CREATE TABLE growth_v3 (
            day TEXT NOT NULL,
            namespace TEXT NOT NULL,
            hostname TEXT NOT NULL,
            files_added INTEGER NOT NULL,
            bytes_added INTEGER NOT NULL,
            files_deleted INTEGER NOT NULL,
            bytes_deleted INTEGER NOT NULL,
            PRIMARY KEY (day, namespace, hostname)
        ) WITHOUT ROWID""",
        "INSERT INTO growth_v3 SELECT day, 'default', hostname, files_added, bytes_added, "
        "files_deleted, bytes_deleted FROM growth",
        "DROP TABLE growth",
        "ALTER TABLE growth_v3 RENAME TO growth",
    ],
    [  # 4: resumable (tus) uploads
        """CREATE TABLE uploads (
            id TEXT PRIMARY KEY,
            namespace TEXT NOT NULL,
            length INTEGER NOT NULL,
            offset INTEGER NOT NULL,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            sha256 TEXT,
            partial INTEGER NOT NULL,
            parts TEXT NOT NULL,
            metadata TEXT NOT NULL,
            staging TEXT NOT NULL,
            completed_at TEXT,
            lease_token TEXT,
            lease_until TEXT
        )""",
        "CREATE INDEX uploads_expiry ON uploads (expires_at)",
    ],
    [  # 5: what operators watch: the last verify and gc, open scans counted by index
        """CREATE TABLE maintenance_runs (
            task TEXT PRIMARY KEY,
            finished_at TEXT NOT NULL,
            problems TEXT NOT NULL
        )""",
        "CREATE INDEX scans_state ON scans (state)",
    ],
    [  # 6: possession keyed (namespace, sha256), without a second index. Every query
        # names the namespaces, and each index costs every stored content one more page
        # written at random (measured: the second index was a fifth of the server's CPU
        # on a first ingest of small files).
        """CREATE TABLE possession_v6 (
            sha256 TEXT NOT NULL,
            namespace TEXT NOT NULL,
            since TEXT NOT NULL,
            PRIMARY KEY (namespace, sha256)
        ) WITHOUT ROWID""",
        "INSERT INTO possession_v6 SELECT sha256, namespace, since FROM possession",
        "DROP TABLE possession",
        "ALTER TABLE possession_v6 RENAME TO possession",
    ],
    [  # 7: the namespace that first sent a content, and when, kept in its blob record;
        # `possession` holds rows only for the namespaces that sent it after that one.
        # A row there is one more key at a random place per content, written at every
        # commit: in a put_files + put_blobs loop of 100,000 records it was a third of
        # the WAL bytes (1,238 -> 887 MB with this layout). Rows written before stay and
        # mean what they meant.
        "ALTER TABLE blobs ADD COLUMN sender TEXT",
        "ALTER TABLE blobs ADD COLUMN sent_at TEXT",
    ],
    [  # 8: contents keyed by their 32-byte digest (not 64 hex digits), and blob records
        # kept in the order they were stored with the digest in an index of its own.
        # Every group inserts its contents' keys at random places, and each page touched
        # is written to the WAL at commit: a record keyed by its hash put a whole row
        # (~150 bytes) at a random place, the index now puts 33 bytes there while the
        # rows are appended. Measured, 75,000 blob records in groups of 750: 333 -> 146
        # MB written and 1.15 -> 0.73 s of CPU; with 1,000,000 records stored before,
        # 788 -> 443 MB and 1.72 -> 1.25 s.
        """CREATE TABLE blobs_v8 (
            sha256 BLOB NOT NULL UNIQUE,
            size INTEGER NOT NULL,
            state TEXT NOT NULL,
            stored_at TEXT NOT NULL,
            sender TEXT,
            sent_at TEXT
        )""",
        "INSERT INTO blobs_v8 SELECT digest(sha256), size, state, stored_at, sender, sent_at "
        "FROM blobs",
        "DROP TABLE blobs",  # and its triggers
        "ALTER TABLE blobs_v8 RENAME TO blobs",
        *_BLOB_TOTALS_TRIGGERS,
        """CREATE TABLE possession_v8 (
            sha256 BLOB NOT NULL,
            namespace TEXT NOT NULL,
            since TEXT NOT NULL,
            PRIMARY KEY (namespace, sha256)
        ) WITHOUT ROWID""",
        "INSERT INTO possession_v8 SELECT digest(sha256), namespace, since FROM possession",
        "DROP TABLE possession",
        "ALTER TABLE possession_v8 RENAME TO possession",
    ],
    [  # 9: records indexed by their hash's first digits (see _SHA_KEY)
        *_DROP_WHOLE_HASH_INDEXES,
        f"CREATE INDEX files_sha256_key ON files ({_SHA_KEY})",
        f"CREATE INDEX history_sha256_key ON file_history ({_SHA_KEY})",
    ],
]

#: Columns added without a schema version: an older release reads and writes the tables
#: as before (its inserts take the default, its reads ignore the column), so rolling
#: back needs no restore. ``(table, column, definition)``.
_ADDED_COLUMNS = [
    # Whether a scan's root held live records when it opened (ScanRecord.had_records).
    ("scans", "had_records", "INTEGER NOT NULL DEFAULT 1"),
]


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    for table, column, definition in _ADDED_COLUMNS:
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")


def _digest(sha256: str) -> bytes | str:
    """How the blobs and possession tables key a content: the 32 bytes its lowercase hex
    SHA-256 names. Any other string is kept as the text it is: a text value never equals
    a blob in SQLite, so it matches only a key stored as that same text."""
    try:
        digest = bytes.fromhex(sha256)
    except (ValueError, TypeError):
        return sha256
    return digest if len(digest) == 32 and digest.hex() == sha256 else sha256


def _digests(sha256s: Sequence[str]) -> list[bytes | str]:
    return [_digest(sha) for sha in sha256s]


def _hex(key: bytes | str) -> str:
    """A content's hash as the API names it: the hex of its digest (a key that was not a
    lowercase hex SHA-256 was kept as the text it was)."""
    return key.hex() if isinstance(key, bytes) else key


def _after_digest(after: str | None) -> bytes:
    """What the digests after *after* (a lowercase hex hash, or a prefix of one) sort
    after: lowercase hex sorts as the bytes it spells, and an odd last digit is padded
    with a 0 (every hash under ``"ab3"`` sorts after it, as every digest under ``ab 30``
    sorts after those two bytes)."""
    digits = after or ""
    if not re.fullmatch("[0-9a-f]*", digits):
        raise ValueError("list_blobs: after must be a lowercase hex SHA-256 or its prefix")
    return bytes.fromhex(digits + "0" * (len(digits) % 2))


#: The namespaces that hold any content, one index seek each (SQLite has no loose index
#: scan of its own): what deleting a content by its hash alone goes through.
_POSSESSING_NAMESPACES = (
    "WITH RECURSIVE held(namespace) AS ("
    "SELECT MIN(namespace) FROM possession UNION ALL "
    "SELECT (SELECT MIN(namespace) FROM possession WHERE namespace > held.namespace) "
    "FROM held WHERE held.namespace IS NOT NULL) "
    "SELECT namespace FROM held WHERE namespace IS NOT NULL"
)

_FILE_COLUMNS = ", ".join(FILE_FIELDS)
_UPSERT_FILE_WIDTH = len(FILE_FIELDS) + 4
_UPSERT_FILE_CONFLICT = (
    "ON CONFLICT (hostname, filepath, namespace) DO UPDATE SET "
    + ", ".join(f"{f} = excluded.{f}" for f in FILE_FIELDS if f not in ("hostname", "filepath"))
    + ", updated_at = excluded.updated_at, recorded_at = excluded.recorded_at, "
    "deleted_at = NULL"
)
#: Rows per multi-row upsert (17,000 variables): one statement costs less than one
#: execution per row, and a batch of 1,000 records is one (ppclient's 2,000, two: 34,000
#: variables would be over SQLite's 32,766).
_UPSERT_FILE_ROWS = 1000
_INSERT_HISTORY = (
    f"INSERT INTO file_history (file_id, {_FILE_COLUMNS}, valid_from, valid_to, deleted, "
    f"namespace) VALUES ({marks(len(FILE_FIELDS) + 5)})"
)
_ADD_GROWTH = (
    "INSERT INTO growth VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (day, namespace, hostname) "
    "DO UPDATE SET "
    "files_added = files_added + excluded.files_added, "
    "bytes_added = bytes_added + excluded.bytes_added, "
    "files_deleted = files_deleted + excluded.files_deleted, "
    "bytes_deleted = bytes_deleted + excluded.bytes_deleted"
)
# A present record stands; a new or quarantined one is (re)written.
_UPSERT_BLOB_CONFLICT = (
    "ON CONFLICT (sha256) DO UPDATE SET size = excluded.size, state = excluded.state, "
    "stored_at = excluded.stored_at WHERE blobs.state != 'present'"
)
#: The locations a scan saw, from its rows of names per directory: each the one path
#: ``inventory.split_path`` splits into that directory and name. The root directory "/"
#: also stands for the paths "name" and "//name", which split the same way.
_SEEN_PATHS = (
    "SELECT CASE WHEN s.dir = '/' THEN '/' ELSE s.dir || '/' END || j.value "
    "FROM scan_seen AS s, json_each(s.names) AS j WHERE s.scan_id = :scan "
    "UNION ALL SELECT other.prefix || j.value "
    "FROM scan_seen AS s, json_each(s.names) AS j, "
    "(SELECT '' AS prefix UNION ALL SELECT '//') AS other "
    "WHERE s.scan_id = :scan AND s.dir = '/'"
)
#: Per hash (a JSON array of them), the size of its oldest record in a namespace, or null:
#: one seek of the prefix index per hash, which stops at that hash's first record (the
#: index keeps a prefix's records in id order). Grouping every matching record by hash to take
#: the oldest sorted them all in a temporary b-tree: 5.4 against 2.3 us a hash, measured
#: on the database of a first ingest of 100,000 files (every bundle asks for each of its
#: members). The whole hash is compared as ``+sha256`` (see :func:`_same_content`).
_REGISTERED_SIZES = (
    "SELECT json_group_object(j.value, (SELECT file_size FROM files "
    f"WHERE {_SHA_KEY} = substr(j.value, 1, {_SHA_KEY_DIGITS}) AND +sha256 = j.value "
    "AND namespace = ? ORDER BY id LIMIT 1)) FROM json_each(?) AS j"
)
#: Live records under a scan's root (from the location index, in path order) that the
#: scan did not see. SQLite builds the set of seen paths once per statement: a rescan of
#: 100,000 unchanged files takes one query that returns nothing (0.14 s), where reading
#: every record back and looking its name up in Python took 0.3 s.
_UNSEEN_UNDER = (
    "SELECT id, filepath, updated_at FROM files WHERE namespace = :namespace "
    "AND hostname = :hostname AND (filepath = :exact OR (filepath >= :low AND filepath < "
    f":high)) AND filepath > :after AND deleted_at IS NULL AND filepath NOT IN ({_SEEN_PATHS}) "
    "ORDER BY filepath LIMIT :limit"
)
#: Whether a host has a live record under a root, through the location index.
_LIVE_UNDER = (
    "SELECT 1 FROM files WHERE hostname = ? AND (filepath = ? OR (filepath >= ? AND "
    "filepath < ?)) AND namespace = ? AND deleted_at IS NULL LIMIT 1"
)
_RECORD_COLUMNS = f"id, {_FILE_COLUMNS}, created_at, updated_at, recorded_at, deleted_at, namespace"
_SELECT_FILE = f"SELECT {_RECORD_COLUMNS} FROM files"
_KEY_COLUMNS = (
    "id, key_hash, name, description, scope, created_at, last_used_at, is_active, hosts, "
    "expires_at, replaced_by, last_used_ip, grants"
)
_SELECT_KEY = f"SELECT {_KEY_COLUMNS} FROM api_keys"

WriteOp = Callable[[sqlite3.Connection], Any]


def writer_checkpoints() -> CheckpointInterval:
    """The writer's checkpoint interval: the database's size in pages, within
    [WAL_CHECKPOINT_MIN_PAGES, WAL_CHECKPOINT_PAGES]. Also what bench/server_load.py's
    bare loop checkpoints by, so that its ceiling is configured as the writer is."""
    return CheckpointInterval(WAL_CHECKPOINT_MIN_PAGES, WAL_CHECKPOINT_PAGES)


@dataclass(frozen=True)
class _FilesPut:
    """One ``put_files`` request's write. Called, it runs alone; the group commit runs
    the puts of one group together where it can (:func:`_merge_puts`)."""

    namespace: str
    scan: int | None
    files: list[FileMetadata]  # one per location
    now: datetime

    def __call__(self, conn: sqlite3.Connection) -> list[StoredFile]:
        return _put_files(conn, [self])[0]


def _put_files(conn: sqlite3.Connection, puts: Sequence[_FilesPut]) -> list[list[StoredFile]]:
    """The writes of *puts* (one namespace, no location in two of them) as one: a query
    and a statement per 1,000 records for them all. Under 64 concurrent ``POST /put_file``
    requests, one statement each was most of the writer's time."""
    namespace = puts[0].namespace
    everything = [meta for put in puts for meta in put.files]
    # Read and write in one transaction of the one writer: the versions compared are the
    # ones replaced.
    current = _select_current(conn, namespace, everything)
    rows: list[list[Any]] = []
    plans = [plan_puts(put.files, current, put.now, namespace) for put in puts]
    _write_plans(conn, plans)
    for put, plan in zip(puts, plans, strict=True):
        stamp = put.now.isoformat()
        # A validated model's __dict__ holds its fields in FILE_FIELDS order.
        rows.extend(
            [*m.__dict__.values(), stamp, stamp, stamp if r is put.now else _iso(r), namespace]
            for m, r in plan.records
        )
    ids = {location: record.id for location, record in current.items()}
    ids.update(_upsert_files(conn, namespace, rows, all_new=not current))
    for put in puts:
        if put.scan is not None:
            _add_seen(conn, put.scan, [m.filepath for m in put.files])
    # Read in the same transaction: one hop to the writer thread per request.
    blobs = _select_blobs(conn, list({meta.sha256 for meta in everything}))
    return [
        [StoredFile(ids[m.hostname, m.filepath], blobs.get(m.sha256)) for m in put.files]
        for put in puts
    ]


#: Ops of a group to run as one, and the positions in the group of those they answer.
_Unit = tuple[list[int], Callable[[sqlite3.Connection], list[Any]]]


def _alone(op: WriteOp, conn: sqlite3.Connection) -> list[Any]:
    return [op(conn)]


def _merge_puts(ops: Sequence[WriteOp]) -> list[_Unit]:
    """*ops* as units to run in order: the file puts of one namespace merged while their
    locations are disjoint (two writes of one location stay apart, so the first becomes
    a past version), every other op alone. The ops of a group are concurrent requests:
    any order is one they could have run in."""
    units: list[_Unit] = []
    open_puts: dict[str, tuple[list[int], list[_FilesPut], set[tuple[str, str]]]] = {}
    for index, op in enumerate(ops):
        if not isinstance(op, _FilesPut):
            units.append(([index], functools.partial(_alone, op)))
            continue
        where = {(meta.hostname, meta.filepath) for meta in op.files}
        batch = open_puts.get(op.namespace)
        if batch is None or not batch[2].isdisjoint(where):
            batch = ([], [], set())
            open_puts[op.namespace] = batch
            units.append((batch[0], functools.partial(_put_files, puts=batch[1])))
        batch[0].append(index)
        batch[1].append(op)
        batch[2].update(where)
    return units


def _run_merged(conn: sqlite3.Connection, ops: Sequence[WriteOp]) -> list[Any]:
    outcomes: list[Any] = [None] * len(ops)
    for positions, run in _merge_puts(ops):
        for position, outcome in zip(positions, run(conn), strict=True):
            outcomes[position] = outcome
    return outcomes


def _isolated(conn: sqlite3.Connection, op: WriteOp) -> Any:
    """Run *op* in its own savepoint: its failure (returned, not raised) undoes only it."""
    conn.execute("SAVEPOINT op")
    try:
        return op(conn)
    except Exception as exc:
        conn.execute("ROLLBACK TO op")
        return exc
    finally:
        conn.execute("RELEASE op")


def _file_from_row(row: sqlite3.Row | dict[str, Any]) -> FileRecord:
    """Validated in the stored context (rules added for input since a record was written
    do not apply): pydantic's validation, in Rust, takes half the time of its
    ``model_construct`` (5 against 9 us a record), which is plain Python."""
    data = dict(row)
    data["id"] = str(data["id"])
    data["is_symlink"] = bool(data["is_symlink"])
    return FileRecord.model_validate(data, context=STORED)


def _key_from_row(row: sqlite3.Row) -> ApiKeyRecord:
    data = dict(row)
    data["id"] = str(data["id"])
    data["is_active"] = bool(data["is_active"])
    data["hosts"] = json.loads(data["hosts"])
    data["grants"] = json.loads(data["grants"])
    if data["replaced_by"] is not None:
        data["replaced_by"] = str(data["replaced_by"])
    return ApiKeyRecord.model_validate(data)


def _blob_from_row(row: sqlite3.Row) -> BlobRecord:
    return BlobRecord(
        sha256=_hex(row["sha256"]), size=row["size"], state=row["state"],
        stored_at=row["stored_at"],
    )  # fmt: skip


def _by_host(locations: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    by_host: dict[str, list[str]] = {}
    for hostname, filepath in locations:
        by_host.setdefault(hostname, []).append(filepath)
    return by_host


def _select_at(
    conn: sqlite3.Connection,
    columns: str,
    namespace: str,
    locations: Sequence[tuple[str, str]],
) -> Iterator[sqlite3.Row]:
    """Rows at these locations of *namespace*, through the unique location index."""
    for hostname, paths in _by_host(locations).items():
        for chunk in chunked(paths, _SQLITE_VARIABLE_CHUNK):
            listed = marks(len(chunk))
            sql = (
                f"SELECT {columns} FROM files WHERE namespace = ? AND hostname = ? "
                f"AND filepath IN ({listed})"
            )
            yield from conn.execute(sql, [namespace, hostname, *chunk])


def _select_current(
    conn: sqlite3.Connection, namespace: str, files: Sequence[FileMetadata]
) -> dict[tuple[str, str], FileRecord]:
    rows = _select_at(conn, _RECORD_COLUMNS, namespace, [(m.hostname, m.filepath) for m in files])
    return {(r["hostname"], r["filepath"]): _file_from_row(r) for r in rows}


@functools.cache
def _upsert_files_sql(rows: int) -> str:
    return (
        f"INSERT INTO files ({_FILE_COLUMNS}, created_at, updated_at, recorded_at, namespace) "
        f"{values(_UPSERT_FILE_WIDTH, rows)} {_UPSERT_FILE_CONFLICT}"
    )


@functools.cache
def _upsert_blobs_sql(rows: int) -> str:
    return (
        f"INSERT INTO blobs (sha256, size, state, stored_at, sender, sent_at) {values(6, rows)} "
        f"{_UPSERT_BLOB_CONFLICT}"
    )


def _upsert_files(
    conn: sqlite3.Connection, namespace: str, rows: Sequence[Sequence[Any]], *, all_new: bool
) -> dict[tuple[str, str], str]:
    """Insert or update *rows* (records of *namespace*, in the upsert's column order:
    filepath, hostname, ...; no location twice); the id of the record at each of their
    locations. *all_new*: no record is at any of them (read in this transaction).

    The ids are read back by location, a statement per 1,000 and one row each, not with
    ``RETURNING``: that hands back a row per record, and Python's sqlite3 lets go of the
    GIL at each (see :func:`putplace.sqlite_files.execute_rows`). When every location is
    new (a host's first ingest), the records are not read back: a statement that inserts all of
    its rows gives them consecutive ids in their order (``AUTOINCREMENT``: each new id is
    one more than the largest yet, and no other write runs inside the transaction), the
    last of which SQLite reports. Reading them back was 0.3 s of the writer's 4 CPU-s in
    a first ingest of 100,000 files.
    """
    if not all_new:
        execute_rows(conn, _upsert_files_sql, rows, _UPSERT_FILE_ROWS)
        return _ids_at(conn, namespace, [(row[1], row[0]) for row in rows])
    ids: dict[tuple[str, str], str] = {}
    for chunk in chunked(rows, _UPSERT_FILE_ROWS):
        (before,) = conn.execute(_LAST_FILE_ID).fetchone()
        cursor = conn.execute(_upsert_files_sql(len(chunk)), [v for row in chunk for v in row])
        if cursor.lastrowid != before + len(chunk):  # not one new id each, in order: ask
            ids.update(_ids_at(conn, namespace, [(row[1], row[0]) for row in chunk]))
            continue
        ids.update(((row[1], row[0]), str(before + 1 + i)) for i, row in enumerate(chunk))
    return ids


#: The largest id a record of files was ever given (``AUTOINCREMENT`` keeps it), 0 if none.
_LAST_FILE_ID = "SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'files'"


def _ids_at(
    conn: sqlite3.Connection, namespace: str, locations: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    ids: dict[tuple[str, str], str] = {}
    for hostname, paths in _by_host(locations).items():
        for chunk in chunked(paths, _SQLITE_VARIABLE_CHUNK):
            found = json_row(
                conn,
                "SELECT json_group_object(filepath, id) FROM files WHERE namespace = ? "
                f"AND hostname = ? AND filepath IN ({marks(len(chunk))})",
                [namespace, hostname, *chunk],
            )
            ids.update(((hostname, path), str(i)) for path, i in found.items())
    return ids


def _upsert_blobs(
    conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]
) -> tuple[list[bool], set[str]]:
    """Insert or update *rows* (a present content is left alone); whether each row wrote,
    and the keys (as :func:`_hex` and :data:`_BLOB_KEY_TEXT` show them) of the records
    there before.

    Worked out from the records' states before the upsert, read in the same transaction
    as one row per statement, rather than with ``RETURNING`` (a row per record written,
    see :func:`_upsert_files`)."""
    states = _blob_states(conn, list({sha for sha, *_ in rows}))
    existed = set(states)
    answers = []
    for sha, _, state, *_ in rows:
        # As the upsert goes: row by row, so a content sent twice writes once when its
        # first row makes it present.
        key = _hex(sha)
        wrote = states.get(key) != BlobState.present.value
        if wrote:
            states[key] = state
        answers.append(wrote)
    execute_rows(conn, _upsert_blobs_sql, rows, _SQLITE_VARIABLE_CHUNK)
    return answers, existed


#: A blobs table key as text: a digest's lowercase hex, a text key as it is (never 64
#: lowercase hex digits, see :func:`_digest`, so the two cannot meet).
_BLOB_KEY_TEXT = "CASE typeof(sha256) WHEN 'blob' THEN lower(hex(sha256)) ELSE sha256 END"


def _blob_states(conn: sqlite3.Connection, keys: Sequence[bytes | str]) -> dict[str, str]:
    """The state of each of the blob records *keys* that exists, keyed by its text."""
    states: dict[str, str] = {}
    for chunk in chunked(keys, _SQLITE_VARIABLE_CHUNK):
        states.update(
            json_row(
                conn,
                f"SELECT json_group_object({_BLOB_KEY_TEXT}, state) FROM blobs "
                f"WHERE sha256 IN ({marks(len(chunk))})",
                chunk,
            )
        )
    return states


def _write_plans(conn: sqlite3.Connection, plans: Sequence[WritePlan]) -> None:
    """The history and counter half of writes (the records are the caller's), together:
    the counters of a group of one-record puts (one host, one day) are one row, written
    once rather than once per request."""
    history = [
        (int(v.file_id), *[v.record.__dict__[f] for f in FILE_FIELDS],
         _iso(v.valid_from), _iso(v.valid_to), int(v.deleted), v.record.namespace)
        for plan in plans
        for v in plan.history
    ]  # fmt: skip
    if history:
        conn.executemany(_INSERT_HISTORY, history)
    conn.executemany(_ADD_GROWTH, Growth.combined(plan.growth for plan in plans).rows())


def _add_seen(conn: sqlite3.Connection, scan: int, filepaths: Sequence[str]) -> None:
    conn.executemany(
        "INSERT INTO scan_seen VALUES (?, ?, ?)",
        [(scan, d, json.dumps(names)) for d, names in by_directory(filepaths).items()],
    )


def _owned_by(hostname: str | None, namespaces: Sequence[str]) -> tuple[str, list[str]]:
    """A WHERE clause for rows of *hostname* (if given) in *namespaces* (if any)."""
    clauses, args = ["1"], list(namespaces)
    if namespaces:
        clauses.append(_namespace_in(namespaces))
    if hostname is not None:
        clauses.append("hostname = ?")
        args.append(hostname)
    return " AND ".join(clauses), args


def _iso(when: datetime) -> str:
    return when.isoformat()


def _upload_row(upload: Upload) -> dict[str, Any]:
    row = upload_to_row(upload)
    for name in ("created_at", "expires_at", "completed_at"):
        if row[name] is not None:
            row[name] = _iso(row[name])
    return row


_BLOB_LIST = TypeAdapter(list[BlobRecord])


def _select_blobs(conn: sqlite3.Connection, hashes: Sequence[str]) -> dict[str, BlobRecord]:
    """The blob records of *hashes* that exist, by hash: one JSON row per statement,
    validated from its text. Row by row, a group of 1,000 records of contents already
    stored (the copies in a first ingest) spent 8-15 ms of the writer's CPU here, each
    row a step that lets go of the GIL (see :func:`putplace.sqlite_files.execute_rows`)
    and a model built from it."""
    found: dict[str, BlobRecord] = {}
    for chunk in chunked(_digests(hashes), _SQLITE_VARIABLE_CHUNK):
        text = json_text(
            conn,
            f"SELECT json_group_array(json_object('sha256', {_BLOB_KEY_TEXT}, 'size', size, "
            f"'state', state, 'stored_at', stored_at)) FROM blobs "
            f"WHERE sha256 IN ({marks(len(chunk))})",
            chunk,
        )
        found.update((blob.sha256, blob) for blob in _BLOB_LIST.validate_json(text))
    return found


def _add_functions(conn: sqlite3.Connection) -> None:
    """The SQL functions the store's statements use, on *conn*."""
    # ``path_glob(?, filepath)`` for path globs, in bounded time (globs.PathGlob).
    conn.create_function("path_glob", 2, _path_glob, deterministic=True)
    # A file record's hex hash as the blobs table keys it (SQLite 3.40 has no unhex).
    conn.create_function("digest", 1, _digest, deterministic=True)


def _path_glob(pattern: str, value: str) -> bool:
    return globs.compiled(pattern).matches(value)


def _delete_blob(conn: sqlite3.Connection, digest: bytes | str) -> bool:
    conn.execute(
        f"DELETE FROM possession WHERE namespace IN ({_POSSESSING_NAMESPACES}) AND sha256 = ?",
        (digest,),
    )
    return conn.execute("DELETE FROM blobs WHERE sha256 = ?", (digest,)).rowcount > 0


def _same_content(hashes: Sequence[str]) -> tuple[str, list[str]]:
    """A condition on records (of files or file_history) having any of *hashes*, through
    the index of their prefixes (see :data:`_SHA_KEY`), and its parameters.

    The whole hash is compared as ``+sha256``: given ``sha256 = ?`` (one hash), SQLite
    puts the value for the column in the prefix's expression too, which then no longer
    names the index, and every record is scanned."""
    listed = marks(len(hashes))
    prefixes = [sha[:_SHA_KEY_DIGITS] for sha in hashes]
    return f"{_SHA_KEY} IN ({listed}) AND +sha256 IN ({listed})", [*prefixes, *hashes]


def _namespace_in(namespaces: Sequence[str]) -> str:
    """``namespace IN (?, ...)``, a mark for each of *namespaces* (their values follow)."""
    return f"namespace IN ({marks(len(namespaces))})"


def _in_namespaces(namespaces: Sequence[str]) -> str:
    """`` AND namespace IN (?, ...)`` for *namespaces* (their values follow), or nothing
    for none (any namespace)."""
    return f" AND {_namespace_in(namespaces)}" if namespaces else ""


def _referenced(
    conn: sqlite3.Connection, sha256: str, by_history: bool, namespaces: Sequence[str]
) -> bool:
    """Whether a file record (live, or with *by_history* any) in *namespaces* (empty:
    any) has this content."""
    live = "" if by_history else " AND deleted_at IS NULL"
    within = _in_namespaces(namespaces)
    content, args = _same_content([sha256])
    queries = [f"SELECT 1 FROM files WHERE {content}{live}{within} LIMIT 1"]
    if by_history:
        queries.append(f"SELECT 1 FROM file_history WHERE {content}{within} LIMIT 1")
    args += namespaces
    return any(conn.execute(q, args).fetchone() is not None for q in queries)


def _int_id(key_id: str) -> int | None:
    return int(key_id) if key_id.isdecimal() and len(key_id) < 19 else None


def _scan_number(scan_id: str | None) -> int | None:
    """A scan id as stored; ValueError for one this backend never issued."""
    if scan_id is None:
        return None
    number = _int_id(scan_id)
    if number is None:
        raise ValueError(f"unknown scan: {scan_id!r}")
    return number


def _scan_from_row(row: sqlite3.Row) -> ScanRecord:
    data = dict(row)
    data["id"] = str(data["id"])
    data["excludes"] = json.loads(data["excludes"])
    data["had_records"] = bool(data["had_records"])
    return ScanRecord.model_validate(data)


def _version_from_row(row: sqlite3.Row) -> FileVersion:
    data = dict(row)
    data["is_symlink"] = bool(data["is_symlink"])
    data["deleted"] = bool(data["deleted"])
    return FileVersion.model_validate(data, context=STORED)


#: What a search selects from each source, as the same columns: ``row_id`` and ``source``
#: order and resume pages; ``id`` is the location's record id either way.
_SEARCH_COLUMNS = {
    CURRENT: (
        f"id AS row_id, {CURRENT} AS source, id, {_FILE_COLUMNS}, created_at, updated_at, "
        "recorded_at, deleted_at, namespace FROM files AS f"
    ),
    HISTORY: (
        f"id AS row_id, {HISTORY} AS source, file_id AS id, {_FILE_COLUMNS}, "
        "valid_from AS created_at, valid_from AS updated_at, valid_from AS recorded_at, "
        "NULL AS deleted_at, namespace FROM file_history AS f"
    ),
}
#: The column a sort field is in, per source.
_SORT_COLUMNS = {
    CURRENT: {"filepath": "filepath", "file_size": "file_size", "file_mtime": "file_mtime",
              "recorded_at": "recorded_at"},
    HISTORY: {"filepath": "filepath", "file_size": "file_size", "file_mtime": "file_mtime",
              "recorded_at": "valid_from"},
}  # fmt: skip


def _search_sql(query: FileQuery, after: Cursor | None, limit: int) -> tuple[str, list[Any]]:
    """One SELECT per source (history only "as of" a time), each using the indexes its
    filters allow, merged by SQLite in the query's order."""
    sources = [CURRENT, HISTORY] if query.as_of is not None else [CURRENT]
    field = SORT_FIELDS[query.sort]
    parts: list[str] = []
    params: list[Any] = []
    for source in sources:
        clauses, args = _filters(query, source)
        if after is not None:
            clause, extra = _after(query, after, source, field)
            clauses.append(clause)
            args += extra
        where = " AND ".join(clauses) or "1"
        parts.append(f"SELECT {_SEARCH_COLUMNS[source]} WHERE {where}")
        params += args
    direction = " DESC" if query.descending else ""
    order = [f"{field}{direction}"] if field else []
    order += [f"source{direction}", f"row_id{direction}"]
    sql = " UNION ALL ".join(parts) if len(parts) > 1 else parts[0]
    return f"{sql} ORDER BY {', '.join(order)} LIMIT ?", [*params, limit]


def _filters(query: FileQuery, source: int) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []

    def add(clause: str, *values: Any) -> None:
        clauses.append(clause)
        args.extend(values)

    recorded = _SORT_COLUMNS[source]["recorded_at"]
    if query.as_of is not None:
        if source == CURRENT:
            add("recorded_at <= ? AND deleted_at IS NULL", _iso(query.as_of))
        else:
            add("valid_from <= ? AND valid_to > ? AND deleted = 0", *[_iso(query.as_of)] * 2)
    elif query.state is FileState.live:
        add("deleted_at IS NULL")
    elif query.state is FileState.deleted:
        add("deleted_at IS NOT NULL")
    if query.namespaces:
        add(_namespace_in(query.namespaces), *query.namespaces)
    if query.hostnames:
        add(f"hostname IN ({marks(len(query.hostnames))})", *query.hostnames)
    if (bounds := query.prefix_range) is not None:
        add("(filepath = ? OR (filepath >= ? AND filepath < ?))", *bounds)
    if query.path_glob is not None:
        add("path_glob(?, filepath)", query.path_glob)
    if query.sha256 is not None:
        content, hashes = _same_content([query.sha256])
        add(content, *hashes)
    for clause, value in (
        ("file_size >= ?", query.min_size),
        ("file_size <= ?", query.max_size),
        ("file_mtime >= ?", query.mtime_after),
        ("file_mtime < ?", query.mtime_before),
        (f"{recorded} >= ?", query.recorded_after and _iso(query.recorded_after)),
        (f"{recorded} < ?", query.recorded_before and _iso(query.recorded_before)),
    ):
        if value is not None:
            add(clause, value)
    if query.needs_blob:
        # Held: stored, and sent by the record's own namespace (what the blob alone says
        # is not the namespace's to know): as the blob's first sender or a later one
        # (possession); uploaded when that namespace sent it.
        later = ["p.sha256 = digest(f.sha256)", "p.namespace = f.namespace"]
        first = ["b.sender = f.namespace"]
        times: list[str] = []
        for bound, when in ((">=", query.uploaded_after), ("<", query.uploaded_before)):
            if when is not None:
                later.append(f"p.since {bound} ?")
                first.append(f"b.sent_at {bound} ?")
                times.append(_iso(when))
        blob = [
            "b.sha256 = digest(f.sha256)", "b.state = 'present'",
            f"({' AND '.join(first)} OR "
            f"EXISTS (SELECT 1 FROM possession AS p WHERE {' AND '.join(later)}))",
        ]  # fmt: skip
        negate = "NOT " if query.has_content is False else ""
        add(
            f"{negate}EXISTS (SELECT 1 FROM blobs AS b WHERE {' AND '.join(blob)})",
            *times,
            *times,
        )
    return clauses, args


def _after(
    query: FileQuery, cursor: Cursor, source: int, field: str | None
) -> tuple[str, list[Any]]:
    """Records of *source* that come after *cursor* in the query's order."""
    row_id = _int_id(cursor.id)
    if row_id is None:
        raise ValueError(f"invalid cursor: {cursor.id!r}")
    beyond = "<" if query.descending else ">"
    include, after_id = tie_rule(cursor, source, query.descending)
    tie = "0" if not include else "1" if after_id is None else f"row_id {beyond} ?"
    tie_args: list[Any] = [row_id] if include and after_id is not None else []
    if field is None:
        return f"({tie})".replace("row_id", "f.id"), tie_args
    column = _SORT_COLUMNS[source][field]
    return (
        f"(f.{column} {beyond} ? OR (f.{column} = ? AND {tie.replace('row_id', 'f.id')}))",
        [cursor.value, cursor.value, *tie_args],
    )


class SQLiteMetadataStore(MetadataStore):
    kind = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._reader_thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-reader")
        self._writer: sqlite3.Connection | None = None
        self._write_lock: int | None = None
        self._checkpoints = writer_checkpoints()
        self._reader: sqlite3.Connection | None = None
        self._pending: list[tuple[WriteOp, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    def _connect(self) -> sqlite3.Connection:
        conn = connect(self._path)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        # Lookups by lists of hashes (IN, GROUP BY) build temporary b-trees; on disk they
        # were written to /var/tmp page by page (strace: ~2,000 writes each).
        conn.execute("PRAGMA temp_store = MEMORY")
        _add_functions(conn)
        return conn

    def _open_sync(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._write_lock = os.open(f"{self._path}.writer-lock", os.O_RDWR | os.O_CREAT, 0o600)
        with setting_up(self._path):
            self._set_up()

    def _set_up(self) -> None:
        self._writer = self._connect()
        # Each batch of upserts dirties about one random page of the sha256 and location
        # indexes per record. A larger page cache keeps those indexes in memory, and fewer,
        # larger checkpoints write each page once per checkpoint rather than once per
        # commit (WAL up to ~200 MB). Measured at 150-200k records: 26,000 -> 44,000
        # upserts/s in a bare loop (checkpoints every 10,000 pages). Once the indexes
        # outgrow the cache, every insert dirties a page of its own: with 1,000,000
        # records, checkpoints every 50,000 pages rather than 10,000 took a bare loop
        # from 8,100-9,000 to 13,100 records/s, and a server's first ingest of 100,000
        # files (four alternated pairs) from 5,100-6,700 to 5,700-6,900 files/s, its
        # writes from 3.45 to 2.95 GB. A database of fewer pages than that gains little
        # from so long a WAL (see CheckpointInterval): its interval is its size, at least
        # WAL_CHECKPOINT_MIN_PAGES.
        self._writer.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
        self._migrate(self._writer)
        self._checkpoints.apply(self._writer)
        self._reader = self._connect()

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        _add_functions(conn)  # step 8 uses digest()
        conn.execute("BEGIN IMMEDIATE")  # one process migrates; the others then see it done
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                # Written by a newer release: its steps are one-way (step 8 re-keys the
                # blob records), and this release would read and write them wrongly.
                raise StoreUnavailableError(
                    f"the SQLite database is at schema version {version}, newer than this "
                    f"release knows ({len(MIGRATIONS)}): run the release that wrote it, or "
                    "restore the backup taken before upgrading"
                )
            if version == 0:  # the tables as the first release made them, if not there
                for statement in filter(str.strip, SCHEMA.split(";")):
                    conn.execute(statement)
            for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in statements:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
            for statement in _DROP_WHOLE_HASH_INDEXES:
                conn.execute(statement)
            _add_missing_columns(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def open(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._writer_thread, self._open_sync)
        except (sqlite3.Error, OSError) as exc:  # OSError: parent is not a directory
            raise StoreUnavailableError(f"cannot open SQLite database {self._path}: {exc}") from exc

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        for conn, thread in (
            (self._writer, self._writer_thread),
            (self._reader, self._reader_thread),
        ):
            if conn is not None:
                await asyncio.get_running_loop().run_in_executor(thread, conn.close)
        self._writer = self._reader = None
        self._writer_thread.shutdown(wait=True)
        if self._write_lock is not None:
            os.close(self._write_lock)
            self._write_lock = None
        self._reader_thread.shutdown(wait=True)

    def describe(self) -> dict[str, Any]:
        return {"type": self.kind, "path": str(self._path)}

    # -- plumbing --------------------------------------------------------------------
    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._reader
        if conn is None:
            raise StoreUnavailableError("SQLite store is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._reader_thread, fn, conn)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailableError(f"SQLite read failed: {exc}") from exc

    async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Queue *op* for the next group commit and wait until it is durable."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((op, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            group, self._pending = self._pending, []
            try:
                outcomes = await loop.run_in_executor(
                    self._writer_thread, self._apply_group, [op for op, _ in group]
                )
            except sqlite3.Error as exc:
                error = StoreUnavailableError(f"SQLite write failed: {exc}")
                outcomes = [error] * len(group)
            for (_, future), outcome in zip(group, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, sqlite3.IntegrityError):
                    future.set_exception(DuplicateError(str(outcome)))
                elif isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    def _apply_group(self, ops: list[WriteOp]) -> list[Any]:
        conn, lock = self._writer, self._write_lock
        if conn is None or lock is None:
            raise sqlite3.OperationalError("store is closed")
        # Writers of other processes (uvicorn workers) queue on this lock in the kernel,
        # which wakes the next one the moment it is released. SQLite's own busy handler
        # would sleep 1, 2, 5, 10... ms between tries while a commit takes ~0.3 ms.
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            outcomes = self._apply_group_locked(conn, ops)
            self._checkpoints.after_commit(conn)
            return outcomes
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

    def _apply_group_locked(self, conn: sqlite3.Connection, ops: list[WriteOp]) -> list[Any]:
        """Run *ops* in one transaction; an op that fails is rolled back alone.

        The group runs first without a savepoint per op: SQLite keeps an open savepoint's
        sub-journal in memory (``temp_store = MEMORY``) and walks it from the start at the
        end of every statement inside it, so a savepoint around a 250-row upsert made the
        op quadratic (measured: 17% of the server's CPU on a first ingest of 100,000
        files). Ops only touch the database, so when one fails the transaction is rolled
        back and the group runs again with each op in its own savepoint.
        """
        try:
            return self._in_transaction(conn, lambda: _run_merged(conn, ops))
        except Exception as exc:
            if len(ops) == 1:
                return [exc]
        return self._in_transaction(conn, lambda: [_isolated(conn, op) for op in ops])

    @staticmethod
    def _in_transaction(conn: sqlite3.Connection, run: Callable[[], list[Any]]) -> list[Any]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            outcomes = run()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return outcomes

    async def ping(self) -> bool:
        try:
            return await self._read(lambda c: c.execute("SELECT 1").fetchone()[0] == 1)
        except StoreUnavailableError:
            return False

    # -- files -----------------------------------------------------------------------
    async def put_files(
        self,
        files: Sequence[FileMetadata],
        now: datetime,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        scan_id: str | None = None,
    ) -> list[StoredFile]:
        put = _FilesPut(namespace, _scan_number(scan_id), dedupe_by_location(files), now)
        return await self._write(put)

    async def get_file(
        self, hostname: str, filepath: str, namespace: str = DEFAULT_NAMESPACE
    ) -> FileRecord | None:
        def query(conn: sqlite3.Connection) -> FileRecord | None:
            row = conn.execute(
                f"{_SELECT_FILE} WHERE namespace = ? AND hostname = ? AND filepath = ?",
                (namespace, hostname, filepath),
            ).fetchone()
            return None if row is None else _file_from_row(row)

        return await self._read(query)

    async def registered_sizes(
        self, sha256s: Collection[str], namespace: str = DEFAULT_NAMESPACE
    ) -> dict[str, int]:
        hashes = list(dict.fromkeys(sha256s))

        def query(conn: sqlite3.Connection) -> dict[str, int]:
            sizes = json_row(conn, _REGISTERED_SIZES, (namespace, orjson.dumps(hashes).decode()))
            return {sha: size for sha, size in sizes.items() if size is not None}

        return await self._read(query)

    async def search_files(self, query: FileQuery, after: Cursor | None, limit: int) -> list[Found]:
        check_limit(limit)
        sql, params = _search_sql(query, after, limit)
        field = SORT_FIELDS[query.sort]

        def run(conn: sqlite3.Connection) -> list[Found]:
            found: list[Found] = []
            for row in conn.execute(sql, params):
                data = dict(row)
                source, row_id = data.pop("source"), str(data.pop("row_id"))
                record = _file_from_row(data)
                value = None if field is None else data[field]
                found.append(Found(record, Cursor(value, source, row_id)))
            return found

        return await self._read(run)

    # -- scans, deletions and history -------------------------------------------------
    async def create_scan(
        self,
        hostname: str,
        root: str,
        excludes: Sequence[str],
        now: datetime,
        namespace: str = DEFAULT_NAMESPACE,
    ) -> ScanRecord:
        exact, low, high = prefix_range(root)
        # Read before the write, not in it: the walk through the host's index entries
        # under the root (deleted ones, other namespaces') holds no writer up. A record
        # committed meanwhile is kept by the completion until the next scan (see
        # ScanRecord.had_records), never wrongly deleted.
        had_records = await self._read(
            lambda c: (
                c.execute(_LIVE_UNDER, (hostname, exact, low, high, namespace)).fetchone()
                is not None
            )
        )

        def insert(conn: sqlite3.Connection) -> ScanRecord:
            row = conn.execute(
                "INSERT INTO scans (hostname, root, excludes, started_at, state, deleted, "
                "namespace, had_records) VALUES (?, ?, ?, ?, ?, 0, ?, ?) RETURNING *",
                (hostname, root, json.dumps(list(excludes)), _iso(now), ScanState.open.value,
                 namespace, had_records),
            ).fetchone()  # fmt: skip
            return _scan_from_row(row)

        return await self._write(insert)

    async def get_scan(self, scan_id: str) -> ScanRecord | None:
        number = _int_id(scan_id)
        if number is None:
            return None
        row = await self._read(
            lambda c: c.execute("SELECT * FROM scans WHERE id = ?", (number,)).fetchone()
        )
        return None if row is None else _scan_from_row(row)

    async def finish_scan(
        self, scan_id: str, state: ScanState, deleted: int, now: datetime
    ) -> bool:
        number = _int_id(scan_id)
        sql = "UPDATE scans SET state = ?, deleted = ?, finished_at = ? WHERE id = ? AND state = ?"
        args = (state.value, deleted, _iso(now), number, ScanState.open.value)

        def finish(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM scan_seen WHERE scan_id = ?", (number,))
            return conn.execute(sql, args).rowcount > 0

        return number is not None and await self._write(finish)

    async def mark_seen(self, scan: ScanRecord, filepaths: Sequence[str]) -> int:
        number = _scan_number(scan.id)
        assert number is not None
        paths = list(dict.fromkeys(filepaths))

        def mark(conn: sqlite3.Connection) -> int:
            _add_seen(conn, number, paths)
            locations = [(scan.hostname, p) for p in paths]
            rows = _select_at(conn, "deleted_at", scan.namespace, locations)
            return sum(1 for (deleted_at,) in rows if deleted_at is None)

        return await self._write(mark)

    async def unseen_under(self, scan: ScanRecord, after: str, limit: int) -> list[Listed]:
        exact, low, high = prefix_range(scan.root)
        args = {
            "namespace": scan.namespace, "hostname": scan.hostname, "exact": exact,
            "low": low, "high": high, "after": after, "scan": _scan_number(scan.id),
            "limit": limit,
        }  # fmt: skip
        return await self._read(
            lambda c: [
                Listed(str(i), path, datetime.fromisoformat(when))
                for i, path, when in c.execute(_UNSEEN_UNDER, args)
            ]
        )

    async def delete_files(self, records: Sequence[Listed | FileRecord], now: datetime) -> int:
        ids = [int(r.id) for r in records]
        reported = {r.id: r.updated_at for r in records}

        def delete(conn: sqlite3.Connection) -> int:
            # Only records still as read: one reported again since stays live.
            current: list[FileRecord] = []
            for chunk in chunked(ids, _SQLITE_VARIABLE_CHUNK):
                listed = marks(len(chunk))
                for row in conn.execute(
                    f"{_SELECT_FILE} WHERE id IN ({listed}) AND deleted_at IS NULL", chunk
                ):
                    record = _file_from_row(row)
                    if record.updated_at == reported[record.id]:
                        current.append(record)
            plan = plan_deletes(current, now)
            _write_plans(conn, [plan])
            conn.executemany(
                "UPDATE files SET deleted_at = ?, recorded_at = ? WHERE id = ?",
                [(at, at, int(r.id)) for r in current for at in [_iso(replaced_at(r, now))]],
            )
            return len(current)

        return await self._write(delete) if ids else 0

    async def history(
        self, hostname: str, filepath: str, namespace: str = DEFAULT_NAMESPACE
    ) -> list[FileVersion]:
        where = (namespace, hostname, filepath)

        def query(conn: sqlite3.Connection) -> list[FileVersion]:
            row = conn.execute(
                f"{_SELECT_FILE} WHERE namespace = ? AND hostname = ? AND filepath = ?", where
            ).fetchone()
            if row is None:
                return []
            current = _file_from_row(row)
            versions = [current_version(current)]
            past = conn.execute(
                f"SELECT {_FILE_COLUMNS}, valid_from, valid_to, deleted FROM file_history "
                "WHERE namespace = ? AND hostname = ? AND filepath = ? "
                "ORDER BY valid_from DESC, id DESC",
                where,
            )
            versions += [_version_from_row(r) for r in past]
            return versions

        return await self._read(query)

    async def locations(
        self, sha256: str, *, include_past: bool, namespaces: Sequence[str] = ()
    ) -> list[Location]:
        live = "" if include_past else " AND deleted_at IS NULL"
        within = _in_namespaces(namespaces)
        content, hashes = _same_content([sha256])
        sql = (
            "SELECT namespace, hostname, filepath, recorded_at, deleted_at, NULL AS valid_to "
            f"FROM files WHERE {content}{live}{within}"
        )
        args = [*hashes, *namespaces]
        if include_past:
            sql += (
                " UNION ALL SELECT namespace, hostname, filepath, valid_from, NULL, valid_to "
                f"FROM file_history WHERE {content} AND deleted = 0{within}"
            )
            args += args
        sql += " ORDER BY namespace, hostname, filepath, recorded_at"
        return await self._read(
            lambda c: [Location.model_validate(dict(r)) for r in c.execute(sql, args)]
        )

    async def totals(self, hostname: str | None, namespaces: Sequence[str] = ()) -> Totals:
        where, args = _owned_by(hostname, namespaces)

        def query(conn: sqlite3.Connection) -> Totals:
            growth = conn.execute(
                f"SELECT * FROM growth WHERE {where} ORDER BY day, namespace, hostname", args
            ).fetchall()
            count, size = conn.execute("SELECT count, bytes FROM blob_totals").fetchone()
            return Totals(growth=[tuple(r) for r in growth], blob_count=count, blob_bytes=size)

        return await self._read(query)

    async def duplicate_groups(
        self, hostname: str | None, top: int, namespaces: Sequence[str] = ()
    ) -> list[DuplicateGroup]:
        where, owned = _owned_by(hostname, namespaces)
        # One pass over the records (or one host's) and a sort by hash.
        sql = (
            "SELECT sha256, COUNT(*) AS n, MAX(file_size) AS size FROM files "
            f"WHERE deleted_at IS NULL AND {where} GROUP BY sha256 HAVING n > 1 "
            "ORDER BY (n - 1) * size DESC, sha256 LIMIT ?"
        )
        args = [*owned, top]
        return await self._read(lambda c: [DuplicateGroup(*row) for row in c.execute(sql, args)])

    async def prune_history(self, keep_versions: int, ended_before: datetime | None) -> int:
        def prune(conn: sqlite3.Connection) -> int:
            dropped = 0
            if ended_before is not None:
                dropped += conn.execute(
                    "DELETE FROM file_history WHERE valid_to < ?", (_iso(ended_before),)
                ).rowcount
            if keep_versions > 0:
                dropped += conn.execute(
                    "DELETE FROM file_history WHERE id IN (SELECT id FROM (SELECT id, "
                    "ROW_NUMBER() OVER (PARTITION BY namespace, hostname, filepath "
                    "ORDER BY valid_to DESC, id DESC) AS n FROM file_history) WHERE n > ?)",
                    (keep_versions,),
                ).rowcount
            return dropped

        return await self._write(prune)

    # -- blobs -----------------------------------------------------------------------
    async def get_blobs(self, sha256s: Collection[str]) -> dict[str, BlobRecord]:
        hashes = list(dict.fromkeys(sha256s))
        return await self._read(lambda conn: _select_blobs(conn, hashes))

    async def put_blobs(
        self, blobs: Sequence[BlobRecord], *, sent_by: str | None = None
    ) -> list[bool]:
        # A bundle's blobs share one time: formatted once, not once per blob.
        stamps = {when: _iso(when) for when in {b.stored_at for b in blobs}}
        rows = [
            (_digest(b.sha256), b.size, b.state.value, stamps[b.stored_at], sent_by,
             None if sent_by is None else stamps[b.stored_at])
            for b in blobs
        ]  # fmt: skip

        def upsert(conn: sqlite3.Connection) -> list[bool]:
            # A new blob record names *sent_by* as its sender. A content that has one
            # already (another namespace sent it first) gets a possession row instead,
            # in the same transaction: one commit, not one more fsync.
            written, existed = _upsert_blobs(conn, rows)
            if sent_by is not None and existed:
                # A record new in this write names *sent_by*: only one there before can
                # name another sender (a first ingest has none, and skips the lookups).
                by_stamp: dict[str, list[bytes | str]] = {}
                for sha, _, _, stamp, _, _ in rows:
                    if _hex(sha) in existed:
                        by_stamp.setdefault(stamp, []).append(sha)
                for stamp, hashes in by_stamp.items():
                    for chunk in chunked(hashes, _SQLITE_VARIABLE_CHUNK):
                        conn.execute(
                            "INSERT OR IGNORE INTO possession SELECT sha256, ?, ? FROM blobs "
                            f"WHERE sha256 IN ({marks(len(chunk))}) "
                            "AND sender IS NOT ?",
                            (sent_by, stamp, *chunk, sent_by),
                        )
            return written

        return await self._write(upsert) if rows else []

    async def set_blob_state(self, sha256: str, state: BlobState) -> bool:
        return await self._write(
            lambda c: (
                c.execute(
                    "UPDATE blobs SET state = ? WHERE sha256 = ?", (state.value, _digest(sha256))
                ).rowcount
                > 0
            )
        )

    async def delete_blob(self, sha256: str) -> bool:
        digest = _digest(sha256)
        return await self._write(lambda conn: _delete_blob(conn, digest))

    async def count_live(self, namespace: str, locations: Collection[tuple[str, str]]) -> int:
        wanted = list(dict.fromkeys(locations))
        return await self._read(
            lambda c: sum(
                1 for (deleted_at,) in _select_at(c, "deleted_at", namespace, wanted)
                if deleted_at is None
            )
        )  # fmt: skip

    async def add_possession(self, namespace: str, sha256s: Collection[str], now: datetime) -> None:
        rows = [(_digest(sha), namespace, _iso(now)) for sha in dict.fromkeys(sha256s)]
        if rows:
            await self._write(
                lambda c: c.executemany("INSERT OR IGNORE INTO possession VALUES (?, ?, ?)", rows)
            )

    async def possessed(
        self, namespaces: Sequence[str], sha256s: Collection[str]
    ) -> dict[str, datetime]:
        hashes = list(dict.fromkeys(sha256s))
        if not hashes or not namespaces:
            return {}
        within = marks(len(namespaces))

        def query(conn: sqlite3.Connection) -> dict[str, datetime]:
            found: dict[str, datetime] = {}
            for chunk in chunked(_digests(hashes), _SQLITE_VARIABLE_CHUNK):
                listed = marks(len(chunk))
                # Sent first (the blob's sender) or later (a possession row). One JSON
                # row: a row per content would be a step each (see _select_blobs).
                sql = (
                    f"SELECT json_group_object({_BLOB_KEY_TEXT}, since) FROM ("
                    "SELECT sha256, MIN(since) AS since FROM ("
                    f"SELECT sha256, since FROM possession WHERE sha256 IN ({listed}) "
                    f"AND namespace IN ({within}) UNION ALL "
                    f"SELECT sha256, sent_at FROM blobs WHERE sha256 IN ({listed}) "
                    f"AND sender IN ({within})) GROUP BY sha256)"
                )
                sent = json_row(conn, sql, (*chunk, *namespaces) * 2)
                found.update((sha, datetime.fromisoformat(since)) for sha, since in sent.items())
            return found

        return await self._read(query)

    async def held_totals(self, namespaces: Sequence[str]) -> tuple[int, int]:
        within = marks(len(namespaces))
        sql = (
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs WHERE state = 'present' "
            f"AND (sender IN ({within}) "
            f"OR sha256 IN (SELECT sha256 FROM possession WHERE namespace IN ({within})))"
        )
        row = await self._read(lambda c: c.execute(sql, tuple(namespaces) * 2).fetchone())
        return int(row[0]), int(row[1])

    async def list_blobs(self, *, after: str | None = None, limit: int = 1000) -> list[BlobRecord]:
        check_limit(limit)
        return await self._read(
            lambda c: [
                _blob_from_row(r)
                for r in c.execute(
                    "SELECT * FROM blobs WHERE sha256 > ? ORDER BY sha256 LIMIT ?",
                    (_after_digest(after), limit),
                )
            ]
        )

    async def is_referenced(
        self, sha256: str, *, by_history: bool = True, namespaces: Sequence[str] = ()
    ) -> bool:
        return await self._read(lambda c: _referenced(c, sha256, by_history, namespaces))

    async def delete_unreferenced_blob(self, sha256: str, *, by_history: bool = True) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            # One transaction of the one writer: no file is recorded between the two.
            if _referenced(conn, sha256, by_history, ()):
                return False
            return _delete_blob(conn, _digest(sha256))

        return await self._write(delete)

    # -- API keys --------------------------------------------------------------------
    async def add_api_key(
        self,
        *,
        key_hash: str,
        name: str,
        description: str | None,
        scope: Scope,
        created_at: datetime,
        hosts: Sequence[str] = (),
        expires_at: datetime | None = None,
        grants: Mapping[str, Scope] | None = None,
    ) -> ApiKeyRecord:
        def insert(conn: sqlite3.Connection) -> ApiKeyRecord:
            row = conn.execute(
                "INSERT INTO api_keys (key_hash, name, description, scope, created_at, "
                f"is_active, hosts, expires_at, grants) VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?) "
                f"RETURNING {_KEY_COLUMNS}",
                (key_hash, name, description, scope.value, created_at.isoformat(),
                 json.dumps(list(hosts)), None if expires_at is None else expires_at.isoformat(),
                 json.dumps({k: v.value for k, v in (grants or {}).items()})),
            ).fetchone()  # fmt: skip
            return _key_from_row(row)

        return await self._write(insert)

    async def get_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        def query(conn: sqlite3.Connection) -> ApiKeyRecord | None:
            row = conn.execute(f"{_SELECT_KEY} WHERE key_hash = ?", (key_hash,)).fetchone()
            return None if row is None else _key_from_row(row)

        return await self._read(query)

    async def get_api_key_by_id(self, key_id: str) -> ApiKeyRecord | None:
        row_id = _int_id(key_id)
        if row_id is None:
            return None

        def query(conn: sqlite3.Connection) -> ApiKeyRecord | None:
            row = conn.execute(f"{_SELECT_KEY} WHERE id = ?", (row_id,)).fetchone()
            return None if row is None else _key_from_row(row)

        return await self._read(query)

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        return await self._read(
            lambda c: [_key_from_row(r) for r in c.execute(f"{_SELECT_KEY} ORDER BY id")]
        )

    async def touch_api_key(self, key_id: str, when: datetime, ip: str | None) -> None:
        row_id = _int_id(key_id)
        if row_id is not None:
            await self._write(
                lambda c: c.execute(
                    "UPDATE api_keys SET last_used_at = ?, last_used_ip = ? WHERE id = ?",
                    (when.isoformat(), ip, row_id),
                )
            )

    async def expire_api_key(self, key_id: str, when: datetime, *, replaced_by: str) -> bool:
        row_id, new_id = _int_id(key_id), _int_id(replaced_by)
        if row_id is None or new_id is None:
            return False
        return await self._write(
            lambda c: (
                c.execute(
                    "UPDATE api_keys SET expires_at = ?, replaced_by = ? "
                    "WHERE id = ? AND is_active = 1 AND replaced_by IS NULL",
                    (when.isoformat(), new_id, row_id),
                ).rowcount
                > 0
            )
        )

    async def deactivate_api_key(self, key_id: str) -> bool:
        row_id = _int_id(key_id)
        if row_id is None:
            return False
        return await self._write(
            lambda c: (
                c.execute("UPDATE api_keys SET is_active = 0 WHERE id = ?", (row_id,)).rowcount > 0
            )
        )

    async def delete_api_key(self, key_id: str) -> bool:
        row_id = _int_id(key_id)
        if row_id is None:
            return False
        return await self._write(
            lambda c: c.execute("DELETE FROM api_keys WHERE id = ?", (row_id,)).rowcount > 0
        )

    async def count_api_keys(self) -> int:
        return await self._read(
            lambda c: int(c.execute("SELECT COUNT(*) FROM api_keys").fetchone()[0])
        )

    # -- resumable uploads -------------------------------------------------------------
    async def create_upload(self, upload: Upload) -> None:
        row = _upload_row(upload)
        sql = f"INSERT INTO uploads ({', '.join(row)}) VALUES ({marks(len(row))})"
        await self._write(lambda c: c.execute(sql, tuple(row.values())))

    async def get_upload(self, upload_id: str) -> Upload | None:
        row = await self._read(
            lambda c: c.execute("SELECT * FROM uploads WHERE id = ?", (upload_id,)).fetchone()
        )
        return None if row is None else upload_from_row(dict(row), datetime.fromisoformat)

    async def advance_upload(
        self, upload_id: str, from_offset: int, upload: Upload, token: str | None = None
    ) -> bool:
        row = _upload_row(upload)
        sql = (
            f"UPDATE uploads SET {', '.join(f'{name} = ?' for name in PROGRESS_FIELDS)} "
            "WHERE id = ? AND offset = ? AND completed_at IS NULL"
        )
        args: tuple[Any, ...] = (*(row[name] for name in PROGRESS_FIELDS), upload_id, from_offset)
        if token is not None:
            sql += " AND lease_token = ?"
            args = (*args, token)
        return bool(await self._write(lambda c: c.execute(sql, args).rowcount > 0))

    async def claim_upload(
        self, upload_id: str, token: str, now: datetime, until: datetime
    ) -> bool:
        sql = (
            "UPDATE uploads SET lease_token = ?, lease_until = ? WHERE id = ? AND "
            "(lease_until IS NULL OR lease_until <= ? OR lease_token = ?)"
        )
        args = (token, _iso(until), upload_id, _iso(now), token)
        return bool(await self._write(lambda c: c.execute(sql, args).rowcount > 0))

    async def release_upload(self, upload_id: str, token: str) -> None:
        sql = (
            "UPDATE uploads SET lease_token = NULL, lease_until = NULL "
            "WHERE id = ? AND lease_token = ?"
        )
        await self._write(lambda c: c.execute(sql, (upload_id, token)))

    async def delete_uploads(self, upload_ids: Collection[str]) -> int:
        ids = list(upload_ids)

        def delete(conn: sqlite3.Connection) -> int:
            removed = 0
            for chunk in chunked(ids, _SQLITE_VARIABLE_CHUNK):
                listed = marks(len(chunk))
                removed += conn.execute(
                    f"DELETE FROM uploads WHERE id IN ({listed})", chunk
                ).rowcount
            return removed

        return await self._write(delete) if ids else 0

    async def expired_uploads(self, now: datetime, limit: int = 1000) -> list[Upload]:
        rows = await self._read(
            lambda c: c.execute(
                "SELECT * FROM uploads WHERE expires_at <= ? ORDER BY expires_at LIMIT ?",
                (_iso(now), check_limit(limit)),
            ).fetchall()
        )
        return [upload_from_row(dict(row), datetime.fromisoformat) for row in rows]

    async def count_uploads(self) -> int:
        sql = "SELECT COUNT(*) FROM uploads WHERE completed_at IS NULL"
        return await self._read(lambda c: int(c.execute(sql).fetchone()[0]))

    # -- operations -------------------------------------------------------------------
    async def count_open_scans(self) -> int:
        sql = "SELECT COUNT(*) FROM scans WHERE state = ?"
        return await self._read(
            lambda c: int(c.execute(sql, (ScanState.open.value,)).fetchone()[0])
        )

    async def record_maintenance(self, run: MaintenanceRun) -> None:
        sql = "INSERT OR REPLACE INTO maintenance_runs VALUES (?, ?, ?)"
        row = (run.task, _iso(run.finished_at), json.dumps(dict(run.problems)))
        await self._write(lambda c: c.execute(sql, row))

    async def maintenance_runs(self) -> list[MaintenanceRun]:
        sql = "SELECT task, finished_at, problems FROM maintenance_runs ORDER BY task"
        rows = await self._read(lambda c: c.execute(sql).fetchall())
        return [
            MaintenanceRun(task, datetime.fromisoformat(when), json.loads(problems))
            for task, when, problems in rows
        ]
