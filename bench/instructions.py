"""Instructions per file, counted by valgrind: a figure this shared machine cannot blur.

Not part of ``make bench`` (it has no peer, and valgrind runs code ~50 times slower). On
this 2-core machine the same first ingest takes 6.6 to 10.4 s within an hour, so a change
worth a few percent cannot be told from the noise by timing it (see the README). Counting
the instructions a run executes (``valgrind --tool=callgrind``) gives the same figure to
within 0.5% from run to run, whatever else the machine is doing, so two versions of the
code can be compared on it.

Two figures, each the difference between a larger and a smaller run of the same work
(so start-up, imports and set-up cancel out), divided by the files that make the
difference:

- server: ``bench/server_ingest.py``'s in-process first ingest (``POST /put_files``, then
  ``POST /bundles`` of the contents; no HTTP, no client), BENCH_INSTR_STEPS (default 6)
  steps of 1,000 files against 2. The driver's own work (cutting contents from a random
  pool, building the bodies) is in the count, the same for every version of the server.
- client: ``ppclient``'s first ingest (walk, read, hash, records, the local cache,
  ``POST /put_files`` and ``/bundles``) of a tree of BENCH_INSTR_FILES (default 10,000)
  files made like the small-files benchmark's, against a tree of one file, each into a
  fresh ``ppserver`` (this checkout's, running natively, not counted).

Each is also shown without OpenSSL's share: under valgrind, SHA-256 runs without the
CPU's SHA instructions (valgrind does not offer them), so its count says nothing of
what hashing costs on the machine (about 0.55 ns a byte here: 1,740 MiB/s on one core).

Compare with another checkout: ``python -m bench.instructions --against ../other``
counts both with this checkout's drivers, one after the other, and prints the ratios.
Needs valgrind (``scripts/install-test-tools.sh`` installs it).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import ROOT, create_key, have, ppserver, record, server_env, table
from bench.small_files import make_tree

PARTS = ("server", "client")
#: Shared objects whose instructions do not stand for their time on this machine.
NOT_COUNTED = ("libcrypto",)
_TOTAL = re.compile(r"^\s*([\d,]+) \([^)]*\)\s+PROGRAM TOTALS", re.M)
_LINE = re.compile(r"^\s*([\d,]+) \([^)]*\)\s+\S.*\[(?P<object>[^\]]+)\]\s*$", re.M)


def count(command: list[str], src: Path, env: dict[str, str] | None = None) -> tuple[int, int]:
    """Instructions *command* executes (with *src* first on its path), in all and without
    :data:`NOT_COUNTED`."""
    # The caller's PutPlace settings left out (as for a benchmark's ppserver), and one
    # string hash seed: dict and set layouts then do not differ from run to run.
    base = {k: v for k, v in os.environ.items() if not k.startswith("PUTPLACE_")}
    path = f"{src}{os.pathsep}{ROOT}"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        run = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *command],
            env={**base, **(env or {}), "PYTHONHASHSEED": "0", "PYTHONPATH": path},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if run.returncode:
            raise RuntimeError(f"{command[-1]} failed under valgrind: {run.stderr[-2000:]}")
        report = subprocess.run(
            ["callgrind_annotate", "--inclusive=no", "--threshold=100", "--show-percs=yes",
             str(out)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout  # fmt: skip
    match = _TOTAL.search(report)
    if match is None:
        raise RuntimeError("callgrind_annotate printed no total")
    total = _number(match.group(1))
    left_out = sum(
        _number(line.group(1))
        for line in _LINE.finditer(report)
        if any(name in line.group("object") for name in NOT_COUNTED)
    )
    return total, total - left_out


def _number(text: str) -> int:
    return int(text.replace(",", ""))


def per_file(larger: tuple[int, int], smaller: tuple[int, int], files: int) -> list[int]:
    """Instructions per file between two runs: in all, and without :data:`NOT_COUNTED`."""
    return [round((a - b) / files) for a, b in zip(larger, smaller, strict=True)]


def server(src: Path, steps: int) -> list[int]:
    def run(n: int) -> tuple[int, int]:
        code = f"from bench.server_ingest import measure; measure({n}, 4)"
        return count([sys.executable, "-c", code], src)

    return per_file(run(steps), run(2), (steps - 2) * 1000)


def client(src: Path, trees: tuple[Path, Path], files: int) -> list[int]:
    """A first ingest of each tree into a fresh server (this checkout's, not counted)."""

    def run(tree: Path) -> tuple[int, int]:
        code = "import sys; from putplace.client.cli import main; sys.exit(main())"
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            env = server_env(workdir)
            key = create_key(workdir, env)
            with ppserver(workdir, env) as running:
                command = [sys.executable, "-c", code, "--no-progress", "--url", running.url,
                           "--cache-file", f"{tmp}/cache.sqlite3", str(tree)]  # fmt: skip
                return count(command, src, {"PUTPLACE_API_KEY": key})

    return per_file(run(trees[0]), run(trees[1]), files - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", type=Path, help="another checkout to compare with")
    parser.add_argument("--part", choices=PARTS, action="append",
                        help="count only this part (repeatable; default: both)")  # fmt: skip
    args = parser.parse_args()
    parts = args.part or list(PARTS)
    steps = int(os.environ.get("BENCH_INSTR_STEPS", "6"))
    files = int(os.environ.get("BENCH_INSTR_FILES", "10000"))
    if steps < 6 or steps % 4 != 2 or files < 2:
        # Against 2 steps, 6, 10, 14... add new files and copies as the tree has them
        # (3:1); other counts would measure another mix.
        raise SystemExit(
            "BENCH_INSTR_STEPS must be 6, 10, 14, ... (2 more than a multiple of 4), "
            "BENCH_INSTR_FILES at least 2"
        )
    if not have("valgrind"):
        return
    checkouts = {"this": ROOT / "src"}
    if args.against is not None:
        other = args.against.resolve() / "src"
        if not (other / "putplace").is_dir():
            raise SystemExit(f"{args.against}: no src/putplace there")
        checkouts["against"] = other
    # Compiled first: a module compiled in the larger run of a pair and loaded from its
    # .pyc in the smaller one would count its compilation as work per file.
    for src in (*checkouts.values(), ROOT / "bench"):
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(src)], check=True)
    results: dict[str, Any] = {"server_steps": steps, "client_files": files}
    with tempfile.TemporaryDirectory() as tmp:
        trees = (Path(tmp) / "tree", Path(tmp) / "one")
        make_tree(trees[0], files)
        make_tree(trees[1], 1)
        for name, src in checkouts.items():
            results[name] = {}
            if "server" in parts:
                counts = server(src, steps)
                results[name]["server_per_file"] = counts[0]
                results[name]["server_per_file_without_openssl"] = counts[1]
            if "client" in parts:
                counts = client(src, trees, files)
                results[name]["client_per_file"] = counts[0]
                results[name]["client_per_file_without_openssl"] = counts[1]
    rows = []
    for label, key in (
        ("server, per file", "server_per_file"),
        ("  without OpenSSL", "server_per_file_without_openssl"),
        ("client, per file", "client_per_file"),
        ("  without OpenSSL", "client_per_file_without_openssl"),
    ):
        if key not in results["this"]:
            continue
        shown = f"{results['this'][key]:,}"
        if "against" in results:
            ours, theirs = results["this"][key], results["against"][key]
            results.setdefault("ratio_to_against", {})[key] = round(ours / theirs, 4)
            shown += f" ({ours / theirs:.3f}x of {theirs:,})"
        rows.append((label, shown))
    table("instructions (valgrind), this checkout" + (" vs --against" if args.against else ""),
          rows)  # fmt: skip
    record("instructions", results)


if __name__ == "__main__":
    main()
