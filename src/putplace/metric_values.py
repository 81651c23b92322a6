"""How metric values are kept: prometheus-client's, with the process id cached.

With several server workers (``PROMETHEUS_MULTIPROC_DIR`` set), prometheus-client keeps
each value in a per-process file and, before every increment, compares ``os.getpid()``
with the process it opened the files for, to notice a fork. That system call was 40% of an
increment (1.47 -> 0.86 us each, measured with ``timeit``), and a request makes about
fifteen (its counters, duration, in-flight gauge and the store operations' timers). The
id is kept here instead and renewed in a forked child, so a fork is still noticed.

Every module that defines metrics imports this one first (for its effect): the value
class is read when a metric is made.
"""

from __future__ import annotations

import os

from prometheus_client import values

_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


def process_id() -> int:
    """This process's id, as of its start or its last fork."""
    return _pid


os.register_at_fork(after_in_child=_forked)
if values.ValueClass is not values.MutexValue:  # the multiprocess mode, chosen from the env
    values.ValueClass = values.MultiProcessValue(process_identifier=process_id)  # type: ignore[no-untyped-call]
