"""Bundled content upload: many small contents in one request, stored as a group.

The body (see docs/bundle-protocol.md) is a header naming every member (hash, length) and
then the members' bytes in that order. The header is read first so that one lookup
answers, for the whole bundle, which contents are already stored and which are
registered with which size. The members' bytes are then read a slice at a time
(:data:`SLICE_BYTES` of whole members, into one reused map), hashed, and those that
verify are added to one :meth:`BlobStore.group` (local disk: one pack file, one
durability barrier for the whole bundle). Once the last member is in, the group is
committed and its contents recorded present in one write. A member that fails is
refused alone. A body cut short keeps the members that arrived whole: they are committed
and recorded before the error is passed on, and nothing partial is left. A body longer
than its header says stores nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import mmap
import struct
from collections import Counter
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass

from putplace import telemetry
from putplace.auth import utcnow
from putplace.blobs.base import GroupWriter
from putplace.config import Settings
from putplace.digest import INLINE_WORK_LIMIT
from putplace.models import (
    BlobRecord,
    BlobState,
    BundleMemberResult,
    BundleResponse,
    BundleStatus,
)
from putplace.service import quotas
from putplace.service.content import proven
from putplace.service.errors import InvalidInputError, TooLargeError
from putplace.service.ingest import with_idle_timeout
from putplace.service.memory import MemoryBudget
from putplace.service.spare_maps import SpareMaps
from putplace.service.stores import Stores

log = logging.getLogger("putplace.service")

#: Seconds a bundle's body may take to arrive while it holds room in the process's
#: memory budget (24 MiB take 2 s at 100 Mbit/s, 20 s at 10).
ARRIVAL_GRACE_SECONDS = 10.0

#: A bundle's members are read, verified and written this many bytes at a time (whole
#: members; a larger member alone), so a bundle being stored takes this much memory, not
#: its whole size (up to ``PUTPLACE_MAX_BUNDLE_BYTES``). Each slice costs a write of the
#: pack and a hand-over to a thread or two, a few hundred microseconds.
SLICE_BYTES = 4 * 1024 * 1024

#: The maps this process reads bundles' slices into: two a bundle (one arriving while
#: the one before is written), two bundles at a time (a client sends up to three at a
#: time, which a default server's three processes share: one or two each).
BUNDLE_MAPS = SpareMaps(size=SLICE_BYTES, keep=4)

MAGIC = b"PPBNDL01"
_COUNT = struct.Struct(">I")
_ENTRY = struct.Struct(">32sQ")


@dataclass(frozen=True)
class Entry:
    sha256: str
    length: int


class _Reader:
    """Exact-size reads from a stream of chunks of any size."""

    def __init__(self, chunks: AsyncIterable[bytes], maps: SpareMaps = BUNDLE_MAPS) -> None:
        self._chunks = aiter(chunks)
        self._buffer = bytearray()
        self._maps = maps
        self._mapped: list[mmap.mmap] = []  # of the reads not given back, oldest first

    async def read(self, size: int) -> bytes | None:
        """The next *size* bytes, or None if the stream ends before that many arrive."""
        while len(self._buffer) < size:
            try:
                self._buffer += await anext(self._chunks)
            except StopAsyncIteration:
                return None
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def read_upto(self, size: int) -> tuple[memoryview, Exception | None]:
        """The next *size* bytes, or fewer when the stream ends or fails first; the
        failure is returned, not raised: the members that arrived whole are kept.

        Read into an anonymous memory map of its own (from *maps*, until
        :meth:`release_oldest` or :meth:`close`): the system gives it memory page by page
        as bytes are written, so a header's claim alone takes none, and each chunk is
        copied once. Chunks kept and joined at the end (as before) held a bundle twice
        over while joined; appending each chunk to a growing buffer copied it again at
        every reallocation."""
        if size:
            mapped = self._maps.take(size)
            self._mapped.append(mapped)
            buffer = memoryview(mapped)[:size]
        else:
            buffer = memoryview(bytearray())
        have = min(len(self._buffer), size)
        buffer[:have] = self._buffer[:have]
        del self._buffer[:have]
        failure: Exception | None = None
        try:
            while have < size:
                chunk = memoryview(await anext(self._chunks))
                take = min(len(chunk), size - have)
                buffer[have : have + take] = chunk[:take]
                if take < len(chunk):
                    self._buffer += chunk[take:]  # what follows, for :meth:`ends`
                have += take
        except StopAsyncIteration:
            pass
        except Exception as exc:  # a stalled or dropped client, a body over the limit
            # Without its traceback: that holds this frame, so ``buffer``, and the map
            # would stay until the cyclic collector ran (with the budget already free).
            failure = exc.with_traceback(None)
        return buffer[:have], failure

    def release_oldest(self) -> None:
        """The bytes of the oldest :meth:`read_upto` not given back are no longer used,
        by anyone: its map goes back for the next read."""
        self._maps.give(self._mapped.pop(0))

    def close(self, *, reuse: bool = True) -> None:
        """The bytes :meth:`read_upto` gave are no longer used, by anyone: their maps
        go back for the next bundle. Not *reuse*: they may still be read, so the maps
        are never written over and go with the last view of them."""
        mapped, self._mapped = self._mapped, []
        for one in mapped:
            if reuse:
                self._maps.give(one)
            else:
                self._maps.abandon(one)

    async def ends(self) -> tuple[bool, Exception | None]:
        """Whether the stream ends here, with nothing after what was read; and the
        failure that stopped reading on, if one did (then what arrived is all there is)."""
        try:
            while not self._buffer:
                self._buffer += await anext(self._chunks)
        except StopAsyncIteration:
            return True, None
        except Exception as exc:
            return True, exc
        return False, None


async def read_header(reader: _Reader, settings: Settings) -> list[Entry]:
    magic = await reader.read(len(MAGIC))
    if magic != MAGIC:
        raise InvalidInputError("not a PutPlace bundle: the body must start with PPBNDL01")
    raw_count = await reader.read(_COUNT.size)
    if raw_count is None:
        raise InvalidInputError("bundle header ends before its member count")
    (count,) = _COUNT.unpack(raw_count)
    if not 1 <= count <= settings.max_bundle_files:
        raise InvalidInputError(
            f"a bundle holds 1 to {settings.max_bundle_files} contents, not {count}"
        )
    raw = await reader.read(count * _ENTRY.size)
    if raw is None:
        raise InvalidInputError("bundle header ends before its last entry")
    entries = [Entry(digest.hex(), length) for digest, length in _ENTRY.iter_unpack(raw)]
    total = sum(entry.length for entry in entries)
    if total > settings.max_bundle_bytes:
        raise TooLargeError(
            f"bundle contents add up to {total} bytes; the limit is {settings.max_bundle_bytes}"
        )
    return entries


async def _verdicts(
    stores: Stores, settings: Settings, entries: list[Entry], namespace: str
) -> tuple[list[BundleMemberResult | None], set[str]]:
    """Per entry, its answer when it is known before its bytes arrive; None to verify.
    Content is "present" only when the namespace (or its trust domain) has sent it: for
    any other, its bytes are verified, so the answer tells nothing of other namespaces.
    Also the hashes the server holds already (their bytes need not be written again)."""
    hashes = {entry.sha256 for entry in entries}
    blobs = await stores.metadata.get_blobs(hashes)
    held = {sha for sha, blob in blobs.items() if blob.state is BlobState.present}
    # Only content held can be "present", and a present one needs no registered size:
    # on a first ingest nothing is held, and the bundle takes one lookup less.
    sent = await proven(stores.metadata, settings, namespace, held) if held else {}
    unanswered = hashes - sent.keys()
    sizes = await stores.metadata.registered_sizes(unanswered, namespace) if unanswered else {}
    seen: set[str] = set()
    verdicts: list[BundleMemberResult | None] = []
    for entry in entries:
        sha256 = entry.sha256
        blob = blobs.get(sha256)
        registered = sizes.get(sha256)
        if sha256 in seen:
            verdict = _refused(sha256, "appears more than once in this bundle")
        elif blob is not None and blob.state is BlobState.present and sha256 in sent:
            verdict = BundleMemberResult(sha256=sha256, status=BundleStatus.present)
        elif registered is None:
            verdict = _refused(
                sha256, "no file record has this content: register it with POST /put_files"
            )
        elif registered != entry.length:
            verdict = _refused(
                sha256, f"{entry.length} bytes sent, but the registered size is {registered}"
            )
        else:
            verdict = None
        seen.add(sha256)
        verdicts.append(verdict)
    return verdicts, held


def _refused(sha256: str, detail: str) -> BundleMemberResult:
    return BundleMemberResult(sha256=sha256, status=BundleStatus.refused, detail=detail)


def _digests(body: memoryview, spans: list[tuple[int, int, int]]) -> list[str]:
    return [hashlib.sha256(body[start:end]).hexdigest() for _, start, end in spans]


async def accept_bundle(
    stores: Stores,
    settings: Settings,
    memory: MemoryBudget,
    chunks: AsyncIterable[bytes],
    namespace: str,
) -> BundleResponse:
    """Read, verify and store one bundle of *namespace*'s contents; answer per member.

    Its bytes are read only once *memory* has room for all of them (until then the body
    waits in the connection), and what is already stored is looked up after that wait.
    A body still arriving after :data:`ARRIVAL_GRACE_SECONDS` gives its room back: a
    client on a slow link would otherwise keep faster ones waiting for as long as its
    bytes take, and its bytes take memory only as fast as they come.
    """
    reader = _Reader(with_idle_timeout(chunks, settings.upload_idle_timeout_seconds), BUNDLE_MAPS)
    try:
        response = await _accept(stores, settings, memory, reader, namespace)
    except Exception:  # every thread given the bundle's bytes has finished with them
        reader.close()
        raise
    except BaseException:
        # Cancelled: a thread may still be writing them (the pack writer goes on after
        # its awaiter is cancelled), and must not find the next bundle's bytes there.
        reader.close(reuse=False)
        raise
    reader.close()
    return response


async def _accept(
    stores: Stores, settings: Settings, memory: MemoryBudget, reader: _Reader, namespace: str
) -> BundleResponse:
    entries = await read_header(reader, settings)
    runs = slices(entries, SLICE_BYTES)
    # Two slices at a time: one arriving while the one before is written.
    largest = max(_slice_bytes(entries, run) for run in runs)
    total = sum(entry.length for entry in entries)
    async with memory.hold(min(total, 2 * largest)) as room:
        slow = asyncio.get_running_loop().call_later(ARRIVAL_GRACE_SECONDS, room.give_back)
        try:
            results, held = await _verdicts(stores, settings, entries, namespace)
            arriving = sum(e.length for e, r in zip(entries, results, strict=True) if r is None)
            quota = quotas.holding_bytes(
                stores.metadata, stores.coordination, settings.quota(namespace), namespace,
                arriving,
            )  # fmt: skip
            async with quota:  # held until what arrives is recorded
                return await _receive(
                    stores, settings, reader, entries, runs, results, held, namespace,
                    slow.cancel,
                )  # fmt: skip
        finally:  # a bundle refused before its bytes came leaves no timer behind
            slow.cancel()


def slices(entries: list[Entry], size: int) -> list[range]:
    """*entries* cut, in order, into runs of whole members of at most *size* bytes (a
    larger member alone)."""
    runs: list[range] = []
    first = length = 0
    for index, entry in enumerate(entries):
        if index > first and length + entry.length > size:
            runs.append(range(first, index))
            first, length = index, 0
        length += entry.length
    runs.append(range(first, len(entries)))
    return runs


def _slice_bytes(entries: list[Entry], run: range) -> int:
    return sum(entries[index].length for index in run)


async def _receive(
    stores: Stores,
    settings: Settings,
    reader: _Reader,
    entries: list[Entry],
    runs: list[range],
    results: list[BundleMemberResult | None],
    held: set[str],
    namespace: str,
    arrived: Callable[[], None],
) -> BundleResponse:
    """Read the members (calling *arrived* once they are all here), verify each, store
    those that are whole, and answer."""
    present = [
        e.sha256 for e, r in zip(entries, results, strict=True)
        if r is not None and r.status is BundleStatus.present
    ]  # fmt: skip
    group = stores.blobs.group()
    try:
        new, known, failure = await _store_slices(reader, group, entries, runs, results, held)
        arrived()
        # Bytes first (durable, final names), records second: never a record without
        # bytes.
        await group.commit()
    except BaseException:
        await group.abort()
        raise
    if present and len(settings.trust_domain(namespace)) > 1:
        # Sent by another namespace of the trust domain: this one holds it now too.
        await stores.metadata.add_possession(namespace, present, utcnow())
    await _record(stores, entries, new, known, namespace)  # what arrived whole is kept
    if failure is not None:
        raise failure
    for index in (*new, *known):
        results[index] = BundleMemberResult(
            sha256=entries[index].sha256, status=BundleStatus.stored
        )
    answered = [r for r in results if r is not None]
    if log.isEnabledFor(logging.DEBUG):  # asked once: a bundle has up to thousands
        for entry, result in zip(entries, answered, strict=True):
            # The access log shows one POST per bundle; this shows what each carried.
            log.debug("bundle member %s (%d bytes): %s", entry.sha256, entry.length, result.status)
    counts = Counter(r.status for r in answered)
    return BundleResponse(
        stored=counts[BundleStatus.stored],
        present=counts[BundleStatus.present],
        refused=counts[BundleStatus.refused],
        results=answered,
    )


async def _store_slices(
    reader: _Reader,
    group: GroupWriter,
    entries: list[Entry],
    runs: list[range],
    results: list[BundleMemberResult | None],
    held: set[str],
) -> tuple[list[int], list[int], Exception | None]:
    """Read the members a slice at a time (:data:`SLICE_BYTES`), each into a map of its
    own, while the slice before is hashed and added to *group* (see
    :func:`_verify_and_add`), so that the body keeps arriving while a slice is written.

    Returns the indexes of the members added and of those held already, and the failure
    that cut the body short (the members before it arrived whole). A body longer than
    its header says is refused whole: nothing of it is trusted."""
    new: list[int] = []
    known: list[int] = []
    failure: Exception | None = None
    writing: asyncio.Task[None] | None = None  # the slice before, being hashed and added
    try:
        for run in runs:
            body, failure = await reader.read_upto(_slice_bytes(entries, run))
            spans, failure = _whole_members(entries, results, run, body, failure)
            if writing is not None:
                await writing  # slices go into the group in order
                reader.release_oldest()
            writing = asyncio.create_task(
                _verify_and_add(group, entries, results, held, body, spans, new, known)
            )
            if failure is not None:
                break
        else:
            ended, failure = await reader.ends()
            if not ended:  # the header does not describe this body: nothing is trusted
                total = sum(entry.length for entry in entries)
                raise InvalidInputError(
                    f"the body goes on after its last member: the {len(entries)} entries' "
                    f"lengths add up to {total} bytes; nothing was stored"
                )
        if writing is not None:
            await writing
    except BaseException:
        if writing is not None and not writing.done():
            writing.cancel()
            reader.close(reuse=False)  # its threads may still read the maps
        raise
    return new, known, failure


def _whole_members(
    entries: list[Entry],
    results: list[BundleMemberResult | None],
    run: range,
    body: memoryview,
    failure: Exception | None,
) -> tuple[list[tuple[int, int, int]], Exception | None]:
    """``(index, start, end)`` in *body* of each member of *run* still to verify that
    arrived whole, and the failure that cut it short, if the body ends inside one."""
    spans: list[tuple[int, int, int]] = []
    start = 0
    for index in run:
        end = start + entries[index].length
        if end > len(body):
            return spans, failure or InvalidInputError(
                f"bundle ended inside member {index} of {len(entries)}"
            )
        if results[index] is None:  # else known already: the bytes are dropped
            spans.append((index, start, end))
        start = end
    return spans, failure


async def _verify_and_add(
    group: GroupWriter,
    entries: list[Entry],
    results: list[BundleMemberResult | None],
    held: set[str],
    body: memoryview,
    spans: list[tuple[int, int, int]],
    new: list[int],
    known: list[int],
) -> None:
    """Hash a slice's members in one go (per member, a read and an await of its own
    cost more than hashing a few KiB) and add those that verify to *group* (appended to
    *new*), but for content the server held already (sent by another namespace, appended
    to *known*), which is not written again. A member that fails is refused in
    *results*."""
    arriving = sum(end - start for _, start, end in spans)
    if arriving < INLINE_WORK_LIMIT:
        actuals = _digests(body, spans)
    else:
        actuals = await asyncio.to_thread(_digests, body, spans)
    added: list[tuple[str, memoryview]] = []  # each a view of the slice, not a copy
    for (index, start, end), actual in zip(spans, actuals, strict=True):
        sha256 = entries[index].sha256
        if actual != sha256:
            results[index] = _refused(sha256, f"content hashes to {actual}, not to this hash")
        elif sha256 in held:
            known.append(index)
        else:
            new.append(index)
            added.append((sha256, body[start:end]))
    if added:
        await group.add(added)


async def _record(
    stores: Stores, entries: list[Entry], new: list[int], known: list[int], namespace: str
) -> None:
    """Record the *new* members' contents (committed to the blob store) present, in one
    write that also records *namespace* as having sent them, and *known* ones (held
    already) as sent by *namespace* too."""
    if new:
        now = utcnow()
        records = [
            BlobRecord(sha256=entries[i].sha256, size=entries[i].length, stored_at=now) for i in new
        ]
        await stores.metadata.put_blobs(records, sent_by=namespace)
        telemetry.stored(len(records), sum(record.size for record in records))
    if known:
        await stores.metadata.add_possession(
            namespace, [entries[i].sha256 for i in known], utcnow()
        )
