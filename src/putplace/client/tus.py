"""Resumable uploads of large files over tus 1.0 (the server's ``/tus/``).

A file is sent as one upload, or as ``parts`` partial uploads in parallel joined by a
final one. Each upload goes in PATCH requests of :func:`chunk_for` bytes, each with an
``Upload-Checksum``, so the server acknowledges only bytes that arrived intact (a file
sent before its hash is known goes without them: :class:`UnhashedUpload`). When a
request fails (the connection drops, the server restarts), the client waits, asks the
server how far the upload got (``HEAD``) and continues from there: at most one chunk is
sent twice. The upload URLs are kept in the local cache as soon as they exist, so the
next run continues an upload this one could not finish.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any, Final
from urllib.parse import urljoin

import httpx

from putplace.client.cache import ClientCache
from putplace.client.cancel import Cancelled, check
from putplace.client.hashing import FileChangedError
from putplace.client.uploader import (
    ApiClient,
    ApiError,
    AuthError,
    Progress,
    backoff,
    error_detail,
    is_transient,
    retry_after,
)
from putplace.digest import CHECKSUM_ALGORITHMS, new_checksum

MiB: Final = 1024 * 1024
CHUNK: Final = 32 * MiB
"""Bytes per PATCH, at least: the most a dropped connection or a server restart costs."""
MAX_CHUNK: Final = 128 * MiB
"""Bytes per PATCH, at most: an upload goes in about 16 PATCHes between the two. Each
PATCH ends with an fsync and a commit on the server while nothing is sent; a 2 GiB
upload in 32 MiB PATCHes spent 1.7 s of its ~8 s waiting for their answers (py-spy)."""
MAX_UNCHECKED_CHUNK: Final = 512 * MiB
"""Bytes per PATCH, at most, of an upload sent without checksums (about 4 PATCHes): the
server keeps what arrived of such a request when it is cut, so its size bounds only what
a server that dies mid-request costs. A 2 GiB file in 4 PATCHes rather than 16, 3
alternated pairs: 484-512 -> 538-563 MiB/s (in 1, no faster than in 4)."""
MIN_PART: Final = 64 * MiB
"""A file is split into parallel parts only this large or larger."""
FEED: Final = 1 * MiB
"""Pieces a chunk is handed to the connection in."""
TUS_HEADERS: Final = {"Tus-Resumable": "1.0.0"}
OFFSET_TYPE: Final = "application/offset+octet-stream"


def chunk_for(size: int, *, checked: bool = True) -> int:
    """Bytes per PATCH for an upload of *size* bytes, *checked* with an
    ``Upload-Checksum`` per request or not."""
    if checked:
        return min(MAX_CHUNK, max(CHUNK, size // 16))
    return min(MAX_UNCHECKED_CHUNK, max(CHUNK, size // 4))


#: Opens the file to send (afresh for each part and each attempt).
Opener = Callable[[], IO[bytes]]


class UploadGoneError(ApiError):
    """The server no longer knows the upload (expired, or discarded): start again."""


class ContentRefusedError(ApiError):
    """The server refused the bytes sent as the content they were joined as, and freed
    them: they do not hash to it (see :meth:`UnhashedUpload.finish`)."""


def tus_checksum(api: ApiClient) -> str | None:
    """The ``Upload-Checksum`` algorithm to use when the server speaks tus 1.0 (``OPTIONS
    /tus/``): the first of :data:`CHECKSUM_ALGORITHMS` it lists (``sha256`` for a server
    that lists none we know). None for older servers, without tus."""
    try:
        response = api.http.options("/tus/")
    except httpx.TransportError:
        return None
    if response.status_code != 204 or "1.0.0" not in response.headers.get("Tus-Version", ""):
        return None
    offered = {a.strip() for a in response.headers.get("Tus-Checksum-Algorithm", "").split(",")}
    return next((a for a in CHECKSUM_ALGORITHMS if a in offered), "sha256")


def split(size: int, parts: int, min_part: int = MIN_PART) -> list[tuple[int, int]]:
    """``(start, length)`` of up to *parts* ranges covering *size* bytes, none smaller
    than *min_part* (the last takes the remainder)."""
    count = max(1, min(parts, size // max(1, min_part)))
    step = size // count
    return [(i * step, step if i < count - 1 else size - i * step) for i in range(count)]


def _metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


class ResumableUpload:
    """One file's upload over tus, resumable across failures and runs."""

    def __init__(
        self,
        api: ApiClient,
        cache: ClientCache,
        sha256: str,
        size: int,
        opener: Opener,
        *,
        parts: int = 1,
        progress: Progress = lambda _: None,
        stop: threading.Event | None = None,
        chunk: int | None = None,
        min_part: int = MIN_PART,
        checksum: str | None = "sha256",
    ) -> None:
        self.api = api
        #: What the upload's requests go over: the shared pool, or (while one upload is
        #: sent as one stream) a connection of its own (see ApiClient.own_connection).
        self._http = api.http
        self.cache = cache
        self.sha256 = sha256
        self.size = size
        self.opener = opener
        self.ranges = split(size, parts, min_part)
        self.chunk = chunk_for(size, checked=checksum is not None) if chunk is None else chunk
        self.checksum = checksum
        """``Upload-Checksum`` algorithm (see :func:`tus_checksum`); None: none sent."""
        if checksum is not None:
            new_checksum(checksum)  # one we can compute
        self.progress = progress
        self.stop = stop
        #: Bytes handed to the connection, re-sent ones included.
        self.bytes_sent = 0
        self._lock = threading.Lock()
        #: SHA-256 of the file's first ``_whole_at`` bytes, when the hash is not known
        #: yet (:class:`UnhashedUpload`, which sends no checksums): fed, in order, by the
        #: pass that sends the bytes.
        self._whole: hashlib._Hash | None = None
        self._whole_at = 0

    def run(self) -> None:
        """Upload the file; the server then holds the content, verified."""
        try:
            self._attempt()
        except UploadGoneError:
            # Expired or discarded meanwhile, or joined by a final request whose answer
            # was lost. Once more as one upload: its creation answers "complete" at once
            # if the content arrived after all.
            self.cache.forget_upload(self.api.cache_key, self.sha256)
            self.ranges = [(0, self.size)]
            self._attempt()
        self.cache.forget_upload(self.api.cache_key, self.sha256)

    def _attempt(self) -> None:
        urls = self.cache.unfinished_upload(self.api.cache_key, self.sha256, self.size)
        if urls is None or len(urls) not in (1, len(self.ranges)):
            urls = self._create()
        ranges = self.ranges if len(urls) == len(self.ranges) else [(0, self.size)]
        if len(urls) == 1:  # its last PATCH completes it, in the worker that hashed it all
            with self._connection():
                self._send(urls[0], *ranges[0])
            return
        with ThreadPoolExecutor(len(urls), thread_name_prefix="tus-part") as pool:
            futures = [
                pool.submit(self._send, url, *r) for url, r in zip(urls, ranges, strict=True)
            ]
            for future in futures:
                future.result()
        self._join(urls)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[None]:
        """The upload's requests over a connection of their own, until the block ends."""
        with self.api.own_connection() as own:
            self._http = own
            try:
                yield
            finally:
                self._http = self.api.http

    def _join(self, urls: list[str]) -> None:
        """The final upload joining the complete parts at *urls*, in order, as the
        content ``sha256`` names. Raises :class:`UploadGoneError` if the server no
        longer has them."""
        headers = {
            **TUS_HEADERS,
            "Upload-Concat": "final;" + " ".join(urls),
            "Upload-Metadata": _metadata(sha256=self.sha256),
        }
        final = self._retrying(lambda: self._http.post("/tus/", headers=headers))
        if final.status_code in (404, 410):
            raise UploadGoneError(final.status_code, error_detail(final))
        if final.status_code != 201:
            raise ApiError(final.status_code, error_detail(final))

    def _create(self) -> list[str]:
        """New uploads for this file (one, or a partial per range), remembered at once."""
        if len(self.ranges) == 1:
            headers = {**TUS_HEADERS, "Upload-Length": str(self.size),
                       "Upload-Metadata": _metadata(sha256=self.sha256)}  # fmt: skip
            urls = [self._created(headers)]
        else:
            urls = [
                self._created(
                    {**TUS_HEADERS, "Upload-Length": str(length), "Upload-Concat": "partial"}
                )
                for _, length in self.ranges
            ]
        self.cache.remember_upload(self.api.cache_key, self.sha256, self.size, urls)
        return urls

    def _created(self, headers: dict[str, str]) -> str:
        response = self._retrying(lambda: self._http.post("/tus/", headers=headers))
        if response.status_code != 201 or "Location" not in response.headers:
            raise ApiError(response.status_code, error_detail(response))
        # Resolved against the URL posted to (RFC 3986), not joined onto the base URL's
        # path as the HTTP client would: a server under /prefix answers /prefix/tus/ID.
        return urljoin(f"{self.api.url}/tus/", response.headers["Location"])

    def _send(self, url: str, start: int, length: int) -> None:
        """Send bytes ``[start, start + length)`` of the file as the upload at *url*."""
        offset = self._offset(url)
        if offset:
            self.progress(offset)  # acknowledged before (an earlier attempt or run)
        failures = 0
        with self.opener() as source, self._checksums(start, length) as checksum_of:
            while offset < length:
                check(self.stop)
                self._catch_up(start + offset)
                size = min(self.chunk, length - offset)
                headers = {
                    **TUS_HEADERS,
                    "Upload-Offset": str(offset),
                    "Content-Type": OFFSET_TYPE,
                    "Content-Length": str(size),
                }
                if checksum_of is not None:
                    headers["Upload-Checksum"] = f"{self.checksum} {checksum_of(offset, size)}"
                try:
                    response = self._http.patch(
                        url, headers=headers, content=self._feed(source, start + offset, size)
                    )
                except httpx.TransportError as exc:
                    detail = str(exc) or type(exc).__name__
                    offset, failures = self._after_failure(url, offset, failures, None, detail)
                    continue
                if response.status_code == 204:
                    offset = int(response.headers["Upload-Offset"])
                    failures = 0
                else:
                    self._refused(response)
                    offset, failures = self._after_failure(
                        url, offset, failures, response, error_detail(response)
                    )

    def _after_failure(
        self, url: str, offset: int, failures: int, response: httpx.Response | None, detail: str
    ) -> tuple[int, int]:
        """The offset to go on from after a request at *offset* failed, and the failures
        in a row. A request that moved the upload on (without a checksum, the server
        keeps what arrived of it) is progress, not a failure: a link that drops every
        long request still gets the file through. The offset is the one the server
        takes bytes at again (:meth:`_ready`): until the server has seen the request
        end and kept its bytes, it answers with the offset before it."""
        ready = self._ready(url)
        if ready > offset:
            self.api.wait_to_retry(backoff(0))  # a pause all the same: the link is flaky
            return ready, 0
        return ready, self._failed(failures, response, detail)

    @contextlib.contextmanager
    def _checksums(self, start: int, length: int) -> Iterator[Callable[[int, int], str] | None]:
        """``Upload-Checksum``'s value for the chunk at an offset of the range at *start*
        (None when no checksum is sent). The next chunk's is computed (from a file handle
        of its own) while this one is sent: the connection never waits for the hashing."""
        if self.checksum is None:
            yield None
            return
        with (
            self.opener() as ahead,
            ThreadPoolExecutor(1, thread_name_prefix="tus-digest") as digester,
        ):
            digests: dict[int, Future[str]] = {}  # by offset

            def prefetch(position: int) -> None:
                if position < length and position not in digests:
                    size = min(self.chunk, length - position)
                    digests[position] = digester.submit(self._digest, ahead, start + position,
                                                        size)  # fmt: skip

            def checksum_of(offset: int, size: int) -> str:
                prefetch(offset)
                digest = digests.pop(offset).result()
                digests.clear()  # guesses for offsets never reached (after a failure)
                prefetch(offset + size)
                return digest

            yield checksum_of

    def _ready(self, url: str) -> int:
        """After a failure: the acknowledged offset, once the server would take bytes at
        it. An empty PATCH asks first, so that no chunk is sent only to be refused (423
        while a request of a server that died still holds the upload, 503 while the
        server restarts)."""
        failures = 0
        while True:
            offset = self._offset(url)
            headers = {**TUS_HEADERS, "Upload-Offset": str(offset), "Content-Type": OFFSET_TYPE}
            try:
                response = self._http.patch(url, headers=headers, content=b"")
            except httpx.TransportError as exc:
                failures = self._failed(failures, None, str(exc) or type(exc).__name__)
                continue
            if response.status_code == 204:
                return int(response.headers["Upload-Offset"])
            self._refused(response)
            failures = self._failed(failures, response, error_detail(response))

    @staticmethod
    def _refused(response: httpx.Response) -> None:
        """Raise unless *response* is a refusal worth trying again after a wait."""
        status = response.status_code
        if status in (404, 410):
            raise UploadGoneError(status, error_detail(response))
        if status in (401, 403):
            raise AuthError(status, error_detail(response))
        if status not in (409, 423, 460) and not is_transient(status):
            raise ApiError(status, error_detail(response))

    def _offset(self, url: str) -> int:
        response = self._retrying(lambda: self._http.head(url, headers=TUS_HEADERS))
        if response.status_code in (404, 410):
            raise UploadGoneError(response.status_code, "the server no longer has the upload")
        if response.status_code != 200:
            raise ApiError(response.status_code, error_detail(response))
        return int(response.headers["Upload-Offset"])

    def _retrying(self, send: Callable[[], httpx.Response]) -> httpx.Response:
        """*send*, again after transient failures (the server restarting, 5xx, 429, and
        423: a final request sent again while the first still joins the parts)."""
        failures = 0
        while True:
            check(self.stop)
            try:
                response = send()
            except httpx.TransportError as exc:
                failures = self._failed(failures, None, str(exc) or type(exc).__name__)
                continue
            if response.status_code in (401, 403):
                raise AuthError(response.status_code, error_detail(response))
            if not is_transient(response.status_code) and response.status_code != 423:
                return response
            failures = self._failed(failures, response, error_detail(response))

    def _failed(self, failures: int, response: httpx.Response | None, detail: str) -> int:
        """Wait before the next try; give up after the session's retries in a row."""
        if failures >= self.api.retries:
            raise ApiError(None, f"{detail} (gave up after {failures + 1} tries)")
        delay = retry_after(response)
        self.api.wait_to_retry(backoff(failures) if delay is None else delay)
        check(self.stop)
        return failures + 1

    def _catch_up(self, position: int) -> None:
        """Hash, for the whole content, the bytes before *position* that the server has
        but this pass did not read (sent by an earlier run, or another writer)."""
        if self._whole is not None and self._whole_at < position:
            with self.opener() as before:
                start = self._whole_at
                for piece in self._pieces(before, start, position - start):
                    self._hash_whole(piece, self._whole_at)

    def _pieces(self, source: IO[bytes], position: int, size: int) -> Iterator[bytes]:
        """``size`` bytes of *source* from *position*, in pieces of at most :data:`FEED`
        read one at a time (nothing more is held). Raises :class:`FileChangedError` if the
        file runs out first, and :class:`Cancelled` once the run stops."""
        source.seek(position)
        remaining = size
        while remaining:
            check(self.stop)
            piece = source.read(min(FEED, remaining))
            if not piece:
                raise FileChangedError("the file got shorter while it was read")
            remaining -= len(piece)
            yield piece

    def _hash_whole(self, piece: bytes, position: int) -> None:
        """Add to the whole content's hash what *piece*, read at *position*, holds beyond
        the bytes hashed so far: each byte once, in order, though a failed request's
        bytes are read again (from the offset the server kept, which may fall anywhere)."""
        end = position + len(piece)
        if self._whole is not None and position <= self._whole_at < end:
            self._whole.update(memoryview(piece)[self._whole_at - position :])
            self._whole_at = end

    def _digest(self, source: IO[bytes], position: int, size: int) -> str:
        """``Upload-Checksum``'s digest of ``size`` bytes at *position*: a first read of the
        chunk (the second, to send it, comes from the page cache). Nothing is held."""
        assert self.checksum is not None
        hasher = new_checksum(self.checksum)
        for piece in self._pieces(source, position, size):
            hasher.update(piece)
        return base64.b64encode(hasher.digest()).decode()

    def _feed(self, source: IO[bytes], position: int, size: int) -> Iterator[bytes]:
        """The chunk in pieces, read as the connection takes them and counted: what a cut
        request really cost, and a progress bar that moves during each chunk. Without
        checksums, this is the only read of each byte: the whole content's hash is taken
        from it. Raises :class:`FileChangedError` if the file runs out first."""
        for piece in self._pieces(source, position, size):
            if self.checksum is None:
                self._hash_whole(piece, position)
            position += len(piece)
            with self._lock:
                self.bytes_sent += len(piece)
            self.progress(len(piece))
            yield piece


