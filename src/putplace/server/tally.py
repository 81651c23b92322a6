"""Metric observations the event loop makes on every request, tallied in plain numbers and
added to their metrics together: at most :data:`FOLD_SECONDS` later, before every scrape
and as the worker stops.

A ``POST /put_file`` counts itself, its duration and its bytes, and times its store
operation: through prometheus-client, each of those checks that its metric is observable
and takes a lock, and each duration walks its histogram's bounds in Python. Tallied, each
is an addition to a Python number, and a fold adds each series' total once, a histogram
bucket at a time.

Only the event loop's thread tallies and folds (the fold is a ``call_later`` on that
loop, and scrapes and shutdown run there too), so neither needs a lock: one loop per
process, as each uvicorn worker has. The app's start folds what an earlier loop of the
same process left (tests run several), whose scheduled fold never ran. This sits on
top of ``metric_values``, which keeps the values these fold into and writes them for
the other workers' scrapes about a quarter of a second later. A worker killed
with ``SIGKILL`` loses the last :data:`FOLD_SECONDS` of tallies on top of what
``metric_values`` says it loses.
"""

from __future__ import annotations

import asyncio
import atexit
import os
from bisect import bisect_left
from typing import Any, Protocol

from prometheus_client import Counter, Gauge, Histogram

import putplace.metric_values  # noqa: F401 (sets how values are kept, before any metric is made)

#: Longest a tally waits before it reaches its metric.
FOLD_SECONDS = 0.1


class _Tallied(Protocol):
    def _fold(self) -> None: ...

    def _forget(self) -> None: ...


_unfolded: list[_Tallied] = []
_fold_scheduled_on: asyncio.AbstractEventLoop | None = None


def _changed(tallied: _Tallied) -> None:
    """*tallied* moved since the last fold: fold it soon."""
    global _fold_scheduled_on
    _unfolded.append(tallied)
    loop = asyncio.get_running_loop()
    if _fold_scheduled_on is not loop:  # none yet, or on a loop that is gone (tests)
        loop.call_later(FOLD_SECONDS, fold)
        _fold_scheduled_on = loop


def fold() -> None:
    """Add every tally to its metric now."""
    global _fold_scheduled_on
    _fold_scheduled_on = None
    while _unfolded:
        _unfolded.pop()._fold()


atexit.register(fold)  # registered after metric_values' flush, so it runs before it


def _forked() -> None:
    """In a forked child: the tallies not folded yet are the parent's to count."""
    global _fold_scheduled_on
    _fold_scheduled_on = None
    while _unfolded:
        _unfolded.pop()._forget()


os.register_at_fork(after_in_child=_forked)


class TalliedCounter:
    """A labelled counter (or gauge: *amount* may then be negative) counted here."""

    __slots__ = ("_amount", "_changed", "_metric")

    def __init__(self, metric: Counter | Gauge) -> None:
        self._metric = metric
        self._amount = 0.0
        self._changed = False

    def inc(self, amount: float = 1) -> None:
        self._amount += amount
        if not self._changed:
            self._changed = True
            _changed(self)

    def _fold(self) -> None:
        amount, self._amount, self._changed = self._amount, 0.0, False
        if amount:
            self._metric.inc(amount)

    def _forget(self) -> None:
        self._amount, self._changed = 0.0, False


class TalliedHistogram:
    """A labelled histogram observed here, as counts per bucket and a sum."""

    __slots__ = ("_bounds", "_changed", "_counts", "_metric", "_sum")

    def __init__(self, metric: Histogram) -> None:
        self._metric = metric
        # prometheus-client keeps a histogram's bounds (the last one +Inf), its buckets'
        # values and its sum under these names; Histogram.observe has no "n at once".
        # tests/server/test_tally.py checks that tallies fold to what observe() gives.
        internals: Any = metric
        self._bounds: list[float] = list(internals._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._changed = False

    def observe(self, amount: float) -> None:
        # The first bound at or above the amount: observe()'s ``amount <= bound``.
        self._counts[bisect_left(self._bounds, amount)] += 1
        self._sum += amount
        if not self._changed:
            self._changed = True
            _changed(self)

    def _fold(self) -> None:
        counts, total = self._counts, self._sum
        self._counts, self._sum, self._changed = [0] * len(counts), 0.0, False
        internals: Any = self._metric
        internals._sum.inc(total)
        for bucket, count in zip(internals._buckets, counts, strict=True):
            if count:
                bucket.inc(count)

    def _forget(self) -> None:
        self._counts, self._sum, self._changed = [0] * len(self._counts), 0.0, False
