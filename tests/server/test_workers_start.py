"""Server workers start together on a fresh data directory: each opens the SQLite
metadata database and the pack index at the same moment, and every one must succeed."""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest

from putplace.blobs.local import LocalBlobStore
from putplace.metadata.sqlite import SQLiteMetadataStore

PROCESSES = 4
#: Without the set-up lock, 4 processes opening a fresh pack index at once failed in 18
#: rounds of 50 ("database is locked"), the metadata database in 4 of 50.
ROUNDS = 25


async def _open_and_close(store: str, directory: Path) -> None:
    opened: Any = (
        SQLiteMetadataStore(directory / "putplace.db")
        if store == "metadata"
        else LocalBlobStore(directory / "blobs")
    )
    await opened.open()
    await opened.close()


def _open_in_rounds(store: str, root: Path, barrier: Any, failures: Any) -> None:
    for round_number in range(ROUNDS):
        barrier.wait()  # every process opens the same fresh directory at once
        try:
            asyncio.run(_open_and_close(store, root / str(round_number)))
        except Exception:
            failures.put(traceback.format_exc())
    sys.exit(0)


@pytest.mark.parametrize("store", ["metadata", "packs"])
def test_workers_opening_a_fresh_data_directory_at_once_all_start(
    store: str, tmp_path: Path
) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    failures = context.Queue()
    processes = [
        context.Process(target=_open_in_rounds, args=(store, tmp_path, barrier, failures))
        for _ in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [process.exitcode for process in processes] == [0] * PROCESSES
    seen = []
    while not failures.empty():
        seen.append(failures.get())
    assert not seen, f"{len(seen)} opens failed; the first:\n{seen[0]}"
