"""Tallied metrics (``putplace.server.tally``): what they fold into their metrics is what
prometheus-client would have counted observation by observation, and they get there by
themselves while the event loop runs."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter, Histogram

from putplace.server import tally
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
