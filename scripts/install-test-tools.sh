#!/usr/bin/env bash
# Install the system tools the benchmarks and tests use as peers or services:
#   restic (backup peer), wrk (HTTP load generator), redis-server, promtool (checks and
#   unit-tests the Prometheus alert rules in deploy/prometheus), valgrind (counts the
#   instructions of bench/instructions.py).
# Idempotent and quick when they are present: only `command -v` checks run then.
# When they cannot be installed (no apt-get, or not root and no sudo) it names the
# missing packages and exits 0, except in CI (CI=true), where it exits 1 so nothing is
# skipped silently.
set -euo pipefail

# command=Debian package that provides it.
TOOLS=(restic=restic wrk=wrk redis-server=redis-server promtool=prometheus valgrind=valgrind)

missing=()
for entry in "${TOOLS[@]}"; do
  tool=${entry%%=*} package=${entry#*=}
  command -v "$tool" >/dev/null 2>&1 && continue
  [[ " ${missing[*]} " == *" $package "* ]] || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

cannot_install() {
  echo "install-test-tools: missing ${missing[*]}: $1;" \
       "install them yourself (Debian: apt-get install ${missing[*]})." >&2
  if [ "${CI:-}" = "true" ]; then
    exit 1
  fi
  echo "install-test-tools: benchmarks and tests that need them will be skipped." >&2
  exit 0
}

command -v apt-get >/dev/null 2>&1 || cannot_install "no apt-get on this machine"
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || cannot_install "not root and no sudo"
  SUDO=(sudo)
fi
echo "install-test-tools: installing ${missing[*]}" >&2
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