class UnhashedUpload(ResumableUpload):
    """A large file sent before its hash is known, so that it is read once, not twice
    (hash, then send): one partial upload announced as the whole content (``whole``),
    hashed here as it is sent. Once the server has the file's record (which needs the
    hash), :meth:`finish` joins it, and the server makes those bytes the blob without
    reading them back; :meth:`abandon` frees it when the server turns out to hold the
    content already.

    Its requests carry no ``Upload-Checksum``: a checksum must be sent before the bytes
    it covers, so computing one would mean reading each chunk twice, and the server
    checks every byte anyway, against the SHA-256 the record names, before the content
    counts as stored. A 2 GiB file went 410-421 -> 462-512 MiB/s (3 alternated pairs;
    client CPU 2.60-2.67 -> 2.24-2.37 s, server 4.67-4.69 -> 3.83-4.12 s). What it costs: a
    request damaged in transit (which TCP's checksum, and TLS's integrity, let through
    only very rarely) is found at :meth:`finish`, which refuses the whole content
    rather than one request; the caller then sends the file again, with checksums.
    Without a checksum, the server also keeps what arrived of a request cut short.

    Until every byte is sent, the upload's URL is kept in the local cache under the
    file's identity (device, inode, size, mtime): a run stopped while sending is
    continued by the next one, which hashes the bytes sent before from disk."""

    def __init__(
        self, api: ApiClient, cache: ClientCache, identity: str, size: int, opener: Opener,
        **options: Any,
    ) -> None:  # fmt: skip
        super().__init__(api, cache, "", size, opener, parts=1, checksum=None, **options)
        self.identity = identity
        self.url: str | None = None
        self._own: httpx.Client | None = None

    def send(self) -> str:
        """Send every byte; the content's hex SHA-256. The bytes and the request joining
        them (:meth:`finish`) go over one connection of their own, so that the server
        worker that hashed them joins them; :meth:`finish` or :meth:`abandon` closes it."""
        self._own = self.api.own_connection()
        self._http = self._own
        urls = self.cache.unfinished_upload(self.api.cache_key, self.identity, self.size)
        try:
            self._send_to(urls[0] if urls and len(urls) == 1 else self._create_whole())
        except UploadGoneError:  # expired since an earlier run: once more, from the start
            self._send_to(self._create_whole())
        if self._whole is None or self._whole_at != self.size:  # never expected
            raise ApiError(None, "the content's hash was not computed over every byte sent")
        self.sha256 = self._whole.hexdigest()
        # From here on the rest (record, join) takes moments; a run stopped now leaves a
        # part that expires on the server, and the next run sends the file afresh.
        self.cache.forget_upload(self.api.cache_key, self.identity)
        return self.sha256

    def _send_to(self, url: str) -> None:
        self.url, self._whole, self._whole_at = url, hashlib.sha256(), 0
        self._send(url, 0, self.size)

    def _create_whole(self) -> str:
        headers = {**TUS_HEADERS, "Upload-Length": str(self.size), "Upload-Concat": "partial",
                   "Upload-Metadata": _metadata(whole="1")}  # fmt: skip
        url = self._created(headers)
        self.cache.remember_upload(self.api.cache_key, self.identity, self.size, [url])
        return url

    def finish(self) -> None:
        """Join the sent bytes as the content the file's record names (registered now).
        Raises :class:`UploadGoneError` if the server no longer has them, and
        :class:`ContentRefusedError` if it refused them for not hashing to it (they were
        damaged on the way: the hash was computed from the bytes as they were sent)."""
        assert self.url is not None
        try:
            self._join([self.url])
        except ApiError as exc:
            # A 400 may also name a request the server would never take; a refused
            # content is the one the server frees at once.
            if exc.status == 400 and self._offset_gone(self.url):
                raise ContentRefusedError(exc.status, exc.detail) from exc
            raise
        finally:
            self.close()

    def _offset_gone(self, url: str) -> bool:
        try:
            self._offset(url)
        except ApiError as exc:  # other than gone: cannot tell, the refusal stands
            return isinstance(exc, UploadGoneError)
        return False

    def abandon(self) -> None:
        """Free the sent bytes (tus termination): the server did not need them. Best
        effort: what is not freed expires on the server."""
        self.cache.forget_upload(self.api.cache_key, self.identity)
        try:
            if self.url is not None:
                url = self.url
                # Again while a request cut just now still holds the upload (423); not
                # once the run is stopping.
                with contextlib.suppress(httpx.HTTPError, ApiError, Cancelled):
                    self._retrying(lambda: self._http.delete(url, headers=TUS_HEADERS))
        finally:
            self.close()

    def close(self) -> None:
        """Close the upload's own connection; what follows goes over the pool."""
        self._http = self.api.http
        if self._own is not None:
            self._own.close()
            self._own = None


def file_identity(st: os.stat_result) -> str:
    """The key an :class:`UnhashedUpload` is remembered under: the same file, unchanged."""
    return f"file:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
