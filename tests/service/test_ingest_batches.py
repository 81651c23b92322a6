"""Large contents are received in large batches, within a per-process memory budget."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence

import pytest

from putplace.batches import LARGE_BATCH, LARGE_CONTENT, BatchBudget
from putplace.digest import CHUNK_SIZE
from putplace.service import ingest
from putplace.service.ingest import store_verified


async def pieces(data: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize(
    ("length", "batch"), [(LARGE_CONTENT, LARGE_BATCH), (LARGE_CONTENT - 1, CHUNK_SIZE)]
)
async def test_a_large_content_is_hashed_and_written_in_large_batches(
    monkeypatch: pytest.MonkeyPatch, length: int, batch: int
) -> None:
    data = bytes(range(256)) * (length // 256) + b"x" * (length % 256)
    written: list[int] = []

    async def write_all(self: object, chunks: Sequence[bytes]) -> None:
        written.append(sum(len(c) for c in chunks))

    monkeypatch.setattr(ingest._Discard, "write_all", write_all)
    sha = hashlib.sha256(data).hexdigest()
    assert await store_verified(None, sha, pieces(data), expected_size=length) == length
    assert sum(written) == length
    assert max(written) == batch
    assert all(size == batch for size in written[:-1])


def test_large_batches_are_handed_out_within_the_budget_and_returned() -> None:
    budget = BatchBudget(4 * LARGE_BATCH)  # two uploads, each double-buffered
    with budget.batch_for(LARGE_CONTENT) as first, budget.batch_for(LARGE_CONTENT) as second:
        assert (first, second) == (LARGE_BATCH, LARGE_BATCH)
        with budget.batch_for(LARGE_CONTENT) as third:
            assert third == CHUNK_SIZE  # over the budget: small batches, no more memory
        assert budget.batch_for(None).__enter__() == CHUNK_SIZE  # size unknown
    with pytest.raises(RuntimeError), budget.batch_for(LARGE_CONTENT):
        raise RuntimeError("upload failed")
    with budget.batch_for(LARGE_CONTENT) as again, budget.batch_for(LARGE_CONTENT) as more:
        assert (again, more) == (LARGE_BATCH, LARGE_BATCH)  # all given back, even on failure
