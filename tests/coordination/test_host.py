"""The workers' shared file (``coordination.host``): shared by separate processes, and a
helper only: when the file breaks, every limit still answers, per process."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from putplace.coordination import HostCoordinator, host

TAKE_IN_ANOTHER_PROCESS = """
import asyncio, sys
from pathlib import Path
from putplace.coordination import HostCoordinator

async def main() -> None:
    limits = HostCoordinator(Path(sys.argv[1]))
    print([await limits.take("key:a", 0.01, 5) for _ in range(3)])
    await limits.reserve("quota:lab:bytes", 40)  # never released
    print("reserved", flush=True)
    sys.stdin.read()  # alive until told to go

asyncio.run(main())
"""


async def test_another_process_shares_buckets_and_a_dead_ones_room_is_freed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "limits.sqlite3"
    here = HostCoordinator(path)
    started = time.monotonic()
    assert await here.take("key:a", 0.01, 5) == 0  # 4 left
    other = subprocess.Popen(
        [sys.executable, "-c", TAKE_IN_ANOTHER_PROCESS, str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert other.stdout is not None
    assert other.stdin is not None
    assert other.stdout.readline().strip() == "[0, 0, 0]"  # 1 left
    assert other.stdout.readline().strip() == "reserved"
    last, refused = [await here.take("key:a", 0.01, 5) for _ in range(2)]
    # Empty: the next token is 100 s away, less what refilled (0.01 a second) since the
    # first take; on a loaded machine the other process takes seconds to start. Unshared
    # buckets would have given it at once (0).
    assert last == 0
    assert 100 - (time.monotonic() - started) - 1 <= refused <= 100
    assert (await here.reserve("quota:lab:bytes", 1))[1] == 40  # held by a live process
    other.stdin.close()
    assert other.wait(timeout=60) == 0
    # It died holding its room: nobody will release it, so it is not counted.
    assert (await here.reserve("quota:lab:bytes", 1))[1] == 1
    await here.close()


async def test_a_broken_file_leaves_each_process_its_own_limits(tmp_path: Path) -> None:
    path = tmp_path / "limits.sqlite3"
    limits = HostCoordinator(path)
    assert await limits.take("key:a", 0.01, 2) == 0
    for written in tmp_path.glob("limits.sqlite3*"):  # overwritten in place, as damage is
        with written.open("r+b") as file:
            file.write(b"garbage!" * 512)
    # Still answers, per process now: a fresh bucket, then its limit.
    assert [await limits.take("key:a", 0.01, 2) for _ in range(3)] == [0, 0, 100]
    first, others = await limits.reserve("quota:lab:bytes", 30)
    assert others == 0
    assert (await limits.reserve("quota:lab:bytes", 1))[1] == 30
    await limits.release(first)
    assert (await limits.reserve("quota:lab:bytes", 1))[1] == 1
    assert limits.describe() == {"type": "host", "shared": False, "status": "unavailable"}
    await limits.close()


async def test_what_could_not_be_written_is_written_once_the_file_works_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release and a revocation made while another holds the file's lock (a worker
    stopped mid-write) reach the others once it is let go; and the worker that could not
    read meanwhile forgets every cached key, since it may have missed revocations."""
    monkeypatch.setattr(host, "RETRY_SECONDS", 0.1)
    path = tmp_path / "limits.sqlite3"
    here, there = HostCoordinator(path), HostCoordinator(path)
    heard_here: list[str | None] = []
    heard_there: list[str | None] = []
    here.listen(heard_here.append)
    there.listen(heard_there.append)
    room, _ = await here.reserve("quota:lab:bytes", 50)
    blocker = sqlite3.connect(path, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")  # holds SQLite's write lock
    await here.release(room)
    await here.announce_key_change("k" * 64)
    assert heard_here == ["k" * 64]  # this process at once
    assert here.describe()["status"] == "unavailable"
    blocker.rollback()
    await asyncio.sleep(0.3)  # past RETRY_SECONDS
    assert await here.take("key:a", 1, 1) == 0  # a write that works writes the rest too
    assert (await there.reserve("quota:lab:bytes", 1))[1] == 0  # released
    for _ in range(50):
        if "k" * 64 in heard_there and None in heard_here:
            break
        await asyncio.sleep(0.05)
    assert heard_there == ["k" * 64]
    assert None in heard_here  # forgot its cached keys
    assert here.describe()["status"] == "healthy"
    blocker.close()
    await here.close()
    await there.close()
