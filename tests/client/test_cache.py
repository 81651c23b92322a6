"""The client's local cache (a real SQLite file): what it answers is what was stored,
for many files at once (more than one statement's worth) and for hostile names."""

from __future__ import annotations

import os
from pathlib import Path

from putplace.client.cache import ClientCache

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
