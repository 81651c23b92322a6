#!/usr/bin/env bash
# Prints the path of the interpreter the benchmarks run PutPlace on: $BENCH_PYTHON when
# set, else the distribution's own python3 (/usr/bin/python3), as a user who installs
# PutPlace on a server or a laptop gets it. Distributions build CPython with
# profile-guided and link-time optimisation (Debian also links the interpreter
# statically); a plain source build, as pyenv makes by default, has neither: PutPlace's
# first ingest of small files took 11-23% longer on one (README, Benchmarks).
# Exits 1 with a clear message when the interpreter is missing or older than 3.11.
set -u
python=${BENCH_PYTHON:-/usr/bin/python3}
if ! command -v "$python" >/dev/null 2>&1; then
  echo "error: no interpreter at $python for the benchmarks (set BENCH_PYTHON=/path/to/python3)" >&2
  exit 1
fi
if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1; then
  echo "error: PutPlace needs Python >= 3.11; $python is $("$python" -V 2>&1) (set BENCH_PYTHON)" >&2
  exit 1
fi
found=$("$python" -c 'import sys; print(sys.executable)' 2>/dev/null)
if [ -z "$found" ]; then
  echo "error: $python does not run as a Python interpreter (set BENCH_PYTHON)" >&2
  exit 1
fi
echo "$found"
