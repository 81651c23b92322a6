"""The benchmarks' ceilings run against the server's own schema and statements, so a
change to those must keep them runnable (the bare SQLite loop broke once, unnoticed, when
the upsert gained a column). Numbers are not checked: benchmarks measure, tests do not."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

from bench.common import DiskWrites, create_key, ppserver, server_env
from bench.floor import floor_client, floor_server
from bench.ingest_at_scale import fill
from bench.instructions import count
from bench.server_ingest import measure
from bench.server_load import BareUpserts, count_present, wrk
from bench.small_files import make_tree
from bench.store_ingest import files_of, run


def test_the_bare_sqlite_loop_upserts_into_the_servers_table(tmp_path: Path) -> None:
    path = tmp_path / "bare.db"
    upserts = BareUpserts(path)
    try:
        assert upserts.run(250) > 0
    finally:
        upserts.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*), MIN(namespace) FROM files").fetchone() == (
            250, "default"
        )  # fmt: skip


def test_each_round_of_the_bare_loop_adds_new_records_to_one_database(tmp_path: Path) -> None:
    """Alternated with the load, the ceiling's table grows as the server's does: a round's
    records are new ones, not the first round's written again."""
    upserts = BareUpserts(tmp_path / "bare.db")
    try:
        assert upserts.run(1200) > 0
        assert upserts.run(300) > 0
    finally:
        upserts.close()
    with sqlite3.connect(tmp_path / "bare.db") as conn:
        assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT filepath) FROM files").fetchone() == (
            1500, 1500
        )  # fmt: skip


def test_the_store_side_of_an_ingest_stores_every_record_and_each_content_once(
    tmp_path: Path,
) -> None:
    """``bench/store_ingest.py`` makes the calls of an ingest: every record, and each of
    the three quarters of distinct contents stored (in packs) and recorded as sent."""
    files = files_of(800)
    assert len({meta.sha256 for meta, _ in files}) == 600
    asyncio.run(run(800, 300, tmp_path))
    with sqlite3.connect(tmp_path / "putplace.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM files").fetchone() == (800,)
        assert conn.execute(
            "SELECT COUNT(*) FROM blobs WHERE state = 'present' AND sender = 'default'"
        ).fetchone() == (600,)
    with sqlite3.connect(tmp_path / "blobs" / "packs" / "index.sqlite3") as conn:
        assert conn.execute("SELECT COUNT(*) FROM packed").fetchone() == (600,)


def test_the_floor_client_stores_every_record_and_each_content_once_on_either_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``bench/floor.py`` times its client against its own server and against
    ``ppserver``: both must end up holding every record and each distinct content (the
    floor server writes the server's own schema with the store's own statements). Small
    batches: both senders work, and contents recur across batches."""
    monkeypatch.setenv("FLOOR_BATCH", "64")
    tree = tmp_path / "tree"
    make_tree(tree, 400)  # 300 distinct contents
    floor, real = tmp_path / "floor", tmp_path / "real"
    with floor_server(floor) as server:
        floor_client(server.url, "-", tree)
    with sqlite3.connect(floor / "putplace.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM files").fetchone() == (400,)
        assert conn.execute("SELECT COUNT(*) FROM blobs WHERE state = 'present'").fetchone() == (
            300,
        )  # fmt: skip
        assert conn.execute("SELECT COUNT(*) FROM pack_index").fetchone() == (300,)
    real.mkdir()
    env = server_env(real)
    key = create_key(real, env)
    with ppserver(real, env) as server:
        floor_client(server.url, key, tree)
    with sqlite3.connect(real / "putplace.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM files").fetchone() == (400,)
        assert conn.execute("SELECT COUNT(*) FROM blobs WHERE state = 'present'").fetchone() == (
            300,
        )  # fmt: skip


def test_the_filled_server_holds_other_hosts_records_and_their_contents(tmp_path: Path) -> None:
    """``bench/ingest_at_scale.py`` ingests into a store filled through the store itself:
    records of ten other hosts at random hashes, each content recorded as sent."""
    path = tmp_path / "filled.db"
    asyncio.run(fill(path, 2000))
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT hostname) FROM files").fetchone() == (
            2000, 10
        )  # fmt: skip
        assert conn.execute(
            "SELECT COUNT(*) FROM blobs WHERE state = 'present' AND sender = 'default'"
        ).fetchone() == (2000,)


def test_each_wrk_run_records_new_locations(tmp_path: Path) -> None:
    """The /put_file figure alternates wrk runs against one server, and the benchmark then
    checks that every acknowledged record is present: that holds only if no run rewrites
    another's locations (the first alternated version did, and reported them lost)."""
    if not shutil.which("wrk"):
        why = "wrk is not installed (`apt-get install wrk`, or `make setup`)"
        if os.environ.get("CI"):
            pytest.fail(f"{why}; in CI the benchmark's load generator must be tested")
        pytest.skip(why)
    env = server_env(tmp_path)
    key = create_key(tmp_path, env)
    with ppserver(tmp_path, env) as server:
        runs = [wrk(server.url, key, 4, 1) for _ in range(2)]
        acknowledged = sum(run["acknowledged"] for run in runs)
        assert all(run["acknowledged"] > 0 for run in runs)
        # A request wrk had in flight when it stopped is stored but not counted by wrk.
        assert acknowledged <= count_present(server.url, key) <= acknowledged + 2 * 4


def test_the_in_process_ingest_runs_and_leaves_the_environment_alone() -> None:
    """``bench/server_ingest.py`` (which ``bench/instructions.py`` counts) checks every
    answer itself, raising otherwise: each step's records ask for its 1,000 contents and
    its bundle stores them all, so contents cut from its random pool must all differ. It
    runs inside this test process, whose environment later tests read their settings
    from: it must not change it."""
    before = dict(os.environ)
    result = measure(4, 2)
    assert dict(os.environ) == before
    assert {"MainThread", "sqlite-writer"} <= set(result["threads_us_per_file"])


def test_instruction_counts_leave_out_openssl(tmp_path: Path) -> None:
    """``bench/instructions.py`` reads callgrind's totals; hashing a MiB is most of a
    small program's instructions, and all of it is OpenSSL's share, which is left out."""
    if not shutil.which("valgrind"):
        why = "valgrind is not installed (`apt-get install valgrind`, or `make setup`)"
        if os.environ.get("CI"):
            pytest.fail(f"{why}; in CI the instruction counts must be tested")
        pytest.skip(why)
    hashing = "import hashlib; hashlib.sha256(bytes(1 << 20)).digest()"
    total, without = count([sys.executable, "-c", hashing], tmp_path)
    idle_total, idle_without = count([sys.executable, "-c", "import hashlib"], tmp_path)
    assert total - idle_total > 10 * (without - idle_without) > 0


def test_the_disk_counters_see_the_writes_made_inside_the_block(tmp_path: Path) -> None:
    """The large-file benchmark reports the disk's write requests per round; the counters
    are the whole device's, so other writers can only add to what is seen."""
    writes = DiskWrites(tmp_path)
    with writes, (tmp_path / "data").open("wb") as handle:
        handle.write(os.urandom(8 << 20))
        os.fsync(handle.fileno())
    device = tmp_path.stat().st_dev
    if not Path(f"/sys/dev/block/{os.major(device)}:{os.minor(device)}/stat").exists():
        assert writes.figures is None  # tmpfs, overlay, no /sys: nothing to ask
        return
    assert writes.figures is not None
    assert writes.figures["write_requests"] >= 1
    assert writes.figures["written_kib"] >= 8 * 1024
    assert writes.figures["mean_request_kib"] > 0
