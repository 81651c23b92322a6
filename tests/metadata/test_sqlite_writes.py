"""SQLite's group commit: writes queued together share one transaction and one fsync, yet
each succeeds or fails on its own."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from putplace.metadata.sqlite import SQLiteMetadataStore
from tests.metadata.test_conformance import at, count_files, meta


class Refused(Exception):
    pass


async def test_a_write_failing_half_way_leaves_nothing_and_its_group_commits(
    tmp_path: Path,
) -> None:
    store = SQLiteMetadataStore(tmp_path / "pp.sqlite3")
    await store.open()
    try:

        def half_then_fail(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO maintenance_runs VALUES ('half', '2025-03-01T12:00:00+00:00', '{}')"
            )
            raise Refused("after its first statement")

        before, failed, after = await asyncio.gather(
            store.put_files([meta("h", f"/a/{i}") for i in range(50)], at(0)),
            store._write(half_then_fail),
            store.put_files([meta("h", f"/b/{i}") for i in range(50)], at(0)),
            return_exceptions=True,
        )
        assert isinstance(failed, Refused)
        assert len(before) == len(after) == 50  # type: ignore[arg-type]
        assert await count_files(store) == 100
        assert await store.maintenance_runs() == []
        with pytest.raises(Refused):  # alone in its group, too
            await store._write(half_then_fail)
        assert await store.maintenance_runs() == []
    finally:
        await store.close()
