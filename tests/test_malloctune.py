"""ppclient keeps glibc's allocator to one arena (fewer fresh pages per ingest), unless
the user chose otherwise with MALLOC_ARENA_MAX."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# A dry run walks and hashes on threads of its own; the files are large enough to be
# hashed by the pool rather than the walking thread. glibc's malloc_stats() then lists
# each arena on stderr.
_RUN = """
import ctypes, sys
from putplace.client.cli import main
code = main(["--dry-run", "--no-progress", "--no-cache", "--hash-workers", "4", sys.argv[1]])
ctypes.CDLL(None).malloc_stats()
sys.exit(code)
"""

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="glibc's arenas exist only on glibc",
)


def _arenas_after_a_run(tree: Path, **env: str) -> int:
    environment = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env
    done = subprocess.run(
        [sys.executable, "-c", _RUN, str(tree)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return len(re.findall(r"^Arena \d+:", done.stderr, re.MULTILINE))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for i in range(40):
        (tmp_path / f"f{i}").write_bytes(os.urandom(64 * 1024 + i))
    return tmp_path


def test_a_client_run_allocates_from_one_arena(tree: Path) -> None:
    assert _arenas_after_a_run(tree) == 1


def test_the_users_malloc_arena_max_stands(tree: Path) -> None:
    # Without the client's setting, glibc gives its threads arenas of their own.
    assert _arenas_after_a_run(tree, MALLOC_ARENA_MAX="8") > 1
