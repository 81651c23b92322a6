"""The order of a quota check: room is reserved before usage is read, so a write that
finishes meanwhile is counted either as reserved or as recorded, never as neither."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from putplace.config import Quota, Settings
from putplace.coordination import LocalCoordinator
from putplace.metadata import MetadataStore, create_metadata_store
from putplace.service.quotas import QuotaExceededError, holding_bytes


class SlowReads:
    """A real store whose ``held_totals`` answers only when told to (with what it read
    before): a usage read that takes a while, as it can under load."""

    def __init__(self, store: MetadataStore) -> None:
        self._store = store
        self.reading = asyncio.Event()
        self.answer = asyncio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def held_totals(self, namespaces: list[str]) -> object:
        read = await self._store.held_totals(namespaces)
        self.reading.set()
        await self.answer.wait()
        return read


async def test_a_check_holds_its_room_before_it_reads_usage(tmp_path: Path) -> None:
    store = create_metadata_store(Settings(database_url=f"sqlite:///{tmp_path}/meta.db"))
    await store.open()
    try:
        limits, quota = LocalCoordinator(), Quota(bytes=100)
        slow = SlowReads(store)

        async def first() -> None:
            async with holding_bytes(slow, limits, quota, "lab", 60):  # type: ignore[arg-type]
                pass

        checking = asyncio.create_task(first())
        await slow.reading.wait()  # the first check is reading usage
        with pytest.raises(QuotaExceededError, match="60 more on their way"):
            async with holding_bytes(store, limits, quota, "lab", 60):
                pass
        slow.answer.set()
        await checking
    finally:
        await store.close()
