"""The SQLite writer's WAL follows the database's size: a small database is checkpointed
at its size, so its WAL (and the memory the page cache takes for it) stays near that
size; a large one keeps the long interval."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from putplace.metadata.sqlite import SQLiteMetadataStore
from putplace.sqlite_files import CheckpointInterval
from tests.metadata.test_conformance import at, count_files, meta

FRAME = 4096 + 24  # a WAL frame: its header and one page


async def _fill(path: Path, interval: CheckpointInterval) -> tuple[int, int, int]:
    """Write 30 batches of 200 new records; the WAL's size, the database's pages and the
    writer's checkpoint interval then."""
    store = SQLiteMetadataStore(path)
    store._checkpoints = interval
    await store.open()
    try:
        for batch in range(30):
            await store.put_files([meta("h", f"/{batch}/{i}") for i in range(200)], at(batch))
        wal = Path(f"{path}-wal").stat().st_size
        assert store._reader is not None
        (pages,) = store._reader.execute("PRAGMA page_count").fetchone()
        assert await count_files(store) == 6000  # every record there
        assert store._writer is not None
        (every,) = store._writer.execute("PRAGMA wal_autocheckpoint").fetchone()
        return wal, int(pages), int(every)
    finally:
        await store.close()


async def test_a_small_databases_wal_stays_near_its_size(tmp_path: Path) -> None:
    followed, pages, every = await _fill(
        tmp_path / "small.db", CheckpointInterval(50, 10**6, every=1)
    )
    fixed, _, _ = await _fill(tmp_path / "fixed.db", CheckpointInterval(10**6, 10**6))
    # The interval grew with the database, from 50 pages when it was empty...
    assert every == pages > 50
    # ... and the WAL was checkpointed once it held as many frames as the database has
    # pages: it never held more than that and one commit's (a few hundred pages here).
    assert followed <= (pages + 400) * FRAME
    assert fixed > 2 * followed  # never checkpointed: every commit's frames kept


def test_the_interval_is_the_database_size_within_its_bounds(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "size.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    interval = CheckpointInterval(5, 40, every=2)
    assert interval.apply(conn) == 5  # empty: the lower bound
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (5,)
    conn.execute("CREATE TABLE t (x BLOB)")
    conn.execute("INSERT INTO t VALUES (zeroblob(20 * 4096))")  # about 20 pages
    interval.after_commit(conn)
    assert interval.pages == 5  # re-read after every second group written, not every one
    interval.after_commit(conn)
    (size,) = conn.execute("PRAGMA page_count").fetchone()
    assert 5 < size < 40
    assert interval.pages == size
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (size,)
    conn.execute("INSERT INTO t VALUES (zeroblob(40 * 4096))")
    assert interval.apply(conn) == 40  # larger: the upper bound
    conn.close()


def test_bounds_out_of_order_are_refused() -> None:
    with pytest.raises(ValueError, match="out of order"):
        CheckpointInterval(10, 5)
    with pytest.raises(ValueError, match="out of order"):
        CheckpointInterval(0, 5)


async def test_a_committed_group_stands_when_reading_the_size_fails(tmp_path: Path) -> None:
    store = SQLiteMetadataStore(tmp_path / "pp.db")
    store._checkpoints = CheckpointInterval(50, 10**6, every=1)
    await store.open()
    try:

        def fails(conn: sqlite3.Connection) -> int:
            raise sqlite3.OperationalError("disk I/O error")

        store._checkpoints.apply = fails  # type: ignore[method-assign]
        stored = await store.put_files([meta("h", f"/{i}") for i in range(20)], at(0))
        assert len(stored) == 20  # answered as written...
        assert await count_files(store) == 20  # ... and written
    finally:
        await store.close()
