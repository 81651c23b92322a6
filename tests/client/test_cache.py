"""The client's local cache (a real SQLite file): what it answers is what was stored,
for many files at once (more than one statement's worth) and for hostile names."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from putplace.client.cache import CacheBusyError, ClientCache, listing_signature
from putplace.client.scanner import FileEntry

HOSTILE = [
    'quote" and \\ backslash',
    "new\nline\ttab",
    "caf%E9 100%25.txt",
    "snow ☃ and emoji 🦀",
    '{"json": [1, 2]}',
    "<script>alert(1)</script>",
    "'; DROP TABLE sent; --",
]


T0 = 1_700_000_000_000_000_000


def stat_like(ino: int, *, size: int = 10, mtime_ns: int = T0) -> os.stat_result:
    """A regular file's stat on device 2049 (the nanosecond times are keyword fields)."""
    seconds = mtime_ns // 1_000_000_000
    return os.stat_result(
        (0o100644, ino, 2049, 1, 0, 0, size, seconds, seconds, seconds),
        {"st_mtime_ns": mtime_ns, "st_ctime_ns": mtime_ns, "st_atime_ns": mtime_ns},
    )


def test_fingerprints_of_many_hostile_paths_come_back_as_stored(tmp_path: Path) -> None:
    paths = [f"/data/{i:05d}/{HOSTILE[i % len(HOSTILE)]}" for i in range(1_300)]
    cache = ClientCache(tmp_path / "cache.db")
    cache.mark_all_sent("srv", "host", [(p, f"fp|{p}|{i}") for i, p in enumerate(paths)])
    cache.commit()
    cache.close()

    reopened = ClientCache(tmp_path / "cache.db")
    found = reopened.sent_fingerprints("srv", "host", [*paths, "/never/sent"])
    assert found == {p: f"fp|{p}|{i}" for i, p in enumerate(paths)}
    assert reopened.sent_fingerprints("other-server", "host", paths) == {}
    assert reopened.sent_fingerprints("srv", "other-host", paths[:3]) == {}


def test_the_cache_says_whether_it_holds_anything_of_a_host_on_a_server(tmp_path: Path) -> None:
    """What lets a first run skip asking it about each file."""
    cache = ClientCache(tmp_path / "cache.db")
    assert not cache.holds_hashes()
    assert not cache.holds_records("srv", "host")
    cache.store_hash(stat_like(1), "a" * 64)
    cache.remember_listings("srv", "host", [("/data", "signature")])
    assert cache.holds_hashes()
    assert cache.holds_records("srv", "host")
    cache.mark_all_sent("srv", "other-host", [("/data/f", "fp")])
    assert cache.holds_records("srv", "other-host")
    assert not cache.holds_records("other-server", "host")
    cache.close()


def test_a_hash_is_found_only_while_the_files_identity_is_unchanged(tmp_path: Path) -> None:
    cache = ClientCache(tmp_path / "cache.db")
    stats = [stat_like(1_000 + i, size=i) for i in range(1_200)]
    cache.store_hashes([(st, f"{i:064x}") for i, st in enumerate(stats)])
    assert cache.lookup_hashes(stats) == [f"{i:064x}" for i in range(1_200)]

    touched = stat_like(1_000, size=0, mtime_ns=T0 + 1)
    grown = stat_like(1_001, size=2)
    other = stat_like(5_000)
    assert cache.lookup_hashes([touched, grown, other, stats[2]]) == [
        None, None, None, f"{2:064x}"
    ]  # fmt: skip

    cache.store_hashes([(touched, "f" * 64)])  # the file changed: its new hash replaces
    assert cache.lookup_hashes([touched, stats[0]]) == ["f" * 64, None]


def test_a_directory_is_unchanged_only_with_the_signature_remembered(tmp_path: Path) -> None:
    directories = [f"/data/{i:04d}/{HOSTILE[i % len(HOSTILE)]}" for i in range(1_100)]
    cache = ClientCache(tmp_path / "cache.db")
    cache.remember_listings("srv", "host", [(d, f"sig {i}") for i, d in enumerate(directories)])
    cache.commit()
    cache.close()

    reopened = ClientCache(tmp_path / "cache.db")
    asked = {d: f"sig {i}" for i, d in enumerate(directories)}
    asked[directories[5]] = "changed"
    asked["/never/listed"] = "sig 0"
    assert reopened.unchanged_listings("srv", "host", asked) == set(directories) - {directories[5]}
    assert reopened.unchanged_listings("other-server", "host", asked) == set()
    assert reopened.unchanged_listings("srv", "other-host", asked) == set()
    reopened.forget_listings("srv", "host", directories[:10])
    assert reopened.unchanged_listings("srv", "host", asked) == set(directories[10:])


def test_a_listing_signature_changes_with_anything_a_record_carries() -> None:
    entries = [FileEntry(f"/d/{name}", stat_like(i)) for i, name in enumerate(HOSTILE)]
    signature = listing_signature(entries, "10.0.0.1")
    assert listing_signature(list(entries), "10.0.0.1") == signature
    assert listing_signature(entries, "10.0.0.2") != signature  # records name the address
    changed = [
        [*entries[:-1]],  # a file gone
        [*entries, FileEntry("/d/new", stat_like(99))],  # a file added
        [FileEntry("/d/renamed", entries[0].stat), *entries[1:]],
        [FileEntry(entries[0].path, stat_like(0, size=11)), *entries[1:]],
        [FileEntry(entries[0].path, stat_like(0, mtime_ns=T0 + 1)), *entries[1:]],
    ]
    for other in changed:
        assert listing_signature(other, "10.0.0.1") != signature


def test_a_cache_file_serves_one_run_at_a_time(tmp_path: Path) -> None:
    # Two runs on one file (an overlapping cron job) failed part-way with "database is
    # locked": the second is now refused at once, and the first run's work stands.
    path = tmp_path / "cache.db"
    first = ClientCache(path)
    first.store_hashes([(stat_like(1), "a" * 64)])
    with pytest.raises(CacheBusyError, match=f"another ppclient run is using the cache {path}"):
        ClientCache(path)
    first.close()

    second = ClientCache(path)
    assert second.lookup_hashes([stat_like(1)]) == ["a" * 64]
    second.close()


def test_a_cache_that_fails_to_open_lets_the_next_run_in(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    path.mkdir()  # not a database: SQLite cannot open it
    with pytest.raises(sqlite3.Error):
        ClientCache(path)
    path.rmdir()
    ClientCache(path).close()
