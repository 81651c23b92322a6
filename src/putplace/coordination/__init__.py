"""Limits and announcements shared by the server's processes (see :mod:`.base`)."""

from __future__ import annotations

import logging
import sqlite3

from putplace.config import Settings
from putplace.coordination.base import Coordinator, KeyListener, Reservation
from putplace.coordination.host import HostCoordinator, shared_file
from putplace.coordination.local import LocalCoordinator

log = logging.getLogger("putplace.coordination")

__all__ = [
    "Coordinator",
    "HostCoordinator",
    "KeyListener",
    "LocalCoordinator",
    "Reservation",
    "create_coordinator",
]


def create_coordinator(settings: Settings) -> Coordinator:
    """Redis when ``redis_url`` is set; else the workers of this ``ppserver serve``
    together, through the file it made for them; else this process alone."""
    if settings.redis_url:
        from putplace.coordination.redis import RedisCoordinator

        return RedisCoordinator(settings.redis_url)
    shared = shared_file()
    if shared is not None:
        try:
            return HostCoordinator(shared)
        except (OSError, sqlite3.Error) as exc:  # a helper: never a reason not to start
            log.warning("cannot share limits with the other workers (%s): %s", shared, exc)
    return LocalCoordinator()
