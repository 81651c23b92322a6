"""Run every benchmark in turn (``make bench``); each prints a table and updates
bench/results.json. Sizes can be reduced for a quick look, e.g.
``BENCH_FILES=10000 BENCH_LARGE_MIB=256 BENCH_SECONDS=5 make bench``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import large_file, server_load, small_files

if __name__ == "__main__":
    small_files.main()
    large_file.main()
    server_load.main()
