"""Anonymous memory maps that bundles' slices are read into, kept for the next ones.

A fresh map costs a page fault for every 4 KiB as it is first written, and unmapping
it hands the pages back to the system, so the next bundle faults them in again. On the
development machine (a virtual machine whose host takes back free memory) a fault
costs 2-3 us, and 40-55 us when the host has taken the page's memory back; a first
ingest of 100,000 small files faulted 119,000-127,000 pages in the server, more than
half of them for bundles' maps (when a bundle was read whole, into a map of up to 32
MiB). Kept maps are written over instead: 52,000-64,000 faults, and server and client
took 4% less CPU (4 alternated pairs). What a kept map costs is its pages staying
resident: at most ``keep`` maps of ``size`` bytes a process, each only as much of it as
slices have written, and for no longer than ``idle_seconds`` after a bundle last used
one.

One event loop uses a pool: takes and gives come from its coroutines, trims from its
timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import time

#: Maps kept: as many as bundles one process usually stores at once (a client sends up
#: to three at a time, which a default server's three processes share).
KEEP = 2
#: Kept maps are unmapped this long after a bundle last gave one back.
IDLE_SECONDS = 30.0


class SpareMaps:
    def __init__(self, size: int, keep: int = KEEP, idle_seconds: float = IDLE_SECONDS) -> None:
        """Maps of *size* bytes are kept (an untouched page of a map takes no memory, so
        a smaller slice in a larger map costs no more than in its own)."""
        self.size = size
        self.keep = keep
        self.idle_seconds = idle_seconds
        self._spare: list[mmap.mmap] = []
        self._lent: list[mmap.mmap] = []  # taken to be kept, not yet back (``keep`` at most)
        self._last_given = 0.0
        self._trim_on: asyncio.AbstractEventLoop | None = None  # the loop a trim waits on

    @property
    def kept(self) -> int:
        """Maps waiting to be used again."""
        return len(self._spare)

    def take(self, size: int) -> mmap.mmap:
        """A map of at least *size* bytes (not 0): a kept one when it is large enough, a
        new one of ``size`` bytes while fewer than ``keep`` are out (to be kept when given
        back), else one of exactly *size* bytes (address space is not free everywhere:
        with strict overcommit every mapped byte is committed)."""
        if size <= self.size and (self._spare or len(self._lent) < self.keep):
            # The last given back first: its pages are the warmest.
            mapped = self._spare.pop() if self._spare else mmap.mmap(-1, self.size)
            self._lent.append(mapped)
            return mapped
        return mmap.mmap(-1, size)

    def give(self, mapped: mmap.mmap) -> None:
        """*mapped* is no longer read or written by anyone, not even a thread: kept for
        the next :meth:`take`, or unmapped. A view of it may outlive this call (a
        traceback's); it then shows what the next bundle writes, and keeps the pages
        mapped until it goes."""
        if not self._returned(mapped) or len(self._spare) >= self.keep:
            _unmap(mapped)
            return
        self._spare.append(mapped)
        self._last_given = time.monotonic()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop to trim them later: keep none
            self.trim(force=True)
            return
        if self._trim_on is not loop:  # none waits, or on a loop that has gone
            self._trim_on = loop
            loop.call_later(self.idle_seconds, self._trim_later)

    def abandon(self, mapped: mmap.mmap) -> None:
        """*mapped* may still be read by a thread that outlived its request (a bundle
        cancelled while its pack was written): never written over, it goes when the
        last view of it does."""
        self._returned(mapped)

    def _returned(self, mapped: mmap.mmap) -> bool:
        """Count *mapped* back in; whether it may be kept (one taken to be kept, and
        still mapped; a map of another bundle may have the same size)."""
        for index, lent in enumerate(self._lent):
            if lent is mapped:
                del self._lent[index]
                return not mapped.closed
        return False

    def trim(self, *, force: bool = False) -> None:
        """Unmap the kept maps if no bundle gave one back for ``idle_seconds`` (or now,
        with *force*)."""
        if force or time.monotonic() - self._last_given >= self.idle_seconds:
            spare, self._spare = self._spare, []
            for mapped in spare:
                _unmap(mapped)

    def _trim_later(self) -> None:
        self.trim()
        if self._spare:  # given back again since: look again once that is idle too
            wait = self._last_given + self.idle_seconds - time.monotonic()
            asyncio.get_running_loop().call_later(max(wait, 0.0), self._trim_later)
        else:
            self._trim_on = None


def _unmap(mapped: mmap.mmap) -> None:
    with contextlib.suppress(BufferError):  # a view still exists: the map goes with it
        mapped.close()
