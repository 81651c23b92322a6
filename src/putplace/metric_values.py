"""How metric values are kept under several server workers: in memory, written to
prometheus-client's per-process files about :data:`FLUSH_SECONDS` after they change.

With ``PROMETHEUS_MULTIPROC_DIR`` set, prometheus-client keeps each value in a
per-process memory-mapped file that ``/metrics`` sums over the workers, and writes the
file at every increment: 0.7 us an increment, 1.5 us a histogram observation, against
0.1 us for a value in memory. A ``POST /put_file`` made about fifteen (its counters,
duration, in-flight gauge and the store operations' timers), so writing them all was a
third of what metrics cost a request. (Those per-request values are now tallied on the
event loop first and added here every 0.1 s: ``putplace.server.tally``.) Here an
increment changes the value in memory, and a thread writes the values that changed since
the last write (a few per route, not one per request) :data:`FLUSH_SECONDS` later. A
scrape writes the answering worker's own values first, so it sees every request that
worker answered, and the other workers' as of about :data:`FLUSH_SECONDS` before. A
worker writes its values as it stops (the app's shutdown, and atexit); one killed
(``SIGKILL``) loses about its last :data:`FLUSH_SECONDS` of counts.

prometheus-client compares ``os.getpid()`` with the process it opened the files for
before every write, to notice a fork. The id is cached here instead and renewed in a
forked child, which starts again from its own files.

Every module that defines metrics imports this one first (for its effect): the value
class is read when a metric is made.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from typing import Any

from prometheus_client import values

log = logging.getLogger("putplace.metrics")

#: Longest a change waits before it is written where other workers' scrapes read it.
FLUSH_SECONDS = 0.25

_pid = os.getpid()


def process_id() -> int:
    """This process's id, as of its start or its last fork."""
    return _pid


class _Pending:
    """The values changed since they were last written, and the thread that writes them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.changed: list[DeferredValue] = []
        self.woken = threading.Event()
        self.writer: threading.Thread | None = None

    def add(self, value: DeferredValue) -> None:
        """Called with :attr:`lock` held, for a value not queued yet."""
        self.changed.append(value)
        if self.writer is None or not self.writer.is_alive():
            writer = threading.Thread(target=self._write_later, name="metrics", daemon=True)
            writer.start()
            self.writer = writer
        self.woken.set()

    def _write_later(self) -> None:
        failing = False
        while True:
            self.woken.wait()
            time.sleep(FLUSH_SECONDS)  # a burst of requests is written once, not per request
            # Cleared before the write takes the values: a change made from here on sets
            # the event again and is written next time, never missed.
            self.woken.clear()
            # Logged once per outage, not every quarter second; what was not written stays
            # queued, and is tried again.
            written = flush_or_log(quiet=failing)
            failing = not written
            if failing:
                self.woken.set()


_pending = _Pending()
_files: Any = None  # the value class of prometheus-client's that writes the files
_made: list[DeferredValue] = []  # every value of this process, for a forked child


class DeferredValue:
    """prometheus-client's value interface (``inc``, ``set``, ``get``), kept in memory
    and written to the process's file by :func:`flush`."""

    _multiprocess = True

    def __init__(
        self,
        typ: str,
        metric_name: str,
        name: str,
        labelnames: Any,
        labelvalues: Any,
        help_text: str,
        multiprocess_mode: str = "",
        **kwargs: Any,
    ) -> None:
        # Under the lock, as every use of the files is: a fork then never finds
        # prometheus-client's own lock held by another thread (see _before_fork).
        with _pending.lock:
            self._file = _files(
                typ, metric_name, name, labelnames, labelvalues, help_text,
                multiprocess_mode=multiprocess_mode, **kwargs,
            )  # fmt: skip
            self._value: float = self._file.get()
            self._timestamp: float | None = None
            self._queued = False
            _made.append(self)

    def inc(self, amount: float) -> None:
        with _pending.lock:
            self._value += amount
            if not self._queued:
                self._queued = True
                _pending.add(self)

    def set(self, value: float, timestamp: float | None = None) -> None:
        with _pending.lock:
            self._value = value
            self._timestamp = timestamp
            if not self._queued:
                self._queued = True
                _pending.add(self)

    def set_exemplar(self, exemplar: Any) -> None:
        return  # not kept in multiprocess mode (prometheus-client's own choice)

    def get(self) -> float:
        return self._value

    def get_exemplar(self) -> None:
        return None

    def _restart(self) -> None:
        """In a forked child: start again from this process's own file."""
        self._value = self._file.get()
        self._timestamp = None
        self._queued = False


def flush() -> None:
    """Write every value changed since the last write to this process's files now. A value
    whose write fails stays queued, to be tried again, and the first such error is raised
    once every other value is written: one value that cannot be written (its file damaged,
    say) does not hold the others back."""
    failure: Exception | None = None
    with _pending.lock:
        changed, _pending.changed = _pending.changed, []
        handled = 0
        try:
            for value in changed:
                try:
                    value._file.set(value._value, value._timestamp)
                except Exception as exc:
                    _pending.changed.append(value)
                    failure = failure or exc
                else:
                    value._queued = False
                handled += 1
        finally:
            # Interrupted (KeyboardInterrupt, SystemExit) anywhere in the loop: what was
            # not handled yet goes back in the queue. A value may then be queued twice,
            # and written twice, which is harmless; none is left out.
            _pending.changed.extend(changed[handled:])
    if failure is not None:
        raise failure


def flush_or_log(*, quiet: bool = False) -> bool:
    """:func:`flush`, for a scrape, a worker's shutdown or the writer thread: whether it
    wrote everything. A write that raises is logged (unless *quiet*), not passed on; what
    was not written stays queued."""
    try:
        flush()
    except Exception:
        if not quiet:
            log.warning("metrics: writing this worker's values failed", exc_info=True)
        return False
    return True


def _before_fork() -> None:
    _pending.lock.acquire()  # no write half done in the files a child inherits


def _after_fork_in_parent() -> None:
    _pending.lock.release()


def _forked() -> None:
    global _pid, _pending
    _pid = os.getpid()
    _pending = _Pending()  # the parent's writer thread did not come along
    for value in _made:
        value._restart()


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_forked
)
if values.ValueClass is not values.MutexValue:  # the multiprocess mode, chosen from the env
    _files = values.MultiProcessValue(process_identifier=process_id)  # type: ignore[no-untyped-call]
    values.ValueClass = DeferredValue
    atexit.register(flush)
