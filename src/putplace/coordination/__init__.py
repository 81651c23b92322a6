"""Limits and announcements shared by the server's processes (see :mod:`.base`)."""

from __future__ import annotations

from putplace.config import Settings
from putplace.coordination.base import Coordinator, KeyListener, Reservation
from putplace.coordination.local import LocalCoordinator

__all__ = ["Coordinator", "KeyListener", "LocalCoordinator", "Reservation", "create_coordinator"]


def create_coordinator(settings: Settings) -> Coordinator:
    """Redis when ``redis_url`` is set, else this process alone (not yet opened)."""
    if settings.redis_url:
        from putplace.coordination.redis import RedisCoordinator

        return RedisCoordinator(settings.redis_url)
    return LocalCoordinator()
