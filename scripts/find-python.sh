#!/usr/bin/env bash
# Prints the path of a Python >= 3.13 interpreter (mongoeco, the MongoDB wire server the
# tests use, needs 3.13). Honours $PYTHON. Exits 1 with a clear message when none exists.
set -u
candidates=()
[ -n "${PYTHON:-}" ] && candidates+=("$PYTHON")
candidates+=(python3.14 python3.13)
if command -v pyenv >/dev/null 2>&1; then
  root=$(pyenv root)
  for p in "$root"/versions/3.1[3-9]*/bin/python3; do candidates+=("$p"); done
fi
for p in /root/.pyenv/versions/3.1[3-9]*/bin/python3 /usr/local/bin/python3.1[3-9] /usr/bin/python3.1[3-9] python3; do
  candidates+=("$p")
done
for c in "${candidates[@]}"; do
  if "$c" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 13) else 1)' >/dev/null 2>&1; then
    "$c" -c 'import sys; print(sys.executable)'
    exit 0
  fi
done
echo "error: PutPlace's development set-up needs Python >= 3.13 (set PYTHON=/path/to/python3.13)" >&2
exit 1
