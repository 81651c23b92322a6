"""One client run: scan -> hash (parallel) -> register in batches -> upload (concurrent).

Entries are taken from the walk a batch at a time. The batch's files are hashed by a
thread pool (unchanged files come from the cache without being read), then registered
with one ``POST /put_files``; content the server lacks is queued for upload and the next
batch is scanned and hashed while uploads are in flight. Memory is bounded by the batch
size and the number of uploads allowed in flight.
"""

from __future__ import annotations

import io
import itertools
import os
import socket
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from putplace.client.cache import ClientCache
from putplace.client.cancel import Cancelled
from putplace.client.hashing import FileChangedError, hash_entry, link_bytes, open_scanned
from putplace.client.names import wire_path
from putplace.client.progress import Reporter
from putplace.client.scanner import FileEntry, walk
from putplace.client.uploader import ApiClient, ApiError, AuthError, NotSupportedError, Opener


@dataclass(frozen=True)
class Options:
    paths: list[str]
    excludes: list[str]
    hostname: str
    ip_address: str
    batch_size: int = 500
    hash_workers: int = max(2, min(8, os.cpu_count() or 2))
    upload_workers: int = 4
    dry_run: bool = False
    rehash: bool = False
    resend: bool = False


@dataclass
class _Item:
    entry: FileEntry
    record: dict[str, Any]
    fingerprint: str


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


def fingerprint(record: dict[str, Any]) -> str:
    """What must be unchanged for a record not to be sent again (atime excluded)."""
    keys = ("sha256", "file_size", "file_mode", "file_uid", "file_gid", "file_mtime",
            "file_ctime", "link_target", "ip_address")  # fmt: skip
    return "|".join(str(record[k]) for k in keys)


def _batches(entries: Iterable[FileEntry], size: int) -> Iterator[list[FileEntry]]:
    iterator = iter(entries)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _reap(uploads: list[Future[None]]) -> list[Future[None]]:
    """Drop finished uploads, re-raising any that failed in a way that ends the run."""
    pending = []
    for future in uploads:
        if future.done():
            future.result()
        else:
            pending.append(future)
    return pending


