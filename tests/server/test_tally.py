"""Tallied metrics (``putplace.server.tally``): what they fold into their metrics is what
prometheus-client would have counted observation by observation, they get there by
themselves while the event loop runs (or at the next app's start, if their loop closed),
and a forked child does not count its parent's."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram

from putplace.config import Settings
from putplace.server import tally
from putplace.server.app import create_app
from putplace.server.tally import TalliedCounter, TalliedHistogram

#: Below, on and just above a bound, beyond the last finite bound, and zero.
DURATIONS = (0.0, 0.0004, 0.001, 0.0010001, 0.07, 0.25, 9.99, 10.0, 10.5, 3600.0)
BOUNDS = (0.001, 0.01, 0.25, 10.0)


def _samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    """Every sample but the creation times (which differ between any two metrics)."""
    return {
        (sample.name, str(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def _metrics() -> tuple[CollectorRegistry, Histogram, Counter]:
    registry = CollectorRegistry()
    histogram = Histogram("took", "", ["route"], buckets=BOUNDS, registry=registry)
    counter = Counter("bytes", "", ["route"], registry=registry)
    return registry, histogram, counter


async def test_tallies_fold_to_what_each_observation_would_have_counted() -> None:
    direct, direct_histogram, direct_counter = _metrics()
    tallied, histogram, counter = _metrics()
    durations = TalliedHistogram(histogram.labels("/put_file"))
    received = TalliedCounter(counter.labels("/put_file"))
    for amount in DURATIONS:
        direct_histogram.labels("/put_file").observe(amount)
        durations.observe(amount)
        direct_counter.labels("/put_file").inc(amount + 1)
        received.inc(amount + 1)
    assert _samples(tallied) != _samples(direct)  # not folded yet
    tally.fold()
    assert _samples(tallied) == _samples(direct)
    assert _samples(direct)[("took_count", "[('route', '/put_file')]")] == len(DURATIONS)
    durations.observe(0.5)  # a fold starts the tally again from nothing
    direct_histogram.labels("/put_file").observe(0.5)
    tally.fold()
    assert _samples(tallied) == _samples(direct)


async def test_tallies_reach_their_metrics_without_a_scrape() -> None:
    """Another worker's scrape reads what this one last wrote: its tallies must get
    there with no scrape or shutdown of its own."""
    registry, histogram, counter = _metrics()
    TalliedCounter(counter.labels("/files")).inc(3)
    TalliedHistogram(histogram.labels("/files")).observe(0.002)
    await asyncio.sleep(tally.FOLD_SECONDS * 3)
    assert registry.get_sample_value("bytes_total", {"route": "/files"}) == 3
    assert registry.get_sample_value("took_bucket", {"route": "/files", "le": "0.01"}) == 1
    assert registry.get_sample_value("took_bucket", {"route": "/files", "le": "0.001"}) == 0


def test_tallies_a_closed_loop_left_reach_their_metrics_when_the_app_starts(
    tmp_path: Path,
) -> None:
    """A fold scheduled on an event loop that closed before it ran never runs: the next
    app's start folds what was left (each uvicorn worker has one loop; tests run many)."""
    registry, _, counter = _metrics()
    left = TalliedCounter(counter.labels("/files"))

    async def count_and_close() -> None:
        left.inc(2)

    asyncio.run(count_and_close())
    assert registry.get_sample_value("bytes_total", {"route": "/files"}) == 0
    app = create_app(
        Settings(
            database_url=f"sqlite:///{tmp_path}/putplace.db",
            storage_url=f"file://{tmp_path}/blobs",
        )
    )

    async def serve() -> float | None:
        async with app.router.lifespan_context(app):
            return registry.get_sample_value("bytes_total", {"route": "/files"})

    assert asyncio.run(serve()) == 2


FORKED = """
import asyncio, os
from prometheus_client import CollectorRegistry, Counter, multiprocess
from putplace import metric_values
from putplace.config import Settings
from putplace.server import tally
from putplace.server.app import create_app

counted = tally.TalliedCounter(Counter("tallied_work", "Work done."))


async def count() -> None:
    counted.inc(2)  # not folded yet as the process forks


asyncio.run(count())
child = os.fork()
if child == 0:
    tally.fold()
    metric_values.flush()
    os._exit(0)
os.waitpid(child, 0)
tally.fold()
metric_values.flush()
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
print(registry.get_sample_value("tallied_work_total"))
"""


def test_a_forked_child_does_not_count_its_parents_tallies(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", FORKED], env=env, capture_output=True, text=True, check=True,
        timeout=60,
    )  # fmt: skip
    assert float(done.stdout) == 2.0  # the parent's, once
