"""SQLite finds a content's records through the index of their hashes' prefixes: every
lookup by hash (who has it, is it still referenced, search by hash, which of these a
namespace knows) seeks that index rather than reading every record, which on a fleet's
millions of records is the difference between a millisecond and seconds."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from putplace.metadata.inventory import FileQuery
from putplace.metadata.sqlite import MIGRATIONS, SQLiteMetadataStore
from tests.metadata.test_conformance import at, meta, put_file, sha

Lookup = Callable[[SQLiteMetadataStore, str], Awaitable[Any]]

LOOKUPS: dict[str, Lookup] = {
    "locations": lambda s, h: s.locations(h, include_past=True),
    "locations in namespaces": lambda s, h: s.locations(h, include_past=True, namespaces=["x"]),
    "registered_sizes": lambda s, h: s.registered_sizes([h, sha("other")]),
    "search by hash": lambda s, h: s.search_files(FileQuery(sha256=h), None, 10),
    "search by hash as of": lambda s, h: s.search_files(FileQuery(sha256=h, as_of=at(5)), None, 10),
    "is_referenced": lambda s, h: s.is_referenced(h),
    "delete_unreferenced_blob": lambda s, h: s.delete_unreferenced_blob(h),
}


def plans(path: Path, statements: list[str]) -> list[str]:
    """The query plan steps of *statements* (as traced, values in place) that read
    records of files or file_history."""
    steps: list[str] = []
    with sqlite3.connect(path) as conn:
        for sql in statements:
            if "sha256" in sql and ("files" in sql or "file_history" in sql):
                steps += [row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
    return steps


@pytest.mark.parametrize("name", LOOKUPS)
async def test_a_lookup_by_hash_seeks_the_prefix_index(tmp_path: Path, name: str) -> None:
    path = tmp_path / "pp.sqlite3"
    store = SQLiteMetadataStore(path)
    await store.open()
    try:
        wanted = sha("wanted")
        await store.put_files([meta("h", f"/f{i}", sha256=sha(i)) for i in range(200)], at(0))
        await put_file(store, meta("h", "/f7", sha256=wanted), at(1))
        await put_file(store, meta("h", "/f7", sha256=sha("later")), at(9))  # /f7's past
        traced: list[str] = []
        for conn in (store._reader, store._writer):
            assert conn is not None
            conn.set_trace_callback(traced.append)
        await LOOKUPS[name](store, wanted)
        steps = plans(path, traced)
        assert steps, traced  # the lookup read records
        assert not [s for s in steps if re.match(r"SCAN (files|file_history|f)\b", s)], steps
        assert all("sha256_key" in s for s in steps if s.startswith("SEARCH")), steps
    finally:
        await store.close()


async def test_the_answers_match_the_whole_hash_not_its_prefix(tmp_path: Path) -> None:
    """Two contents whose hashes share the indexed prefix stay apart."""
    store = SQLiteMetadataStore(tmp_path / "pp.sqlite3")
    await store.open()
    try:
        one, two = "ab" * 8 + "0" * 48, "ab" * 8 + "1" * 48
        await store.put_files(
            [
                meta("h", "/one", sha256=one, file_size=1),
                meta("h", "/two", sha256=two, file_size=2),
            ],
            at(0),
        )
        assert [x.filepath for x in await store.locations(one, include_past=True)] == ["/one"]
        unrecorded = "ab" * 8 + "2" * 48
        assert await store.registered_sizes([one, two, unrecorded]) == {one: 1, two: 2}
        found = await store.search_files(FileQuery(sha256=two), None, 10)
        assert [f.record.filepath for f in found] == ["/two"]
        assert not await store.is_referenced("ab" * 8 + "2" * 48)
    finally:
        await store.close()


async def open_and_close(path: Path) -> None:
    store = SQLiteMetadataStore(path)
    await store.open()
    await store.close()


def assert_only_the_prefix_indexes(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        indexes = {name for (name,) in rows}
    finally:
        conn.close()
    assert {"files_sha256_key", "history_sha256_key"} <= indexes
    assert not {"files_sha256", "history_sha256"} & indexes


async def test_reopening_keeps_only_the_prefix_index(tmp_path: Path) -> None:
    """The first release's whole-hash index is not made again at every open."""
    path = tmp_path / "pp.sqlite3"
    await open_and_close(path)
    await open_and_close(path)
    assert_only_the_prefix_indexes(path)


async def test_a_whole_hash_index_made_again_by_an_older_release_is_dropped(
    tmp_path: Path,
) -> None:
    """An older release started on the database (a rollback, an old worker of a rolling
    upgrade) makes its whole-hash indexes again before it refuses the newer schema; the
    next open drops them, or every write would pay for them for good."""
    path = tmp_path / "pp.sqlite3"
    await open_and_close(path)
    with sqlite3.connect(path) as conn:  # what the older release's first statements do
        conn.execute("CREATE INDEX IF NOT EXISTS files_sha256 ON files (sha256)")
        conn.execute("CREATE INDEX IF NOT EXISTS history_sha256 ON file_history (sha256)")
    conn.close()
    await open_and_close(path)
    assert_only_the_prefix_indexes(path)


async def test_a_version_8_database_without_the_whole_hash_index_migrates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Step 9 drops the whole-hash indexes only if they are there (an operator may have
    dropped them by hand)."""
    path = tmp_path / "pp.sqlite3"
    with monkeypatch.context() as patched, sqlite3.connect(path) as conn:
        patched.setattr("putplace.metadata.sqlite.MIGRATIONS", MIGRATIONS[:8])
        SQLiteMetadataStore._migrate(conn)  # which drops any whole-hash index
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 8
        assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name LIKE '%sha256%'").fetchall()
    conn.close()
    store = SQLiteMetadataStore(path)
    await store.open()
    try:
        await store.put_files([meta("h", "/a", sha256=sha("a"))], at(0))
        assert [x.filepath for x in await store.locations(sha("a"), include_past=True)] == ["/a"]
    finally:
        await store.close()
