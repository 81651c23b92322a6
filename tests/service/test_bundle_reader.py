"""How a bundle's body is read, chunk by chunk, with the chunk boundaries placed exactly
(across loopback, a server reads the socket in pieces of its own choosing)."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterable

import psutil
import pytest

from putplace.service.bundles import _Reader
from putplace.service.errors import StalledError


async def stream(chunks: Iterable[bytes], fail: Exception | None = None) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
    if fail is not None:
        raise fail


@pytest.mark.parametrize(
    "chunks",
    [
        [b"HEAD" + b"abcdefghij" + b"tail"],  # all in one chunk
        [b"HE", b"ADabc", b"defghijta", b"il"],  # the members' end and what follows share one
        [b"HEAD", b"a", b"b", b"cdefghij", b"", b"tail"],
    ],
)
async def test_members_are_read_whole_and_what_follows_is_kept(chunks: list[bytes]) -> None:
    reader = _Reader(stream(chunks))
    assert await reader.read(4) == b"HEAD"
    assert await reader.read_upto(10) == (b"abcdefghij", None)
    assert await reader.ends() == (False, None)  # "tail" is still there: not the end
    assert await reader.read(4) == b"tail"
    assert await reader.ends() == (True, None)


async def test_a_stream_that_ends_early_gives_what_arrived() -> None:
    reader = _Reader(stream([b"HEADabc", b"de"]))
    assert await reader.read(4) == b"HEAD"
    assert await reader.read_upto(10) == (b"abcde", None)
    assert await reader.ends() == (True, None)


async def test_a_failure_midway_is_returned_with_what_arrived() -> None:
    stalled = StalledError("no data")
    reader = _Reader(stream([b"HEADab", b"cd"], fail=stalled))
    assert await reader.read(4) == b"HEAD"
    data, failure = await reader.read_upto(10)
    assert (data, failure) == (b"abcd", stalled)


async def test_bytes_read_ahead_with_the_header_are_used_first() -> None:
    reader = _Reader(stream([b"HEADabcdefghijtail"]))
    assert await reader.read(4) == b"HEAD"  # the whole chunk is buffered
    assert await reader.read_upto(3) == (b"abc", None)
    assert await reader.read_upto(7) == (b"defghij", None)
    assert await reader.read(4) == b"tail"


async def test_memory_is_taken_for_the_bytes_that_came_not_for_the_size_claimed() -> None:
    """A header may claim up to PUTPLACE_MAX_BUNDLE_BYTES; a client that then sends a few
    bytes must not make the server hold the rest."""
    process = psutil.Process()
    reader = _Reader(stream([b"abcde"]))
    before = process.memory_info().rss
    data, failure = await reader.read_upto(1 << 30)
    grown = process.memory_info().rss - before
    assert (bytes(data), failure) == (b"abcde", None)
    assert grown < 64 << 20, f"{grown} bytes taken for 5 that came"


async def test_what_a_failed_read_took_is_given_back_at_once() -> None:
    """The bytes of a bundle cut off midway go back to the system when the request ends,
    not when the cyclic garbage collector next runs (its room in the budget is free by
    then)."""
    piece = b"x" * (1 << 20)
    process = psutil.Process()
    gc.disable()
    try:
        before = process.memory_info().rss
        for _ in range(3):
            reader = _Reader(stream([piece] * 32, fail=StalledError("no data")))
            data, failure = await reader.read_upto(64 << 20)
            assert (len(data), type(failure)) == (32 << 20, StalledError)
            del reader, data, failure
        grown = process.memory_info().rss - before
    finally:
        gc.enable()
    assert grown < 32 << 20, f"{grown >> 20} MiB still held after three failed reads"
