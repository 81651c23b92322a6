"""The workers' shared file (``coordination.host``): shared by separate processes, and a
helper only: when the file breaks, every limit still answers, per process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from putplace.coordination import HostCoordinator

TAKE_IN_ANOTHER_PROCESS = """
import asyncio, sys
from pathlib import Path
from putplace.coordination import HostCoordinator

async def main() -> None:
    limits = HostCoordinator(Path(sys.argv[1]))
    print([await limits.take("key:a", 0.01, 5) for _ in range(3)])
    await limits.reserve("quota:lab:bytes", 40)  # never released: that process holds it

asyncio.run(main())
"""


async def test_another_process_takes_from_the_same_bucket(tmp_path: Path) -> None:
    path = tmp_path / "limits.sqlite3"
    here = HostCoordinator(path)
    assert await here.take("key:a", 0.01, 5) == 0  # 4 left
    other = subprocess.run(
        [sys.executable, "-c", TAKE_IN_ANOTHER_PROCESS, str(path)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert other.stdout.strip() == "[0, 0, 0]"  # 1 left
    assert [await here.take("key:a", 0.01, 5) for _ in range(2)] == [0, 100]
    assert (await here.reserve("quota:lab:bytes", 1))[1] == 40
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
