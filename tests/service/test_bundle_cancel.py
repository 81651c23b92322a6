"""A bundle whose request is cancelled while its pack is written: the writing thread goes
on after its awaiter is cancelled, so the bundle's memory must not be handed to the next
bundle (see ``putplace.service.spare_maps``)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
from collections.abc import AsyncIterator

import pytest

from putplace.auth import utcnow
from putplace.blobs.base import Contents, GroupWriter
from putplace.config import Settings
from putplace.models import DEFAULT_NAMESPACE, FileMetadata
from putplace.service import bundles
from putplace.service.errors import InvalidInputError
from putplace.service.memory import MemoryBudget
from putplace.service.spare_maps import SpareMaps
from putplace.service.stores import open_stores
from tests.support.payloads import bundle, metadata


async def once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def members(data: bytes) -> bytes:
    return bundle([(hashlib.sha256(data).hexdigest(), data)])


@pytest.mark.parametrize("ending", ["cancelled", "refused while its slice is written"])
async def test_a_cancelled_bundles_bytes_are_not_written_over_by_the_next(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    """Cancelled while its slice is written, or refused then (its body goes on after its
    last member, which is found while the slice before is still being written): the
    writing thread goes on reading the slice after the request has ended."""
    maps = SpareMaps(bundles.SLICE_BYTES, keep=1, idle_seconds=60)
    monkeypatch.setattr(bundles, "BUNDLE_MAPS", maps)
    first, second = b"A" * 100_000, b"B" * 100_000
    writing, finish, done = threading.Event(), threading.Event(), threading.Event()
    written: list[bytes] = []

    class SlowGroup(GroupWriter):
        async def add(self, contents: Contents) -> None:
            def write() -> None:  # as the pack writer's thread: it reads the views late
                writing.set()
                finish.wait(10)
                written.extend(bytes(data) for _, data in contents)
                done.set()

            await asyncio.get_running_loop().run_in_executor(None, write)

        async def commit(self) -> None:
            pass

        async def abort(self) -> None:
            pass

    async with open_stores(settings) as stores:
        records = [FileMetadata(**metadata(data)) for data in (first, second)]
        await stores.metadata.put_files(records, utcnow())
        memory = MemoryBudget(64 << 20)
        real_group = stores.blobs.group
        monkeypatch.setattr(stores.blobs, "group", SlowGroup)

        async def more_once_written() -> AsyncIterator[bytes]:
            yield members(first)
            await asyncio.to_thread(writing.wait, 10)
            yield b"more"

        body = once(members(first)) if ending == "cancelled" else more_once_written()
        cancelled = asyncio.create_task(
            bundles.accept_bundle(stores, settings, memory, body, DEFAULT_NAMESPACE)
        )
        assert await asyncio.to_thread(writing.wait, 10)
        if ending == "cancelled":
            cancelled.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await cancelled
        else:
            with pytest.raises(InvalidInputError, match="goes on after its last member"):
                await cancelled
        monkeypatch.setattr(stores.blobs, "group", real_group)
        answer = await bundles.accept_bundle(
            stores, settings, memory, once(members(second)), DEFAULT_NAMESPACE
        )
        assert answer.stored == 1
        finish.set()
        assert await asyncio.to_thread(done.wait, 10)
    assert written == [first], "the cancelled bundle's writer found another bundle's bytes"
    maps.trim(force=True)
