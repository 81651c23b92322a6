"""Temporary directories of ``ppserver serve`` (the workers' metrics and shared limits).

Each is named after the serving process (``putplace-metrics-<pid>-...``) and removed
when it stops; a serve killed with SIGKILL (the OOM killer, a hard stop) cannot, so the
next one removes those whose process is gone.
"""

from __future__ import annotations

import os
import shutil
import tempfile

#: What the directories of ``ppserver serve`` are named after (then its pid and a dash).
PREFIXES = ("putplace-metrics-", "putplace-limits-")


def make(prefix: str) -> str:
    """A new directory for this process: *prefix* (one of :data:`PREFIXES`), our pid."""
    return tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-")


def sweep_orphans(root: str | None = None) -> list[str]:
    """Remove the directories of serve processes that are no longer running (in *root*,
    by default the temporary directory), and only ours; return their paths."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(root or tempfile.gettempdir()))
    except OSError:
        return removed
    for entry in entries:
        pid = _owner_pid(entry.name)
        try:
            if (
                pid is not None
                and not _running(pid)
                and entry.is_dir(follow_symlinks=False)
                and entry.stat(follow_symlinks=False).st_uid == os.getuid()
            ):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.path)
        except OSError:  # gone meanwhile, or not ours to look at
            continue
    return removed


def _owner_pid(name: str) -> int | None:
    for prefix in PREFIXES:
        if name.startswith(prefix):
            digits, dash, _ = name[len(prefix) :].partition("-")
            return int(digits) if dash and digits.isdigit() else None
    return None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
