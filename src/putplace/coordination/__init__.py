"""Limits and announcements shared by the server's processes (see :mod:`.base`)."""

from __future__ import annotations

from putplace.config import Settings
from putplace.coordination.base import Coordinator, KeyListener, Reservation
from putplace.coordination.host import HostCoordinator, shared_file
from putplace.coordination.local import LocalCoordinator

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
        return HostCoordinator(shared)
    return LocalCoordinator()
