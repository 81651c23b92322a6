"""The benchmarks' ceilings run against the server's own schema and statements, so a
change to those must keep them runnable (the bare SQLite loop broke once, unnoticed, when
the upsert gained a column). Numbers are not checked: benchmarks measure, tests do not."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bench.server_load import bare_sqlite


def test_the_bare_sqlite_loop_upserts_into_the_servers_table(tmp_path: Path) -> None:
    path = tmp_path / "bare.db"
    assert bare_sqlite(path, 250) > 0
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*), MIN(namespace) FROM files").fetchone() == (
            250, "default"
        )  # fmt: skip
