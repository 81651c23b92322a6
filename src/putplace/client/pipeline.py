"""One client run: walk -> hash -> register -> upload, every stage running at once.

- A walker thread lists a directory at a time. A directory whose files are all as they
  were when they were last known to be on the server (the cache's listing signature) is
  handed over whole, and its files are only named to the scan (:meth:`Run._to_look_at`).
- The walker cuts the other files into batches of ``batch_size`` entries, looks each batch
  up in the hash cache and reads the small files it must hash itself (see
  :data:`SMALL_FILE`) while they come from the page cache, and hands them to the hashing
  pool while they come from the disk (:class:`_SmallReads`); larger ones go to the pool.
  It hands the batches over a bounded queue to the main thread, which passes each on
  once its hashes are in, with up to ``HASH_AHEAD`` batches behind it still being hashed.
  A small file (up to ``bundle_threshold``) is read whole while it is hashed and its bytes
  are kept for the upload, within a fixed memory budget (:class:`_Budget`: hashing
  waits for room while uploads are behind), so content is read once.
- Registration (one ``POST /put_files`` per batch) runs in its own pool, with up to
  ``REGISTER_IN_FLIGHT`` batches in flight.
- Content the server asks for goes to the upload pool (``upload_workers`` requests at
  once): small contents are gathered into bundles (``POST /bundles``, up to
  ``bundle_bytes`` and ``bundle_files`` each), larger ones are streamed from disk with
  one ``PUT /blobs/{sha256}`` each; the largest (``tus_threshold``) over tus, resumable
  and in parallel parts (:mod:`putplace.client.tus`).

Every hand-over is bounded (queue sizes, in-flight limits, the kept-bytes budget), so
what a run holds does not grow with the size of the tree. The process's RSS still rises
over the first 100,000 or so files of a first ingest, to about 190 MiB on Python 3.11
(200-260 MiB measured on 3.13 with a budget of 64 MiB; restic: 113 MiB for the same
100,000 small files), and little after (249 MiB at 300,000, on 3.13): the client
cache's page cache fills (up to ``CACHE_KIB``), and glibc keeps the memory of freed
contents (its arenas held 55-111 MiB free at the peak; ``malloc_trim`` after each
bundle, tried, gave peaks of 192-229 against 245-259 MiB, and was left out). A stage
that is ahead waits for the one behind it; nothing waits for a whole earlier stage to
finish.

Older servers: without ``/put_files`` the run registers one ``POST /put_file`` per file
and uploads multipart ``POST /upload_file``; without ``/bundles`` it sends every content
with ``PUT /blobs``. Either is learnt from the first 404/405 and kept for the run.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import queue
import socket
import statistics
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, TypeVar

import orjson

from putplace.client.ahead import SendingAhead
from putplace.client.cache import ClientCache, listing_signature
from putplace.client.cancel import Cancelled, check
from putplace.client.hashing import (
    FileChangedError,
    check_unchanged,
    hash_entry,
    in_page_cache,
    link_bytes,
    open_scanned,
    read_whole,
)
from putplace.client.names import wire_path
from putplace.client.progress import Reporter
from putplace.client.scanner import FileEntry, Listing, walk_listings
from putplace.client.tus import (
    ContentRefusedError,
    ResumableUpload,
    UnhashedUpload,
    UploadGoneError,
    file_identity,
    tus_checksum,
)
from putplace.client.uploader import ApiClient, ApiError, AuthError, NotSupportedError, Opener
from putplace.sequences import chunked

T = TypeVar("T")
MiB: Final = 1024 * 1024
HASH_AHEAD: Final = 2
"""Batches being hashed besides the one being handed to registration."""
REGISTER_IN_FLIGHT: Final = 2
"""``POST /put_files`` requests in flight at once."""
WALK_AHEAD: Final = 2
"""Walked batches waiting to be hashed."""
KEEP_BUDGET: Final = 96 * MiB
"""Most bytes of small files kept in memory between hashing and upload. Room for a
bundle filling and three being sent, one to each of a default server's three workers
(bundles of 5,000 files of 1-8 KiB are about 22 MiB). With 64 MiB two were sent at
once, one worker had little to do, and the walk waited 1.4-2.8 s for room: a first
ingest of 100,000 such files, 14 alternated pairs, took a median of 8.29 s with 96 MiB
against 8.56 s with 64 (96 faster in 11 pairs; 128 MiB no faster than 96), and the
client's peak RSS was 190 against 150 MiB. 48 and 32 MiB were slower still."""
RECENTLY_SENT: Final = 16_384
"""Contents uploaded by this run that are remembered, so that a file registered while
its content was being sent is not sent again (about 2 MiB)."""
HASH_CHUNK_FILES: Final = 32
HASH_CHUNK_BYTES: Final = 1 * MiB
"""A hashing task reads up to this many files or (about) bytes."""
SMALL_FILE: Final = 16 * 1024
"""Tasks of files up to this size are hashed by the walking thread itself, not the pool,
while they come from the page cache (see :class:`_SmallReads`). Their cost is Python's
per-file work, which holds the GIL: more threads only hand the GIL back and forth around
every system call (30,000 files of 1-8 KiB, walk and hash only:
1.9 s with one thread, 2.5 s with two, 3.4 s with four; 80,000 futex calls against
450,000 with two). Reading them on the walking thread rather than on a thread of their
own took a dry run of 100,000 files from 3.9 to 2.95 CPU-s and the client's context
switches in a first ingest from 13,000 to 3,000-4,000. Larger files are hashed outside
the GIL, where the pool's threads do overlap."""
SEEN_PER_REQUEST: Final = 5_000
"""Files of unchanged directories named to a scan per request (servers take 10,000):
each request is a commit on the server, 20 rather than 100 for 100,000 unchanged files."""
_POLL: Final = 0.1
"""Seconds between checks of the stop event while waiting on another stage."""


@dataclass(frozen=True)
class Options:
    paths: list[str]
    excludes: list[str]
    hostname: str
    ip_address: str
    batch_size: int = 2000
    hash_workers: int = max(2, min(8, os.cpu_count() or 2))
    upload_workers: int = 4
    dry_run: bool = False
    rehash: bool = False
    resend: bool = False
    bundle_threshold: int = 1 * MiB
    """Contents of at most this many bytes go in bundles; 0: no bundles."""
    bundle_bytes: int = 24 * MiB
    bundle_files: int = 5000
    """Most bytes and contents per bundle. Each bundle is a commit of the server's pack
    index and blob records, and a commit writes every page it touched of their
    hash-keyed indexes: nearly as many pages for 2,000 random keys as for 5,000. Against
    8 MiB and 2,000 (bundles of ~1,800 files of 1-8 KiB), a first ingest of 100,000 such
    files: the server's CPU 0.88x-0.91x, what it wrote 604 against 708 MiB, the wall
    time 0.92x-0.97x (4 runs of 1-5 alternated pairs); the client's peak RSS about the
    same (206-231 against 189-208 MiB): the bytes kept for bundles stay within
    ``KEEP_BUDGET``, and no file was read twice (101,477 against 101,480 ``openat``).
    (2,000 rather than 1,000 before: 0.95x.) Servers refuse more than
    ``PUTPLACE_MAX_BUNDLE_FILES`` (default 10,000) and ``PUTPLACE_MAX_BUNDLE_BYTES``
    (32 MiB), and the client halves its bundles when refused."""
    tus_threshold: int = 64 * MiB
    """Contents of at least this many bytes go over tus (resumable); 0: never."""
    tus_parts: int = 1
    """Parallel parts of the largest (at least 64 MiB each)."""


