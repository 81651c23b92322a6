"""``make bench`` runs PutPlace on the interpreter ``scripts/find-bench-python.sh`` names:
the distribution's own, or BENCH_PYTHON. A wrong choice must stop the benchmark with a
message that says what to set, not run it on something PutPlace does not support."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "find-bench-python.sh"


def find(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT)], env={**os.environ, **env}, capture_output=True, text=True
    )


def test_it_names_the_interpreter_bench_python_sets() -> None:
    found = find(BENCH_PYTHON=sys.executable)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == sys.executable


def test_a_python_older_than_putplace_supports_is_refused_with_what_to_set(
    tmp_path: Path,
) -> None:
    old = tmp_path / "python3"
    # A Python 3.10 stand-in: this Python, saying it is 3.10.13 when asked either way.
    old.write_text(
        "#!/bin/sh\n"
        "[ \"$1\" = -V ] && { echo 'Python 3.10.13'; exit 0; }\n"
        f'exec {sys.executable} -c "import sys; sys.version_info = (3, 10, 13); '
        'exec(sys.argv[1])" "$2"\n'
    )
    old.chmod(0o755)
    found = find(BENCH_PYTHON=str(old))
    assert found.returncode == 1
    assert found.stdout == ""
    assert "needs Python >= 3.11" in found.stderr
    assert "Python 3.10.13" in found.stderr
    assert "BENCH_PYTHON" in found.stderr


def test_a_missing_interpreter_is_refused_with_what_to_set(tmp_path: Path) -> None:
    found = find(BENCH_PYTHON=str(tmp_path / "nowhere" / "python3"))
    assert found.returncode == 1
    assert found.stdout == ""
    assert "no interpreter at" in found.stderr
    assert "BENCH_PYTHON=" in found.stderr


def test_something_that_is_not_python_is_refused_with_what_to_set() -> None:
    found = find(BENCH_PYTHON="/bin/true")  # runs, passes any check, prints nothing
    assert found.returncode == 1
    assert found.stdout == ""
    assert "does not run as a Python interpreter" in found.stderr
    assert "BENCH_PYTHON" in found.stderr


def test_without_bench_python_it_names_the_distributions_python() -> None:
    distribution = Path("/usr/bin/python3")
    if not distribution.exists():
        pytest.skip("no /usr/bin/python3 on this machine")
    env = {k: v for k, v in os.environ.items() if k != "BENCH_PYTHON"}
    found = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()).resolve() == distribution.resolve()


ROOT = SCRIPT.parents[1]


def make(venv: Path, target: str, python: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", f"BENCH_VENV={venv}", str(venv / target)],
        cwd=ROOT,
        env={**os.environ, "BENCH_PYTHON": python},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_benchmark_virtualenv_is_made_anew_when_its_interpreter_changes(
    tmp_path: Path,
) -> None:
    venv = tmp_path / "venv-bench"
    made = make(venv, ".interpreter", sys.executable)
    assert made.returncode == 0, made.stderr
    assert (venv / ".interpreter").read_text().strip() == sys.executable
    # As if installed on it: a file of the virtualenv's, and a stamp newer than
    # pyproject.toml. An interpreter that fails makes any install attempt fail loudly.
    (venv / "bin").mkdir()
    (venv / "bin" / "python").write_text("#!/bin/sh\nexit 1\n")
    (venv / "bin" / "python").chmod(0o755)
    (venv / ".installed").touch()

    unchanged = make(venv, ".installed", sys.executable)
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
    assert (venv / "bin" / "python").exists()
    assert "made anew" not in unchanged.stdout

    other = tmp_path / "python3"  # another interpreter, by name
    other.symlink_to(sys.executable)
    changed = make(venv, ".interpreter", str(other))
    assert changed.returncode == 0, changed.stderr
    assert f"made anew on {other}" in changed.stdout
    assert not (venv / "bin").exists()
    assert (venv / ".interpreter").read_text().strip() == str(other)
