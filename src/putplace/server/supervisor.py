"""Workers stop once the ``ppserver serve`` process that started them is gone.

With ``--workers`` above 1, uvicorn runs the app in worker processes under a supervisor.
If the supervisor is killed (SIGKILL, the OOM killer), the workers kept serving: measured,
both went on answering on the port, so a server started again found the port taken, and
the run's temporary directories stayed in use. ``ppserver serve`` names itself to its
workers (:data:`SUPERVISOR_ENV`); each worker checks every :data:`CHECK_SECONDS` that
its parent is still that process and, once it is not, stops as on SIGTERM (the requests
in flight are answered first). A server of one process has no supervisor and never
checks: its parent (a shell, a service manager) may come and go. A run killed so still
leaves its temporary directories behind (its own cleanup never runs).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal

log = logging.getLogger("putplace.server")

#: Set by ``ppserver serve`` for its workers: its own process id.
SUPERVISOR_ENV = "PPSERVER_SUPERVISOR_PID"
#: How often a worker checks that its supervisor is still there.
CHECK_SECONDS = 1.0


def supervisor_pid() -> int | None:
    """The process id of this worker's supervisor; None outside a supervised worker: the
    variable must name the process that started this one as a multiprocessing child (an
    app made in a process of its own with the variable inherited is no worker)."""
    try:
        named = int(os.environ[SUPERVISOR_ENV])
    except (KeyError, ValueError):
        return None
    parent = multiprocessing.parent_process()
    return named if parent is not None and parent.pid == named else None


async def stop_when_orphaned(supervisor: int, seconds: float = CHECK_SECONDS) -> None:
    """Return only after asking this process to stop, once *supervisor* is gone (it is
    then no longer this process's parent)."""
    # Polled: nothing tells a process that its parent died (PR_SET_PDEATHSIG is Linux's
    # alone, and follows the thread that started the child, not the process).
    while os.getppid() == supervisor:  # noqa: ASYNC110
        await asyncio.sleep(seconds)
    log.warning("the ppserver process that started this worker is gone: stopping")
    os.kill(os.getpid(), signal.SIGTERM)
