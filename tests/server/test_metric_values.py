"""Metric values under several workers: kept in memory and written to the worker's file
within a quarter of a second and on exit; the process id prometheus-client checks before
each write is cached, and a forked child still counts into files of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, multiprocess

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
metric_values.flush()
assert asked == 0, "an increment or its write asked the kernel for the process id"
counted.inc()  # not written yet: the child must not write it as its own
child = os.fork()
if child == 0:
    counted.inc(5)
    metric_values.flush()  # os._exit skips what a normal exit writes
    os._exit(0 if metric_values.process_id() == os.getpid() else 3)
_, status = os.waitpid(child, 0)
assert os.waitstatus_to_exitcode(status) == 0, "the child kept its parent's id"
counted.inc()
metric_values.flush()  # as a scrape does first
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
print(registry.get_sample_value("forked_work_total"), child)
"""


def test_a_forked_child_counts_into_its_own_files(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD_AND_PARENT], env=env, capture_output=True, text=True,
        check=True, timeout=60,
    )  # fmt: skip
    total, child = done.stdout.split()
    assert float(total) == 8.0  # the parent's 3 and the child's 5, none lost or doubled
    assert (tmp_path / f"counter_{child}.db").exists()


COUNTING = """
import sys, time
from prometheus_client import Counter
import putplace.metric_values

Counter("answered", "Requests answered.").inc(3)
print("counted", flush=True)
if sys.argv[1] == "stay":
    time.sleep(30)
"""


def _total(directory: Path) -> float | None:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, str(directory))  # type: ignore[no-untyped-call]
    return registry.get_sample_value("answered_total")


def test_a_running_worker_s_counts_reach_other_workers_scrapes(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    worker = subprocess.Popen(
        [sys.executable, "-c", COUNTING, "stay"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline() == "counted\n"
        deadline = time.monotonic() + 5
        while _total(tmp_path) != 3.0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _total(tmp_path) == 3.0  # written while the worker still runs
    finally:
        worker.kill()
        worker.wait()


def test_a_worker_that_exits_writes_its_last_counts(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", COUNTING, "leave"], env=env, check=True, timeout=60)
    assert _total(tmp_path) == 3.0


SERVING = """
import asyncio, os
from putplace import metric_values
from putplace.server.app import create_app
from putplace.server import tally
from putplace.server.metrics import RequestMetrics

metric_values.FLUSH_SECONDS = 600  # the writer thread would not write in time
tally.FOLD_SECONDS = 600  # nor the request's tally reach its counter


async def serve_one() -> None:
    app = create_app()
    async with app.router.lifespan_context(app):
        RequestMetrics().answered({"method": "GET"}, 200, 0.01, 0, 0)  # a request no route took


asyncio.run(serve_one())
os._exit(0)  # as a worker ended by SIGTERM: no atexit
"""


def test_a_worker_that_stops_writes_its_counts_before_it_ends(tmp_path: Path) -> None:
    """uvicorn ends a worker it stops with SIGTERM by that signal, after the app's
    shutdown: the shutdown folds the tallies and writes the counts."""
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        "PUTPLACE_DATABASE_URL": f"sqlite:///{tmp_path}/putplace.db",
        "PUTPLACE_STORAGE_URL": f"file://{tmp_path}/blobs",
    }
    subprocess.run([sys.executable, "-c", SERVING], env=env, check=True, timeout=60)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, str(metrics))  # type: ignore[no-untyped-call]
    labels = {"route": "unmatched", "method": "GET", "status": "200"}
    assert registry.get_sample_value("putplace_http_requests_total", labels) == 1.0


FAILING_WRITES = """
import sys, time
from prometheus_client import CollectorRegistry, Counter, multiprocess
from putplace import metric_values

counter = Counter("answered", "Requests answered.")
value = counter._value
real_set = value._file.set
failures = 0


def set_failing(*args):
    global failures
    if failures < 3:
        failures += 1
        raise OSError("no room")
    real_set(*args)


value._file.set = set_failing
counter.inc(2)
metric_values.flush_or_log()  # a scrape: logged, not raised; the value stays queued
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    if registry.get_sample_value("answered_total") == 2.0:
        print("written after", failures, "failures")
        sys.exit(0)
    time.sleep(0.05)
sys.exit("never written")
"""


def test_a_write_that_fails_is_tried_again_and_logged_once(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", FAILING_WRITES], env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "written after 3 failures"
    # Once by the scrape's flush, once by the writer thread for its whole outage.
    assert done.stderr.count("writing this worker's values failed") == 2


ONE_VALUE_NEVER_WRITTEN = """
from prometheus_client import CollectorRegistry, Counter, multiprocess
from putplace import metric_values

broken = Counter("broken", "A value whose file cannot be written.")
answered = Counter("answered", "Requests answered.")


def never(*args):
    raise OSError("damaged")


real_set = broken._value._file.set
broken._value._file.set = never
broken.inc()  # queued first: before the fix, every value after it waited on it
answered.inc(3)
written = metric_values.flush_or_log()
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
print(written, registry.get_sample_value("answered_total"))
broken._value._file.set = real_set  # the file writable again: the value was kept
print(metric_values.flush_or_log(), metric_values._pending.changed)
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
print(registry.get_sample_value("broken_total"))
"""


def test_a_value_that_cannot_be_written_does_not_hold_back_the_others(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", ONE_VALUE_NEVER_WRITTEN], env=env, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == [
        "False 3.0",  # not all written, but "answered" was
        "True []",  # the failed one stayed queued, and is written once it can be
        "1.0",
    ]
