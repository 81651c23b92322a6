"""Python's cyclic garbage collector, tuned for long runs that allocate many short-lived
objects (a request's records, a directory's entries).

With the default thresholds a first ingest of 100,000 files ran about 775 collections in
the server, 0.54 s of its CPU, walking every object imported at start-up again and again;
frozen start-up objects and a larger first generation took it to 0.07 s (15 collections).
Reference counting still frees almost everything at once; only cycles wait longer.
"""

from __future__ import annotations

import gc

#: Allocations (less deallocations) between young collections; CPython's default is 700
#: (2,000 from 3.13). A young collection walks every young object still alive, and in a
#: first ingest many are (the records and members in flight): at 20,000 the client spent
#: 0.14-0.21 s collecting and each server worker 0.06-0.23 s per 100,000 files; at
#: 100,000, 0.02-0.03 s and 0.04-0.07 s. What waits longer to be freed is only garbage in
#: reference cycles, which an ingest hardly makes (see
#: :class:`putplace.client.uploader.UnboundClient`).
YOUNG_THRESHOLD = 100_000


_settled = False


def settle() -> None:
    """Call once start-up is done: what exists now is kept out of later collections.

    Only the first call in a process freezes anything (a test process starts many
    clients and servers; freezing again each time would keep their garbage forever)."""
    global _settled
    if _settled:
        return
    _settled = True
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
