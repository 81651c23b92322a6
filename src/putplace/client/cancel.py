"""Stopping work in flight (hashing, uploads, retry waits) when the run is interrupted."""

from __future__ import annotations

import threading


class Cancelled(Exception):
    """Raised inside a worker once the run's stop event is set; never counted as an error."""


def check(stop: threading.Event | None) -> None:
    """Raise :class:`Cancelled` if *stop* is set."""
    if stop is not None and stop.is_set():
        raise Cancelled
