"""The collector tuning that ppserver and ppclient apply at start-up."""

from __future__ import annotations

import gc

from putplace import gctune


def test_only_the_first_settle_of_a_process_freezes_what_exists() -> None:
    # A test process (or an embedding program) starts many servers and clients; freezing
    # at each start would keep every earlier one's garbage out of collection for good.
    gctune.settle()
    frozen = gc.get_freeze_count()
    assert gc.get_threshold()[0] == gctune.YOUNG_THRESHOLD
    later = [[i] for i in range(1000)]  # objects made after start-up
    gctune.settle()
    assert gc.get_freeze_count() == frozen
    assert later