class Run:
    """One run over ``options.paths``. ``api`` is None for a dry run.

    *stop* is set when the run ends abnormally (Ctrl-C, a refused key): workers then
    abandon their file at the next chunk, so the run ends promptly. Pass the event the
    :class:`ApiClient` was given so that retry waits end too.
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
        # content being uploaded in this run -> other records with the same content
        self._uploading: dict[str, list[_Item]] = {}
        self._upload_lock = threading.Lock()
        self._in_flight = threading.BoundedSemaphore(options.upload_workers * 4)
        self._single_mode = False

    def execute(self) -> None:
        options = self.options
        entries = walk(
            options.paths,
            options.excludes,
            on_error=self.reporter.error,
            on_skip=self.reporter.skip,
        )
        with (
            ThreadPoolExecutor(options.hash_workers, thread_name_prefix="hash") as hashers,
            ThreadPoolExecutor(options.upload_workers, thread_name_prefix="upload") as uploaders,
        ):
            uploads: list[Future[None]] = []
            try:
                for batch in _batches(entries, options.batch_size):
                    items = self._hash_batch(batch, hashers)
                    if not options.dry_run:
                        uploads = _reap(uploads) + self._register(items, uploaders)
                    self.cache.commit()
                for future in uploads:
                    future.result()
            except BaseException:
                self.stop.set()
                hashers.shutdown(wait=False, cancel_futures=True)
                uploaders.shutdown(wait=False, cancel_futures=True)
                raise
        self.cache.commit()

    # -- hashing ---------------------------------------------------------------------
    def _hash_one(self, entry: FileEntry) -> _Item | None:
        try:
            sha = hash_entry(entry, self.stop)
            if not entry.is_symlink:
                self.cache.store_hash(entry.stat, sha)
            record = record_for(entry, sha, self.options.hostname, self.options.ip_address)
        except Cancelled:
            return None
        except FileChangedError as exc:
            self.reporter.error(entry.path, str(exc))
            return None
        except OSError as exc:
            self.reporter.error(entry.path, exc.strerror or str(exc))
            return None
        finally:
            self.summary.add(files_seen=1)
            self.reporter.file_done()
        return _Item(entry, record, fingerprint(record))

    def _hash_batch(self, batch: list[FileEntry], hashers: ThreadPoolExecutor) -> list[_Item]:
        """Items for *batch* in order: cache hits at once, the rest hashed in parallel."""
        cached: list[str | None] = [None] * len(batch)
        if not self.options.rehash:
            cached = self.cache.lookup_hashes([entry.stat for entry in batch])
        misses = [e for e, sha in zip(batch, cached, strict=True) if sha is None or e.is_symlink]
        hashed = iter(hashers.map(self._hash_one, misses))
        items: list[_Item] = []
        for entry, sha in zip(batch, cached, strict=True):
            if sha is None or entry.is_symlink:
                item = next(hashed)
            else:
                record = record_for(entry, sha, self.options.hostname, self.options.ip_address)
                item = _Item(entry, record, fingerprint(record))
                self.reporter.file_done()
            if item is not None:
                items.append(item)
        self.summary.add(files_seen=len(batch) - len(misses))
        return items

    # -- registering -----------------------------------------------------------------
    def _register(self, items: list[_Item], uploaders: ThreadPoolExecutor) -> list[Future[None]]:
        assert self.api is not None
        server, host = self.api.url, self.options.hostname
        if not self.options.resend:
            known = self.cache.sent_fingerprints(
                server, host, (i.record["filepath"] for i in items)
            )
            fresh = [i for i in items if known.get(i.record["filepath"]) != i.fingerprint]
            self.summary.add(unchanged=len(items) - len(fresh))
            items = fresh
        if not items:
            return []
        answers = self._send([i.record for i in items])
        futures = []
        for item, answer in zip(items, answers, strict=True):
            if answer is None:
                continue
            self.summary.add(metadata_sent=1)
            if not answer["upload_required"]:
                self.summary.add(already_on_server=1)
                self.cache.mark_sent(server, host, item.record["filepath"], item.fingerprint)
                continue
            future = self._queue_upload(item, uploaders)
            if future is not None:
                futures.append(future)
        return futures

    def _send(self, records: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        """Per record: the server's answer, or None after reporting why it was refused."""
        assert self.api is not None
        if not self._single_mode:
            try:
                results = self.api.put_files(records)
            except NotSupportedError:
                self._single_mode = True  # an older server: one record per request
            except AuthError:
                raise
            except ApiError as exc:
                for record in records:
                    self.reporter.error(record["filepath"], f"not registered: {exc.detail}")
                return [None] * len(records)
            else:
                answers: list[dict[str, Any] | None] = []
                for record, result in zip(records, results, strict=True):
                    if result["ok"]:
                        answers.append(result["file"])
                    else:
                        self.reporter.error(record["filepath"], f"refused: {result['errors']}")
                        answers.append(None)
                return answers
        single: list[dict[str, Any] | None] = []
        for record in records:
            try:
                single.append(self.api.put_file(record))
            except AuthError:
                raise
            except ApiError as exc:
                self.reporter.error(record["filepath"], f"not registered: {exc.detail}")
                single.append(None)
        return single

    # -- uploading -------------------------------------------------------------------
    def _queue_upload(self, item: _Item, uploaders: ThreadPoolExecutor) -> Future[None] | None:
        sha = item.record["sha256"]
        with self._upload_lock:
            if sha in self._uploading:  # same content seen twice in this run
                self._uploading[sha].append(item)
                self.summary.add(already_on_server=1)
                return None
            self._uploading[sha] = []
        self._in_flight.acquire()  # bounded: the scan waits for slow uploads
        self.reporter.upload_queued(item.record["file_size"])
        try:
            return uploaders.submit(self._upload, item)
        except BaseException:
            self._in_flight.release()
            raise

    def _upload(self, item: _Item) -> None:
        assert self.api is not None
        record, entry = item.record, item.entry
        sha, size = record["sha256"], record["file_size"]
        try:
            if entry.is_symlink:
                target = link_bytes(entry)
                opener: Opener = lambda: io.BytesIO(target)  # noqa: E731
            else:
                opener = lambda: open_scanned(entry)  # noqa: E731
            if self._single_mode:
                self.api.upload_file(
                    sha, opener, hostname=record["hostname"], filepath=record["filepath"],
                    progress=self.reporter.upload_progress,
                )  # fmt: skip
            else:
                self.api.put_blob(sha, opener, self.reporter.upload_progress)
        except (AuthError, Cancelled):
            raise
        except ApiError as exc:
            self.reporter.error(entry.path, f"upload failed: {exc.detail}")
        except FileChangedError as exc:
            self.reporter.error(entry.path, f"upload failed: {exc}")
        except OSError as exc:
            self.reporter.error(entry.path, f"upload failed: {exc.strerror or exc}")
        else:
            self.summary.add(content_uploaded=1, bytes_uploaded=size)
            with self._upload_lock:
                same_content = [item, *self._uploading.pop(sha, [])]
            for done in same_content:
                self.cache.mark_sent(
                    self.api.url, self.options.hostname, done.record["filepath"], done.fingerprint
                )
        finally:
            with self._upload_lock:
                self._uploading.pop(sha, None)
            self._in_flight.release()
