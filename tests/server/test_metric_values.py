"""Metric values under several workers: the process id prometheus-client checks before
each write is cached, and a forked child still counts into files of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CHILD_AND_PARENT = """
import os

asked = 0
real_getpid = os.getpid


def getpid():
    global asked
    asked += 1
    return real_getpid()


os.getpid = getpid  # before prometheus-client takes it as its default
from prometheus_client import CollectorRegistry, Counter, multiprocess
from putplace import metric_values

counted = Counter("forked_work", "Work done.")
asked = 0
counted.inc()
assert asked == 0, "an increment asked the kernel for the process id"
child = os.fork()
if child == 0:
    counted.inc(5)
    os._exit(0 if metric_values.process_id() == os.getpid() else 3)
_, status = os.waitpid(child, 0)
assert os.waitstatus_to_exitcode(status) == 0, "the child kept its parent's id"
counted.inc()
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
print(registry.get_sample_value("forked_work_total"), child)
"""


def test_a_forked_child_counts_into_its_own_files(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD_AND_PARENT], env=env, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    total, child = done.stdout.split()
    assert float(total) == 7.0  # the parent's 2 and the child's 5, none lost
    assert (tmp_path / f"counter_{child}.db").exists()
