"""SQLite's size index holds only large files (``SIZE_INDEX_FROM`` bytes or more): what
searches by size are for ("the largest first", "over 100 MB", a client asking whether a
record of a large file's size exists) still seeks it, and a small file written costs no
entry in it."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from putplace.metadata.inventory import FileQuery, FileState, SortKey
from putplace.metadata.sqlite import MIGRATIONS, SIZE_INDEX_FROM, SQLiteMetadataStore
from tests.metadata.test_conformance import at, meta

Search = Callable[[SQLiteMetadataStore], Awaitable[Any]]

LARGE_FILE_SEARCHES: dict[str, Search] = {
    "largest first": lambda s: s.search_files(
        FileQuery(sort=SortKey.size, descending=True), None, 10
    ),
    "over a size": lambda s: s.search_files(FileQuery(min_size=1 << 20), None, 10),
    # What ppclient asks before it sends a large file's bytes ahead of its hash.
    "of one size": lambda s: s.search_files(
        FileQuery(min_size=1 << 26, max_size=1 << 26, sort=SortKey.size, state=FileState.all),
        None,
        1,
    ),
}


async def traced_plans(store: SQLiteMetadataStore, search: Search) -> list[str]:
    """The query plan steps of the statements *search* ran on the store's connections."""
    traced: list[str] = []
    for conn in (store._reader, store._writer):
        assert conn is not None
        conn.set_trace_callback(traced.append)
    await search(store)
    steps: list[str] = []
    with sqlite3.connect(store._path) as conn:
        for sql in traced:
            if sql.lstrip().upper().startswith("SELECT"):
                steps += [row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
    conn.close()
    return steps


@pytest.mark.parametrize("name", LARGE_FILE_SEARCHES)
async def test_a_search_for_large_files_seeks_the_size_index(tmp_path: Path, name: str) -> None:
    store = SQLiteMetadataStore(tmp_path / "pp.sqlite3")
    await store.open()
    try:
        sizes = [100 + i for i in range(300)] + [SIZE_INDEX_FROM << i for i in range(12)]
        await store.put_files(
            [meta("h", f"/f{i}", file_size=size) for i, size in enumerate(sizes)], at(0)
        )
        steps = await traced_plans(store, LARGE_FILE_SEARCHES[name])
        assert steps
        # A page of large files never reads every record (the small files are apart).
        assert not [s for s in steps if re.match(r"SCAN (files|f)\b", s)], steps
        assert any("USING INDEX files_size_large" in s for s in steps), steps
    finally:
        await store.close()


async def test_only_large_files_are_in_the_size_index(tmp_path: Path) -> None:
    store = SQLiteMetadataStore(tmp_path / "pp.sqlite3")
    await store.open()
    try:
        sizes = [0, SIZE_INDEX_FROM - 1, SIZE_INDEX_FROM, 1 << 30]
        await store.put_files([meta("h", f"/f{s}", file_size=s) for s in sizes], at(0))
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "pp.sqlite3") as conn:
        (entries,) = conn.execute(
            f"SELECT count(*) FROM files INDEXED BY files_size_large "
            f"WHERE file_size >= {SIZE_INDEX_FROM}"
        ).fetchone()
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert entries == 2
    assert "files_size" not in names  # the index of every file's size is gone


async def test_a_version_9_database_keeps_its_records_and_their_order_by_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "pp.sqlite3"
    with monkeypatch.context() as patched:
        patched.setattr("putplace.metadata.sqlite.MIGRATIONS", MIGRATIONS[:9])
        older = SQLiteMetadataStore(path)
        await older.open()
        try:
            sizes = [5, SIZE_INDEX_FROM, 1 << 30, 70]
            await older.put_files([meta("h", f"/f{s}", file_size=s) for s in sizes], at(0))
        finally:
            await older.close()
    store = SQLiteMetadataStore(path)
    await store.open()
    try:
        found = await store.search_files(FileQuery(sort=SortKey.size, descending=True), None, 10)
        assert [f.record.file_size for f in found] == [1 << 30, SIZE_INDEX_FROM, 70, 5]
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert "files_size_large" in names
    assert "files_size" not in names