class _SendingInterrupted(Exception):
    """Sending a file while hashing it stopped part-way; the part sent is kept."""


@dataclass
class _Item:
    entry: FileEntry
    record: dict[str, Any]
    fingerprint: str
    data: bytes | None = None
    """The file's bytes, when read whole while hashing (small files only)."""
    sent: UnhashedUpload | None = None
    """The file's bytes, already sent while hashing (large files only), to be joined
    once the server asks for them, or freed."""
    queued: bool = False
    """Its size is already in the progress bar's upload total."""
    # The record's, taken once: the stages of a run ask for them ten times a file.
    sha256: str = field(init=False)
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.sha256 = self.record["sha256"]
        self.size = self.record["file_size"]


def default_ip() -> str:
    """The address of the interface that would reach the internet; no packet is sent."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: routing lookup only
            return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def record_for(entry: FileEntry, sha256: str, hostname: str, ip_address: str) -> dict[str, Any]:
    """The ``POST /put_file`` body for *entry* (also one item of ``POST /put_files``)."""
    st = entry.stat
    return {
        "filepath": wire_path(entry.path),
        "hostname": hostname,
        "ip_address": ip_address,
        "sha256": sha256,
        "file_size": len(link_bytes(entry)) if entry.is_symlink else st.st_size,
        "file_mode": st.st_mode,
        "file_uid": st.st_uid,
        "file_gid": st.st_gid,
        "file_mtime": st.st_mtime,
        "file_atime": st.st_atime,
        "file_ctime": st.st_ctime,
        "is_symlink": entry.is_symlink,
        "link_target": None if entry.link_target is None else wire_path(entry.link_target),
    }


def shown_time(value: float) -> str:
    """``repr(value)``, the form every client's cache holds fingerprints in. Between 1e-4
    and 1e16 (every file time since 1970 written with its nanoseconds), where neither
    writes an exponent, orjson writes the very same characters: both give the fewest
    digits that read back as the value, the nearest where several would. orjson takes a
    fifth of the time; repr's arbitrary-precision arithmetic was 4% of a first ingest's
    client instructions (13,000 a file)."""
    if type(value) is float and 1e-4 <= abs(value) < 1e16:  # orjson refuses subclasses
        return orjson.dumps(value).decode()
    return repr(value)


def fingerprint(record: dict[str, Any]) -> str:
    """What must be unchanged for a record not to be sent again (atime excluded)."""
    r = record  # one f-string: a third of the cost of joining a generator, for each file
    mtime, ctime = r["file_mtime"], r["file_ctime"]
    # Showing a float is most of the cost (11% of a rescan's CPU); a file written once
    # has the same mtime and ctime, so it is shown once (not for 0, which may be -0.0).
    shown_mtime = shown_time(mtime)
    shown_ctime = shown_mtime if ctime == mtime and mtime else shown_time(ctime)
    return (
        f"{r['sha256']}|{r['file_size']}|{r['file_mode']}|{r['file_uid']}|{r['file_gid']}|"
        f"{shown_mtime}|{shown_ctime}|{r['link_target']}|{r['ip_address']}"
    )


def _nested(roots: Iterable[str]) -> bool:
    """Whether a root is another, or inside another (``ppclient /data /data/logs``)."""
    absolute = [os.path.abspath(root) for root in roots]
    return any(os.path.commonpath([a, b]) in (a, b) for a, b in itertools.combinations(absolute, 2))


def _batches(entries: Iterable[FileEntry], size: int) -> Iterator[list[FileEntry]]:
    iterator = iter(entries)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _chunks(entries: list[FileEntry]) -> Iterator[list[FileEntry]]:
    """*entries* in hashing tasks of up to ``HASH_CHUNK_FILES`` files and about
    ``HASH_CHUNK_BYTES`` bytes (a large file is a task of its own)."""
    chunk: list[FileEntry] = []
    size = 0
    for entry in entries:
        chunk.append(entry)
        size += entry.stat.st_size
        if len(chunk) >= HASH_CHUNK_FILES or size >= HASH_CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


class _SmallReads:
    """Walking thread: whether it reads and hashes the next chunk of small files itself
    (see :data:`SMALL_FILE`), or leaves it to the hashing pool.

    Files in the page cache are read fastest by the walking thread alone. Files read from
    the disk (a host's first ingest after a reboot) wait on it one at a time there: the
    pool's threads wait on several at once. So the walking thread asks the page cache
    whether it holds the first file of each chunk (:func:`in_page_cache`: a one-byte
    read that fails rather than wait), and hands the chunk to the pool when it does not.
    Measured on the development machine, per file of 1-8 KiB: a median of 12 us (p90 25)
    from the page cache, 97 us (p90 162) from the disk. A first ingest of 100,000 such
    files with the page cache dropped: 12.4-12.7 s read here, 8.5-9.0 s with the pool's
    two threads (restic: 10.8-10.9 s).

    Where the OS cannot tell, the walking thread times the chunks it reads instead, and
    while the median of the last ``WINDOW`` is over ``SLOW_PER_FILE`` seconds a file, it
    hands chunks to the pool, still reading one in ``SAMPLE_EVERY`` itself to see when
    reads are fast again. Timing misjudges a warm page cache, which is why it is only the
    fallback: the time a read takes includes waiting for the GIL, which the client's
    other threads (registering, uploading) hold often. A first ingest of 100,000 files
    from the page cache handed 2,600 of its 3,150 chunks to the pool, and made the
    client spend 10.0-12.1 CPU-s and the run 12.4-15.1 s, against 8.0-8.9 CPU-s and
    10.5-12.9 s with every chunk read here (3 alternated pairs).
    """

    WINDOW: Final = 8
    SLOW_PER_FILE: Final = 50e-6
    SAMPLE_EVERY: Final = 8

    def __init__(self, probe: Callable[[FileEntry], bool | None] | None = None) -> None:
        self._probe = in_page_cache if probe is None else probe
        self._recent: deque[float] = deque(maxlen=self.WINDOW)
        self._slow = False
        self._handed = 0

    def inline(self, chunk: list[FileEntry]) -> bool:
        """Whether to read *chunk* here (else: on the pool)."""
        cached = self._probe(chunk[0])  # chunks are never empty (_chunks)
        if cached is not None:
            return cached
        if not self._slow:
            return True
        self._handed += 1
        return self._handed % self.SAMPLE_EVERY == 0

    def took(self, seconds: float, files: int) -> None:
        """A chunk of *files* read here took *seconds* (for the fallback)."""
        self._recent.append(seconds / files)
        self._slow = (
            len(self._recent) == self.WINDOW
            and statistics.median(self._recent) > self.SLOW_PER_FILE
        )


class _Budget:
    """Bytes that may be kept in memory between hashing and upload.

    Taking waits for room while a task that gives kept bytes back is in flight (a
    bundle being sent, a batch being registered: each ends without waiting for any
    hashing, and its bytes are then freed or in a bundle). With none in flight nothing
    is sure to make room (the bytes kept may all be in a bundle still filling), so
    taking does not wait: no room, the file is not kept and is read again to be sent.
    Not waiting at all, a first ingest of 100,000 small files ran ahead of its uploads
    and read about 10,000 files twice."""

    def __init__(self, limit: int, stop: threading.Event) -> None:
        self._left = limit
        self._returning = 0
        self._stop = stop
        self._changed = threading.Condition()

    def take(self, size: int) -> bool:
        with self._changed:
            while size > self._left and self._returning:
                check(self._stop)
                self._changed.wait(_POLL)
            if size > self._left:
                return False
            self._left -= size
            return True

    def give(self, size: int) -> None:
        with self._changed:
            self._left += size
            self._changed.notify_all()

    def returning(self, tasks: int) -> None:
        """*tasks* more (or, negative, fewer) tasks that give kept bytes back are in
        flight."""
        with self._changed:
            self._returning += tasks
            self._changed.notify_all()


class _InFlight:
    """A counting limit that is also a tracker: :meth:`enter` waits while *limit* tasks
    are in flight, :meth:`drain` until none is. Both give up (``Cancelled``) once *stop*
    is set, so no stage can hang after the run has failed."""

    def __init__(self, limit: int, stop: threading.Event) -> None:
        self._limit = limit
        self._count = 0
        self._stop = stop
        self._changed = threading.Condition()

    def enter(self) -> None:
        with self._changed:
            while self._count >= self._limit:
                check(self._stop)
                self._changed.wait(_POLL)
            self._count += 1

    def leave(self) -> None:
        with self._changed:
            self._count -= 1
            self._changed.notify_all()

    def drain(self) -> None:
        with self._changed:
            while self._count:
                check(self._stop)
                self._changed.wait(_POLL)


@dataclass
class _Hashing:
    """A batch on its way through the hashing pool, from the walk of one root."""

    batch: list[FileEntry]
    cached: list[str | None]
    futures: list[Future[list[_Item | None]]]
    root: str


def _hashed(hashing: _Hashing) -> bool:
    """Whether every file of *hashing*'s batch is hashed already."""
    return all(future.done() for future in hashing.futures)


@dataclass
class _Unchanged:
    """Directories of one root found as they were when all their files were last known
    to be on the server: their files are only named to the root's scan."""

    listings: list[tuple[str, Listing, str]]  # (directory as sent, its files, signature)
    root: str


_END: Final = object()


class Run:
    """One run over ``options.paths``. ``api`` is None for a dry run.

    *stop* is set when the run ends abnormally (Ctrl-C, a refused key, a failed stage):
    every stage then abandons its work at the next chunk or wait, so the run ends
    promptly. Pass the event the :class:`ApiClient` was given so that retry waits end too.
    """

    def __init__(
        self,
        options: Options,
        api: ApiClient | None,
        cache: ClientCache,
        reporter: Reporter,
        stop: threading.Event | None = None,
    ) -> None:
        self.options = options
        self.stop = stop or threading.Event()
        self.api = api
        self.cache = cache
        self.reporter = reporter
        self.summary = reporter.summary
        self._fatal: BaseException | None = None
        self._fatal_lock = threading.Lock()
        self._walked: queue.Queue[_Hashing | object] = queue.Queue(WALK_AHEAD)
        # root walked -> its open scan on the server (roots that are directories)
        self._scans: dict[str, str] = {}
        # Set once the scans are open: the walk starts before, and a file sent apart (a
        # large one) may finish its upload first; its record must still name its scan,
        # or completing the scan would take that file for deleted.
        self._scans_open = threading.Event()
        self._keep = _Budget(KEEP_BUDGET, self.stop)
        self._reads = _SmallReads()
        self._registering = _InFlight(REGISTER_IN_FLIGHT, self.stop)
        self._uploading_now = _InFlight(options.upload_workers * 2, self.stop)
        # content being uploaded in this run -> other records with the same content
        self._uploading: dict[str, list[_Item]] = {}
        # The last RECENTLY_SENT contents uploaded, oldest first. An OrderedDict: removing
        # a plain dict's first key again and again leaves holes that every next(iter())
        # walks over (7.5% of the client's time in a 100,000-file ingest).
        self._sent: OrderedDict[str, None] = OrderedDict()
        self._upload_lock = threading.Lock()
        self._bundle: list[_Item] = []
        self._bundle_size = 0
        self._bundle_bytes = options.bundle_bytes
        self._bundle_files = options.bundle_files
        self._bundle_lock = threading.Lock()
        self._single_mode = False  # the server has no /put_files (nor /blobs)
        #: Records per /put_files a server with a lower limit took (learnt from its 413).
        self._records_per_request: int | None = None
        self._batch_lock = threading.Lock()
        self._no_bundles = options.bundle_threshold <= 0  # or the server has no /bundles
        # The server's tus checksum algorithm, asked once (None: not yet); "" without tus.
        self._tus: str | None = None if options.tus_threshold > 0 else ""
        self._tus_lock = threading.Lock()
        # Large files sent while hashed, at most one per upload worker (each holds a
        # connection). Each is registered apart from its batch once sent, so the batches
        # after it do not wait for its upload; the files of its size hashed meanwhile
        # wait (with their roots) to be registered after it.
        self._ahead: SendingAhead[tuple[_Item, str]] = SendingAhead(options.upload_workers)
        # Tasks registering files apart (no limit: the pool's threads bound them, and a
        # task adds the files that waited for it before it ends).
        self._apart = _InFlight(sys.maxsize, self.stop)
        self._senders: ThreadPoolExecutor | None = None
        self._uploaders: ThreadPoolExecutor | None = None
        self._hashers: ThreadPoolExecutor | None = None
        # Directories (as sent) whose files were looked at one by one -> their listing's
        # signature, remembered at the end unless one of their files is not known to be
        # on the server (an error, a refusal, an upload that failed).
        self._listed: dict[str, str] = {}
        self._unconfirmed: set[str] = set()
        self._listing_lock = threading.Lock()
        # What the cache held when the run began (see _what_the_cache_knows).
        self._hashes_cached = True
        self._records_cached = True

    # -- the run -----------------------------------------------------------------------
    def execute(self) -> None:
        options = self.options
        with (
            ThreadPoolExecutor(options.hash_workers, thread_name_prefix="hash") as hashers,
            ThreadPoolExecutor(REGISTER_IN_FLIGHT, thread_name_prefix="register") as registrars,
            ThreadPoolExecutor(options.upload_workers, thread_name_prefix="upload") as uploaders,
            ThreadPoolExecutor(options.upload_workers, thread_name_prefix="unhashed") as senders,
        ):
            walker = threading.Thread(target=self._walk, args=(hashers,), name="walk", daemon=True)
            self._uploaders, self._hashers, self._senders = uploaders, hashers, senders
            try:
                self._what_the_cache_knows()
                # The walk starts while the scans open (a request each): nothing is
                # registered before they are (see _scan_of).
                walker.start()
                self._open_scans()
                self._scans_open.set()
                hashing: deque[_Hashing] = deque()
                while (walked := self._next_walked()) is not None:
                    if isinstance(walked, _Unchanged):
                        self._register_later(registrars, self._confirm_unchanged, walked)
                        continue
                    hashing.append(walked)
                    # In order; a batch already hashed goes on at once (small files are
                    # hashed by the walker), so the server gets the first batch without
                    # waiting for the walker to fill the pool's look-ahead.
                    while hashing and (len(hashing) > HASH_AHEAD or _hashed(hashing[0])):
                        self._pass_on(hashing.popleft(), registrars)
                while hashing:
                    self._pass_on(hashing.popleft(), registrars)
                # Registration may hash files again (a directory the server lost), and
                # those may go apart; files apart never queue registrations.
                self._registering.drain()
                self._apart.drain()
                self._send_bundle_now()  # the last, partly filled bundle
                self._uploading_now.drain()
                self._raise_fatal()
                self._finish_scans(completed=not self.summary.errors)
                self._remember_listings()
            except BaseException as exc:
                self.stop.set()
                self._finish_scans(completed=False)
                for pool in (hashers, registrars, uploaders, senders):
                    pool.shutdown(wait=False, cancel_futures=True)
                if walker.is_alive():  # it sees the stop within a batch
                    walker.join()
                if isinstance(exc, Cancelled) and self._fatal is not None:
                    raise self._fatal from None
                raise
        walker.join()
        self.cache.commit()

    def _what_the_cache_knows(self) -> None:
        """Whether the cache holds hashes, and records of this host on this server, as
        the run begins. What it lacks now it can only learn from this run, and the walk
        meets each path once when no root is inside another: a first run then asks it
        nothing of its files' records, and of their hashes only for files with other
        hard links (which it may have just read under another name). Asking, to find
        nothing, was 3% of a first ingest's client instructions."""
        if _nested(self.options.paths):
            return  # a file may be met twice: ask as for any run
        self._hashes_cached = self.cache.holds_hashes()
        if self.api is not None:
            self._records_cached = self.cache.holds_records(
                self.api.cache_key, self.options.hostname
            )

    def _raise_fatal(self) -> None:
        if self._fatal is not None:
            raise self._fatal

    def _fail(self, exc: BaseException) -> None:
        """End the run because of *exc* (raised again by the main thread)."""
        with self._fatal_lock:
            if self._fatal is None:
                self._fatal = exc
        self.stop.set()

    def _guarded(self, task: Callable[[Any], None], argument: Any, tracker: _InFlight) -> None:
        """Run a pool task; anything it did not handle ends the run. *tracker* is left
        only afterwards, so a stage that drains it cannot miss the failure."""
        try:
            task(argument)
        except Cancelled:
            pass
        except BaseException as exc:
            self._fail(exc)
        finally:
            tracker.leave()

    # -- scans -------------------------------------------------------------------------
    def _open_scans(self) -> None:
        """One scan per directory walked, so the server can tell what is gone."""
        if self.api is None:
            return
        for root in dict.fromkeys(os.path.abspath(p) for p in self.options.paths):
            if not os.path.isdir(root) or os.path.islink(root):
                continue
            scan = self.api.open_scan(self.options.hostname, wire_path(root),
                                      list(self.options.excludes))  # fmt: skip
            if scan is None:  # a server without scans
                return
            self._scans[root] = scan

    def _finish_scans(self, *, completed: bool) -> None:
        """Complete the scans when every file was walked, read and registered; any error
        (an unreadable directory, a refused record) or an interruption abandons them, so
        nothing the run missed is taken for deleted."""
        scans, self._scans = self._scans, {}
        for scan in scans.values():
            if self.api is None:
                break
            try:
                answer = self.api.finish_scan(scan, completed=completed)
            except Cancelled:  # the run is stopping: a scan left open deletes nothing
                return
            except ApiError as exc:
                if completed:
                    self._error("(scan)", f"could not complete the scan: {exc.detail}")
                continue
            if completed:
                self.summary.add(deleted_on_server=int(answer.get("deleted", 0)))

    # -- walking -----------------------------------------------------------------------
    def _walk(self, hashers: ThreadPoolExecutor) -> None:
        options = self.options
        try:
            # Root by root, so each batch belongs to one root's scan.
            for root in options.paths:
                absolute = os.path.abspath(root)
                listings = walk_listings(
                    [root], options.excludes, on_error=self._error, on_skip=self.reporter.skip
                )
                for batch in _batches(self._to_look_at(listings, absolute), options.batch_size):
                    self._hand_over(self._start_hashing(absolute, batch, hashers))
            self._hand_over(_END)
        except Cancelled:
            pass
        except BaseException as exc:
            self._fail(exc)

    def _hand_over(self, item: object) -> None:
        while True:
            check(self.stop)
            try:
                self._walked.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue

    # -- directories found unchanged ---------------------------------------------------
    def _to_look_at(self, listings: Iterable[Listing], root: str) -> Iterator[FileEntry]:
        """Walking thread: the files of *listings* to look at one by one. Directories
        found as they were when all their files were last known to be on the server are
        handed over whole instead (one cache lookup per ``batch_size`` files): a rescan
        then costs a stat per file, not a cache lookup, record and fingerprint each."""
        group: list[tuple[str, Listing, str]] = []
        unchanged: list[tuple[str, Listing, str]] = []
        files = 0
        for listing in listings:
            if listing.directory is None or self.api is None or self.options.dry_run:
                yield from listing.entries
            elif any(entry.is_symlink for entry in listing.entries):
                yield from listing.entries  # read every time (see _start_hashing)
            else:
                directory = wire_path(listing.directory)
                signature = listing_signature(listing.entries, self.options.ip_address)
                group.append((directory, listing, signature))
                files += len(listing.entries)
                if files >= self.options.batch_size:
                    yield from self._sort_out(group, unchanged)
                    group, files = [], 0
                    if sum(len(g[1].entries) for g in unchanged) >= SEEN_PER_REQUEST:
                        self._hand_over(_Unchanged(unchanged, root))
                        unchanged = []
        yield from self._sort_out(group, unchanged)
        if unchanged:
            self._hand_over(_Unchanged(unchanged, root))

    def _sort_out(
        self, group: list[tuple[str, Listing, str]], unchanged: list[tuple[str, Listing, str]]
    ) -> Iterator[FileEntry]:
        """The files of *group*'s directories that changed; the others into *unchanged*."""
        if not group:
            return
        assert self.api is not None
        known: set[str] = set()
        if self._records_cached and not (self.options.rehash or self.options.resend):
            known = self.cache.unchanged_listings(
                self.api.cache_key, self.options.hostname, {d: sig for d, _, sig in group}
            )
        for directory, listing, signature in group:
            if directory in known:
                unchanged.append((directory, listing, signature))
            else:
                with self._listing_lock:
                    self._listed[directory] = signature
                yield from listing.entries

    def _confirm_unchanged(self, unchanged: _Unchanged) -> None:
        """Registration pool: name the files of unchanged directories to the scan. If
        the server no longer holds them all live (deleted meanwhile, or restored from a
        backup), their directories are forgotten and every file is looked at and sent
        again, as in any batch whose files the server lost."""
        assert self.api is not None
        entries = [e for _, listing, _ in unchanged.listings for e in listing.entries]
        scan = self._scan_of(unchanged.root)
        paths = [wire_path(entry.path) for entry in entries]
        if scan is None or self._seen(scan, paths) == len(paths):
            self.summary.add(files_seen=len(entries), unchanged=len(entries))
            self.reporter.file_done(len(entries))
            return
        server, host = self.api.cache_key, self.options.hostname
        self.cache.forget_listings(server, host, [d for d, _, _ in unchanged.listings])
        with self._listing_lock:
            self._listed.update((d, sig) for d, _, sig in unchanged.listings)
        assert self._hashers is not None
        items = self._collect(self._start_hashing(unchanged.root, entries, self._hashers))
        self.cache.commit()
        self._register_batch((items, scan))

    def _seen(self, scan: str, paths: list[str]) -> int:
        assert self.api is not None
        return sum(self.api.scan_seen(scan, list(c)) for c in chunked(paths, SEEN_PER_REQUEST))

    def _remember_listings(self) -> None:
        """At the end of a run: the directories all of whose files are on the server."""
        if self.api is None or self.options.dry_run:
            return
        with self._listing_lock:
            clean = [(d, sig) for d, sig in self._listed.items() if d not in self._unconfirmed]
        self.cache.remember_listings(self.api.cache_key, self.options.hostname, clean)

    def _error(self, path: str, message: str) -> None:
        """Report a problem with *path*: its directory is not remembered as on the server."""
        self.reporter.error(path, message)
        self._unconfirm(path)

    def _unconfirm(self, path: str) -> None:
        with self._listing_lock:
            self._unconfirmed.add(os.path.dirname(wire_path(path)))

    def _next_walked(self) -> _Hashing | _Unchanged | None:
        while True:
            check(self.stop)
            try:
                item = self._walked.get(timeout=_POLL)
            except queue.Empty:
                continue
            if item is _END:
                return None
            assert isinstance(item, _Hashing | _Unchanged)
            return item

    # -- hashing -----------------------------------------------------------------------
    def _start_hashing(
        self, root: str, batch: list[FileEntry], hashers: ThreadPoolExecutor
    ) -> _Hashing:
        """Walking thread: look *batch* up in the cache and hash the files that must be
        read, a few at a time (one task per file costs more than hashing a small file):
        small ones here and now (see :data:`SMALL_FILE`), others on *hashers*."""
        cached: list[str | None] = (
            [None] * len(batch) if self.options.rehash else self._cached_hashes(batch)
        )
        misses = [e for e, sha in zip(batch, cached, strict=True) if sha is None or e.is_symlink]
        futures: list[Future[list[_Item | None]]] = []
        for chunk in _chunks(misses):
            if all(e.stat.st_size <= SMALL_FILE for e in chunk) and self._reads.inline(chunk):
                done: Future[list[_Item | None]] = Future()
                started = time.perf_counter()
                done.set_result(self._hash_some(chunk, root))
                self._reads.took(time.perf_counter() - started, len(chunk))
                futures.append(done)
            else:
                futures.append(hashers.submit(self._hash_some, chunk, root))
        return _Hashing(batch, cached, futures, root)

    def _cached_hashes(self, batch: list[FileEntry]) -> list[str | None]:
        if self._hashes_cached:
            return self.cache.lookup_hashes([entry.stat for entry in batch])
        cached: list[str | None] = [None] * len(batch)
        if linked := [i for i, entry in enumerate(batch) if entry.stat.st_nlink > 1]:
            found = self.cache.lookup_hashes([batch[i].stat for i in linked])
            for index, sha in zip(linked, found, strict=True):
                cached[index] = sha
        return cached

    def _collect(self, hashing: _Hashing) -> list[_Item]:
        """The batch's items in walk order (cache hits without reading the file)."""
        # Every file of the batch hashed (or sent apart) first: a cache hit of the size
        # of a file the batch sends while hashing must see that it waits for it.
        hashed = iter([item for future in hashing.futures for item in future.result()])
        items: list[_Item] = []
        read: list[tuple[os.stat_result, str]] = []
        hits = 0
        for entry, sha in zip(hashing.batch, hashing.cached, strict=True):
            if sha is None or entry.is_symlink:
                item = next(hashed)
                if item is not None and not entry.is_symlink:
                    read.append((entry.stat, item.sha256))
            else:
                item = self._item(entry, sha)
                hits += 1
            if item is None or self._ahead.waits(item.size, (item, hashing.root)):
                continue
            items.append(item)
        # Stored here, a batch at a time, not by the hashing thread: that thread is the
        # client's busiest on small files, and this is off its path.
        self.cache.store_hashes(read)
        self.summary.add(files_seen=hits)
        self.reporter.file_done(hits)
        return items

    def _item(self, entry: FileEntry, sha256: str, data: bytes | None = None) -> _Item:
        record = record_for(entry, sha256, self.options.hostname, self.options.ip_address)
        return _Item(entry, record, "" if self.options.dry_run else fingerprint(record), data)

    def _hash_some(self, entries: list[FileEntry], root: str) -> list[_Item | None]:
        """Hashing worker: items for *entries* (found under *root*), None for those
        reported as errors and those sent while hashed (registered on their own)."""
        items: list[_Item | None] = []
        try:
            for entry in entries:
                items.append(self._hash_one(entry, root))
        finally:
            self.summary.add(files_seen=len(entries))
            self.reporter.file_done(len(entries))
        return items

    def _hash_one(self, entry: FileEntry, root: str) -> _Item | None:
        kept = 0
        try:
            check(self.stop)
            data: bytes | None = None
            if self._keeps(entry):
                kept = entry.stat.st_size
                data = read_whole(entry)
                sha = hashlib.sha256(data).hexdigest()
            elif self._sends_unhashed(entry):
                self._register_apart(self._send_and_register, entry, root)
                return None
            else:
                sha = hash_entry(entry, self.stop)
            return self._item(entry, sha, data)
        except Cancelled:
            self._keep.give(kept)
            raise
        except (FileChangedError, OSError) as exc:
            self._keep.give(kept)
            self._unreadable(entry, exc)
        return None

    def _unreadable(self, entry: FileEntry, exc: FileChangedError | OSError) -> None:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        self._error(entry.path, detail)

    def _sends_unhashed(self, entry: FileEntry) -> bool:
        """Send *entry* while hashing it? A file for tus, sent whole, whose content the
        server cannot hold yet: no record of that size (asked per file: a request per
        64 MiB or more), nor a file of that size sent so earlier in this run (its record
        may not be in yet: a copy, or a hard link, would be sent in full a second time).
        Takes one of the upload workers' turns if so."""
        size = entry.stat.st_size
        if (
            self.options.dry_run
            or entry.is_symlink
            or self.options.tus_parts != 1
            or not self._speaks_tus(size)
        ):
            return False
        if not self._ahead.claim(size):
            return False
        assert self.api is not None
        sends = False
        try:
            sends = self.api.holds_size(size) is False
        finally:
            if not sends:  # the server may hold it (or could not say): not sent ahead
                self._ahead.give_back()
                self._sent_ahead(size)
        return sends

    def _sent_ahead(self, size: int) -> None:
        """The file of *size* sent while hashed is registered (or was not sent so after
        all): register the files that waited for it. (A file of that size with other
        content waits too: which it is, nobody can tell before the file being sent is
        hashed; on one link, their uploads would share it anyway.)"""
        waited = self._ahead.over(size)
        if not self.stop.is_set():
            for item, root in waited:
                self._register_apart(self._register_one, item, root)

    def _register_apart(self, task: Callable[[T, str], None], subject: T, root: str) -> None:
        """Run *task(subject, root)*, which registers a file on its own: a file sent
        while hashed takes as long as its upload (hours on a slow link), and the batches
        walked after it must not wait for it."""
        assert self._senders is not None
        self._apart.enter()
        try:
            self._senders.submit(
                self._guarded, lambda job: task(*job), (subject, root), self._apart
            )
        except BaseException:
            self._apart.leave()
            raise

    def _send_and_register(self, entry: FileEntry, root: str) -> None:
        try:
            try:
                item = self._hash_while_sending(entry)
            except (FileChangedError, OSError) as exc:
                self._unreadable(entry, exc)
                return
            except _SendingInterrupted as exc:
                self._error(entry.path, f"upload failed: {exc}; the bytes the server has are "
                            "kept, and the next run continues from there")  # fmt: skip
                return
            self._register_one(item, root)
        finally:
            self._sent_ahead(entry.stat.st_size)

    def _register_one(self, item: _Item, root: str) -> None:
        self.cache.store_hashes([(item.entry.stat, item.sha256)])
        self._register_batch(([item], self._scan_of(root)))

    def _scan_of(self, root: str) -> str | None:
        """The scan of *root* once the scans are open (None: the server has none), waiting
        for them if need be; :class:`Cancelled` if the run stops meanwhile."""
        while not self._scans_open.wait(0.1):
            check(self.stop)
        return self._scans.get(root)

    def _hash_while_sending(self, entry: FileEntry) -> _Item:
        """The item of a large file whose bytes are sent as it is hashed (read once). If
        the upload cannot start or is refused, the file is hashed alone and sent later as
        any other, so a failure here loses nothing. Raises :class:`_SendingInterrupted`
        when sending stopped part-way (see :meth:`_sent_while_hashed`)."""
        assert self.api is not None
        self.reporter.upload_queued(entry.stat.st_size)
        try:
            upload = UnhashedUpload(
                self.api, self.cache, file_identity(entry.stat), entry.stat.st_size,
                lambda: open_scanned(entry), progress=self.reporter.upload_progress,
                stop=self.stop,
            )  # fmt: skip
            sha = self._sent_while_hashed(entry, upload)
        finally:
            self._ahead.give_back()
        if sha is None:
            item = self._item(entry, hash_entry(entry, self.stop))
        else:
            item = self._item(entry, sha)
            item.sent = upload
        item.queued = True
        return item

    @staticmethod
    def _sent_while_hashed(entry: FileEntry, upload: UnhashedUpload) -> str | None:
        """The content's hash once *upload* has every byte; None if it could not start or
        was refused (what was sent is freed)."""
        try:
            sha = upload.send()
            check_unchanged(entry)
        except (AuthError, Cancelled):
            upload.close()
            raise
        except ApiError as exc:
            if exc.status is None and upload.url is not None:
                upload.close()
                # Given up after the retries (the link or the server down), part of the
                # file on the server: kept (its URL stays in the cache under the file's
                # identity) for the next run to continue, not freed and sent again from
                # the start, which on a large file over a slow link costs hours.
                raise _SendingInterrupted(exc.detail) from exc
            upload.abandon()
            return None
        except (FileChangedError, OSError):
            upload.abandon()  # the bytes sent are not the file's: reported by the caller
            raise
        return sha

    def _abandon(self, item: _Item) -> None:
        """Free bytes sent ahead that the server turned out not to need."""
        if item.sent is not None:
            item.sent.abandon()
            item.sent = None

    def _keeps(self, entry: FileEntry) -> bool:
        """Read *entry* whole and keep its bytes for a bundle? (Budget taken if so.)"""
        size = entry.stat.st_size
        return (
            not self.options.dry_run
            and not self._no_bundles
            and not entry.is_symlink
            and size <= self.options.bundle_threshold
            and self._keep.take(size)
        )

    def _drop_data(self, items: Iterable[_Item]) -> None:
        """Free the kept bytes of *items*: one turn of the budget's lock for them all."""
        freed = 0
        for item in items:
            if item.data is not None:
                freed += len(item.data)
                item.data = None
        if freed:
            self._keep.give(freed)

    # -- registering -------------------------------------------------------------------
    def _pass_on(self, hashing: _Hashing, registrars: ThreadPoolExecutor) -> None:
        """Wait for the oldest batch's hashes, then send it to registration."""
        items = self._collect(hashing)
        self.cache.commit()
        if self.options.dry_run or not items:
            return
        job = (items, self._scan_of(hashing.root))
        self._returning_kept(partial(self._register_later, registrars), self._register_batch, job)

    def _returning_kept(
        self,
        submit: Callable[[Callable[[Any], None], Any], None],
        task: Callable[[Any], None],
        job: Any,
    ) -> None:
        """*submit* *task(job)*, a task that gives its kept bytes back (or hands them on
        to a bundle) without waiting for hashing: hashers with no room wait for it."""
        self._keep.returning(1)

        def counted(argument: Any) -> None:
            try:
                task(argument)
            finally:
                self._keep.returning(-1)

        try:
            submit(counted, job)
        except BaseException:
            self._keep.returning(-1)
            raise

    def _register_later(
        self, registrars: ThreadPoolExecutor, task: Callable[[Any], None], job: object
    ) -> None:
        """Run *task(job)* in the registration pool, waiting while it is full."""
        self._registering.enter()
        try:
            registrars.submit(self._guarded, task, job, self._registering)
        except BaseException:
            self._registering.leave()
            raise

    def _register_batch(self, job: tuple[list[_Item], str | None]) -> None:
        items, scan = job
        handed_on: set[int] = set()
        try:
            self._register(items, handed_on, scan)
        finally:
            kept = [item for item in items if id(item) not in handed_on]
            self._drop_data(kept)
            for item in kept:
                self._abandon(item)

    def _register(self, items: list[_Item], handed_on: set[int], scan: str | None) -> None:
        """Register *items* (seen by *scan*); queue the content the server lacks (ids
        into *handed_on*)."""
        assert self.api is not None
        server, host = self.api.cache_key, self.options.hostname
        if self._records_cached and not self.options.resend:
            known = self.cache.sent_fingerprints(
                server, host, (i.record["filepath"] for i in items)
            )
            fresh = [i for i in items if known.get(i.record["filepath"]) != i.fingerprint]
            if not self._still_recorded(items, fresh, scan):
                fresh = items  # the server lost some: send them all again
            self.summary.add(unchanged=len(items) - len(fresh))
            items = fresh
        if not items:
            return
        answers = self._send([i.record for i in items], scan)
        accepted = [(i, a) for i, a in zip(items, answers, strict=True) if a is not None]
        present = [i for i, a in accepted if not a["upload_required"]]
        self.summary.add(metadata_sent=len(accepted), already_on_server=len(present))
        self._mark_sent(present)
        needed = [item for item, answer in accepted if answer["upload_required"]]
        self._queue_uploads(needed, handed_on)

    def _still_recorded(self, items: list[_Item], fresh: list[_Item], scan: str | None) -> bool:
        """Name the unchanged files (not sent again) to the scan; False when the server
        no longer holds them all live (deleted meanwhile, or restored from a backup)."""
        if scan is None or len(fresh) == len(items):
            return True
        assert self.api is not None
        sending = {id(i) for i in fresh}
        unchanged = [i.record["filepath"] for i in items if id(i) not in sending]
        return self.api.scan_seen(scan, unchanged) == len(unchanged)

    def _send(
        self, records: list[dict[str, Any]], scan: str | None = None
    ) -> list[dict[str, Any] | None]:
        """Per record: the server's answer, or None after reporting why it was refused."""
        assert self.api is not None
        limit = self._records_per_request
        if limit is not None and len(records) > limit:
            parts = [list(part) for part in chunked(records, limit)]
            return [answer for part in parts for answer in self._send(part, scan)]
        if not self._single_mode:
            try:
                results = self.api.put_files(records, scan)
            except NotSupportedError:
                self._single_mode = True  # an older server: one record per request
            except AuthError:
                raise
            except ApiError as exc:
                if exc.status == 413 and len(records) > 1:  # a server with a lower limit
                    half = len(records) // 2
                    # Remembered, so later batches are not each refused once first.
                    with self._batch_lock:  # the smallest refused, of batches in flight
                        self._records_per_request = min(self._records_per_request or half, half)
                    return self._send(records[:half], scan) + self._send(records[half:], scan)
                for record in records:
                    self._error(record["filepath"], f"not registered: {exc.detail}")
                return [None] * len(records)
            else:
                answers: list[dict[str, Any] | None] = []
                for record, result in zip(records, results, strict=True):
                    if result["ok"]:
                        answers.append(result["file"])
                    else:
                        self._error(record["filepath"], f"refused: {result['errors']}")
                        answers.append(None)
                return answers
        single: list[dict[str, Any] | None] = []
        for record in records:
            try:
                single.append(self.api.put_file(record))
            except AuthError:
                raise
            except ApiError as exc:
                self._error(record["filepath"], f"not registered: {exc.detail}")
                single.append(None)
        return single

    # -- uploading ---------------------------------------------------------------------
    def _queue_uploads(self, items: list[_Item], handed_on: set[int]) -> None:
        """Send the content of *items* (in bundles or alone), each content once in this
        run; the ids of the items handed on (their kept bytes now belong to the upload)
        go into *handed_on* as each is, so a failure part-way frees only the others.

        A batch at a time: one turn of each lock and one report for the batch, not one
        per item (each file's share of the registering threads' work). A batch's
        bundles are sent before its files that go alone.
        """
        fresh: list[_Item] = []
        sent: list[_Item] = []
        waiting = 0
        with self._upload_lock:
            for item in items:
                if item.sha256 in self._uploading:  # same content seen twice in this run
                    self._uploading[item.sha256].append(item)
                    waiting += 1
                elif item.sha256 in self._sent:  # uploaded since the server answered
                    sent.append(item)
                else:
                    self._uploading[item.sha256] = []
                    fresh.append(item)
        if waiting or sent:
            self.summary.add(already_on_server=waiting + len(sent))
        self._mark_sent(sent)
        if unreported := sum(item.size for item in fresh if not item.queued):
            self.reporter.upload_queued(unreported)
        bundled: list[_Item] = []
        alone: list[_Item] = []
        for item in fresh:
            (bundled if item.sent is None and self._bundles_it(item) else alone).append(item)
        self._drop_data(alone)  # streamed from disk
        self._add_to_bundles(bundled, handed_on)
        for item in alone:
            self._submit(self._upload_alone, item)
            handed_on.add(id(item))

    def _bundles_it(self, item: _Item) -> bool:
        return (
            not self._single_mode
            and not self._no_bundles
            and item.size <= self.options.bundle_threshold
        )

    def _submit(self, task: Callable[[Any], None], argument: Any) -> None:
        """Run *task(argument)* in the upload pool, waiting while the pool is full."""
        assert self._uploaders is not None
        self._uploading_now.enter()
        try:
            self._uploaders.submit(self._guarded, task, argument, self._uploading_now)
        except BaseException:
            self._uploading_now.leave()
            raise

    def _add_to_bundles(self, items: list[_Item], handed_on: set[int]) -> None:
        """Put *items* into bundles (handed on: their bundle sends or frees their bytes);
        send each bundle that is full."""
        ready: list[list[_Item]] = []
        with self._bundle_lock:
            for item in items:
                if self._bundle and self._bundle_size + item.size > self._bundle_bytes:
                    ready.append(self._bundle)
                    self._bundle, self._bundle_size = [], 0
                self._bundle.append(item)
                self._bundle_size += item.size
                if (
                    len(self._bundle) >= self._bundle_files
                    or self._bundle_size >= self._bundle_bytes
                ):
                    ready.append(self._bundle)
                    self._bundle, self._bundle_size = [], 0
        handed_on.update(id(item) for item in items)
        for bundle in ready:
            self._submit_bundle(bundle)

    def _send_bundle_now(self) -> None:
        with self._bundle_lock:
            items, self._bundle, self._bundle_size = self._bundle, [], 0
        if items:
            self._submit_bundle(items)

    def _submit_bundle(self, items: list[_Item]) -> None:
        self._returning_kept(self._submit, self._send_bundle, items)

    def _send_bundle(self, items: list[_Item]) -> None:
        """Upload worker: one bundle; each member's outcome is recorded on its own."""
        try:
            members: list[tuple[_Item, bytes]] = []
            for item in items:
                data = self._bytes_of(item)
                if data is not None:
                    members.append((item, data))
            if members:
                self._deliver(members)
        finally:
            self._drop_data(items)

    def _bytes_of(self, item: _Item) -> bytes | None:
        """The content of a small item: kept from hashing, or read now (None: reported)."""
        if item.data is not None:
            return item.data
        check(self.stop)  # a read from disk: a run being stopped does not wait for it
        entry = item.entry
        try:
            return link_bytes(entry) if entry.is_symlink else read_whole(entry)
        except FileChangedError as exc:
            self._upload_failed(item, str(exc))
        except OSError as exc:
            self._upload_failed(item, exc.strerror or str(exc))
        return None

    def _deliver(self, members: list[tuple[_Item, bytes]]) -> None:
        assert self.api is not None
        if self._no_bundles or self._single_mode:
            for item, data in members:
                self._upload_alone(item, data)
            return
        try:
            results = self.api.put_bundle(
                [(item.sha256, data) for item, data in members], self.reporter.upload_progress
            )
        except NotSupportedError:
            self._no_bundles = True  # an older server: PUT /blobs from now on
            self._deliver(members)
            return
        except (AuthError, Cancelled):
            raise
        except ApiError as exc:
            if exc.status in (400, 413) and len(members) > 1:
                self._shrink_bundles(len(members), sum(len(data) for _, data in members))
                half = len(members) // 2
                self._deliver(members[:half])
                self._deliver(members[half:])
            elif exc.status in (400, 413):
                item, data = members[0]
                self._upload_alone(item, data)
            else:
                for item, _ in members:
                    self._upload_failed(item, exc.detail)
            return
        uploaded: list[_Item] = []
        for (item, _), result in zip(members, results, strict=True):
            if result["status"] == "stored":
                uploaded.append(item)
            elif result["status"] == "present":
                self._uploaded([item], already=True)
            else:
                self._upload_failed(item, f"refused: {result.get('detail')}")
        self._uploaded(uploaded)

    def _shrink_bundles(self, files: int, size: int) -> None:
        """The server refused a bundle this big (its limits are lower): stay under it."""
        with self._bundle_lock:
            self._bundle_files = max(1, min(self._bundle_files, files // 2))
            self._bundle_bytes = max(1, min(self._bundle_bytes, size // 2))

    def _upload_alone(self, item: _Item, data: bytes | None = None) -> None:
        """Upload worker: one content in its own request, streamed from disk unless
        *data* is given."""
        assert self.api is not None
        record, entry = item.record, item.entry
        try:
            opener: Opener
            if data is not None:
                opener = lambda: io.BytesIO(data)  # noqa: E731
            elif entry.is_symlink:
                target = link_bytes(entry)
                opener = lambda: io.BytesIO(target)  # noqa: E731
            else:
                opener = lambda: open_scanned(entry)  # noqa: E731
            if item.sent is not None:
                self._join_sent(item, opener)
            elif data is None and not entry.is_symlink and self._speaks_tus(item.size):
                ResumableUpload(
                    self.api, self.cache, item.sha256, item.size, opener,
                    parts=self.options.tus_parts, progress=self.reporter.upload_progress,
                    stop=self.stop, checksum=self._tus or "sha256",
                ).run()  # fmt: skip
            elif self._single_mode:
                self.api.upload_file(
                    item.sha256, opener, hostname=record["hostname"],
                    filepath=record["filepath"], progress=self.reporter.upload_progress,
                )  # fmt: skip
            else:
                self.api.put_blob(item.sha256, opener, self.reporter.upload_progress)
        except (AuthError, Cancelled):
            raise
        except ApiError as exc:
            self._upload_failed(item, exc.detail)
        except FileChangedError as exc:
            self._upload_failed(item, str(exc))
        except OSError as exc:
            self._upload_failed(item, exc.strerror or str(exc))
        else:
            self._uploaded([item])

    def _join_sent(self, item: _Item, opener: Opener) -> None:
        """Make the bytes sent while hashing *item* its content on the server; sent
        again if the server lost them meanwhile (expired), or refused them (damaged on
        the way: they went without checksums, and now go with one per request)."""
        assert self.api is not None
        assert item.sent is not None
        sent, item.sent = item.sent, None
        try:
            sent.finish()
            return
        except UploadGoneError:
            pass
        except ContentRefusedError as exc:
            self.reporter.warn(item.entry.path, f"the server refused the bytes sent ({exc.detail}):"
                               " sending them again, with a checksum per request")  # fmt: skip
        self.reporter.upload_queued(item.size)
        ResumableUpload(
            self.api, self.cache, item.sha256, item.size, opener,
            progress=self.reporter.upload_progress, stop=self.stop,
            checksum=self._tus or "sha256",
        ).run()  # fmt: skip

    def _speaks_tus(self, size: int) -> bool:
        """Contents of *size* go over tus: large enough, and the server speaks it (asked
        once)."""
        if self._single_mode or not 0 < self.options.tus_threshold <= size:
            return False
        with self._tus_lock:
            if self._tus is None:
                assert self.api is not None
                self._tus = tus_checksum(self.api) or ""
            return bool(self._tus)

    def _uploaded(self, items: list[_Item], *, already: bool = False) -> None:
        """The server holds the content of *items*: they and every file sharing it are
        sent. *already*: the server had it before this upload (bytes were not needed)."""
        assert self.api is not None
        if already:
            self.summary.add(already_on_server=len(items))
        else:
            self.summary.add(content_uploaded=len(items), bytes_uploaded=sum(i.size for i in items))
        done: list[_Item] = []
        with self._upload_lock:
            for item in items:
                done += [item, *self._uploading.pop(item.sha256, [])]
                self._sent[item.sha256] = None
            while len(self._sent) > RECENTLY_SENT:
                self._sent.popitem(last=False)
        self._mark_sent(done)

    def _mark_sent(self, items: list[_Item]) -> None:
        """Remember in the cache that *items* are registered with their content present."""
        if not items:
            return
        assert self.api is not None
        self.cache.mark_all_sent(
            self.api.cache_key,
            self.options.hostname,
            ((item.record["filepath"], item.fingerprint) for item in items),
        )

    def _upload_failed(self, item: _Item, detail: str) -> None:
        self._error(item.entry.path, f"upload failed: {detail}")
        with self._upload_lock:
            waiting = self._uploading.pop(item.sha256, [])
        for other in waiting:  # files with the same content: not on the server either
            self._unconfirm(other.entry.path)
