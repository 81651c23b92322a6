"""Which large files a run sends while hashing them, and which files wait for them.

A large file whose content the server cannot hold yet is sent as it is hashed, so it is
read once (:class:`putplace.client.tus.UnhashedUpload`); its record, which needs the
hash, goes in once every byte is sent. :class:`SendingAhead` keeps the rules of one run
about those files, thread-safely.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

W = TypeVar("W")


class SendingAhead(Generic[W]):
    """At most *turns* files sent while hashed at once (each holds a connection), and one
    of each size per run: another file of a size already claimed is hashed first, as
    the server may hold its content. While the file of its size is still being sent,
    such a file waits to be registered after it (:meth:`waits`), so that a copy finds
    its content held rather than being sent in full beside it."""

    def __init__(self, turns: int) -> None:
        self._turns = turns
        self._now = 0
        self._sizes: set[int] = set()
        self._waiting: dict[int, list[W]] = {}  # size being sent -> who waits for it
        self._lock = threading.Lock()

    def claim(self, size: int) -> bool:
        """Take a turn to send a file of *size* while hashing it. False when every turn
        is taken, or a file of that size was claimed before in this run."""
        with self._lock:
            if size in self._sizes or self._now >= self._turns:
                return False
            self._sizes.add(size)
            self._waiting[size] = []
            self._now += 1
            return True

    def give_back(self) -> None:
        """The turn of a claim: its file is sent, or is not sent this way after all."""
        with self._lock:
            self._now -= 1

    def waits(self, size: int, waiter: W) -> bool:
        """Keep *waiter* until the file of *size* being sent is registered; False when
        no file of that size is being sent."""
        if not self._waiting:  # the usual case, without taking the lock
            return False
        with self._lock:
            waiting = self._waiting.get(size)
            if waiting is None:
                return False
            waiting.append(waiter)
            return True

    def over(self, size: int) -> list[W]:
        """The file of *size* is registered, or was not sent this way after all: those
        that waited for it, in order. Later files of that size wait no more."""
        with self._lock:
            return self._waiting.pop(size, [])
