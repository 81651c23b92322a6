"""A database written before the inventory (schema 0) opens, keeps every record, and
gets versions, counters and history from then on."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from putplace.metadata.base import StoreUnavailableError
from putplace.metadata.inventory import FileQuery
from putplace.metadata.sqlite import MIGRATIONS, SCHEMA, SQLiteMetadataStore
from tests.metadata.test_conformance import at, meta, put_file, sha


def old_database(path: Path) -> None:
    """Two files and a blob, as the previous release stored them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA)  # schema 0: the tables as they were
        for name, size in (("/a", 10), ("/b", 20)):
            conn.execute(
                "INSERT INTO files (filepath, hostname, ip_address, sha256, file_size, "
                "file_mode, file_uid, file_gid, file_mtime, file_atime, file_ctime, "
                "is_symlink, link_target, created_at, updated_at) "
                "VALUES (?, 'h', '', ?, ?, 33188, 0, 0, 1.0, 1.0, 1.0, 0, NULL, ?, ?)",
                (name, sha(name), size, at(0).isoformat(), at(0).isoformat()),
            )
        conn.execute(
            "INSERT INTO blobs VALUES (?, 10, 'present', ?)", (sha("/a"), at(0).isoformat())
        )
    conn.close()


async def test_an_old_database_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old_database(path)
    store = SQLiteMetadataStore(path)
    await store.open()
    try:
        record = await store.get_file("h", "/a")
        assert record is not None
        assert (record.recorded_at, record.deleted_at) == (at(0), None)
        totals = await store.totals(None)
        assert totals.growth == [(at(0).date().isoformat(), "default", "h", 2, 30, 0, 0)]
        assert (totals.blob_count, totals.blob_bytes) == (1, 10)
        (stored,) = (await store.get_blobs([sha("/a")])).values()
        assert (stored.sha256, stored.size, stored.stored_at) == (sha("/a"), 10, at(0))
        held = await store.search_files(FileQuery(has_content=True), None, 10)
        assert [f.record.filepath for f in held] == ["/a"]
        await put_file(store, meta("h", "/a", file_size=11, sha256=sha("new")), at(5))
        assert [v.file_size for v in await store.history("h", "/a")] == [11, 10]
        found = await store.search_files(FileQuery(), None, 10)
        assert [f.record.filepath for f in found] == ["/a", "/b"]
    finally:
        await store.close()
    reopened = SQLiteMetadataStore(path)  # a second open migrates nothing twice
    await reopened.open()
    try:
        day = at(0).date().isoformat()  # counted once, plus the 1-byte growth of /a
        assert (await reopened.totals(None)).growth == [(day, "default", "h", 2, 31, 0, 0)]
        # A location is now unique per namespace, and ids go on from where they were.
        ((other_id, _),) = await reopened.put_files([meta("h", "/a")], at(6), namespace="x")
        assert int(other_id) > 2
        again = await reopened.get_file("h", "/a")
        assert again is not None
        assert (again.namespace, again.file_size) == ("default", 11)
        # Content stored before namespaces counts as sent by the default one, then.
        assert await reopened.possessed(["default"], [sha("/a")]) == {sha("/a"): at(0)}
    finally:
        await reopened.close()


async def test_a_database_of_a_newer_release_is_refused(tmp_path: Path) -> None:
    """Migrations are one-way: a release must not read or write a schema it does not
    know (the blob records' keys changed in step 8)."""
    path = tmp_path / "newer.db"
    old_database(path)
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    store = SQLiteMetadataStore(path)
    with pytest.raises(StoreUnavailableError, match="newer than this release knows"):
        await store.open()
    await store.close()


async def test_a_scans_column_added_without_a_version_keeps_older_releases_working(
    tmp_path: Path,
) -> None:
    """``had_records`` is added without raising the schema version, so an older release
    (which refuses a newer one) still opens the database and rolling back needs no
    restore: its inserts take the default (its scans are completed as before), and a
    database without the column gets it at the next open."""
    assert not any("had_records" in statement for step in MIGRATIONS for statement in step)
    path = tmp_path / "pp.sqlite3"
    store = SQLiteMetadataStore(path)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        conn.execute(  # as the older release writes a scan
            "INSERT INTO scans (hostname, root, excludes, started_at, state, deleted, "
            "namespace) VALUES ('h', '/srv', '[]', ?, 'open', 0, 'default')",
            (at(0).isoformat(),),
        )
        (older,) = conn.execute("SELECT last_insert_rowid()").fetchone()
        conn.execute("ALTER TABLE scans DROP COLUMN had_records")  # as the older made it
    conn.close()
    reopened = SQLiteMetadataStore(path)
    await reopened.open()
    try:
        scan = await reopened.get_scan(str(older))
        assert scan is not None
        assert scan.had_records is True
        assert (await reopened.create_scan("h", "/srv", [], at(1))).had_records is False
    finally:
        await reopened.close()
