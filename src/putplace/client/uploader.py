"""HTTP calls to a PutPlace server, with retries for transient failures only.

:class:`ApiClient` wraps one ``httpx.Client`` (one connection pool, shared by worker
threads). Connection errors, timeouts, 5xx and 429 are retried up to ``retries`` times
with exponential backoff and jitter, honouring ``Retry-After`` (seconds or an HTTP date).
Any other 4xx is final and raises :class:`ApiError` carrying the server's ``detail``;
401 and 403 raise :class:`AuthError` so that a run with a bad key stops at once.

Content is always streamed from disk: ``upload_file`` sends the wire protocol's
multipart ``POST /upload_file/{sha256}`` (httpx reads file objects in 64 KiB pieces),
``put_blob`` a raw ``PUT /blobs/{sha256}`` body in ``CHUNK_SIZE`` pieces. A source is
re-opened for each attempt and closed after it. ``put_bundle`` sends many small contents,
already in memory, as one ``POST /bundles`` (docs/bundle-protocol.md); a retried bundle is
safe, as members stored by an earlier attempt come back ``present``.
"""

from __future__ import annotations

import email.utils
import io
import random
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from typing import IO, Any, Self

import httpx
import orjson

from putplace.client.cancel import check
from putplace.digest import CHUNK_SIZE

Opener = Callable[[], IO[bytes]]
"""Opens the content to upload, afresh for each attempt."""
Progress = Callable[[int], None]
"""Called with the number of bytes just handed to the connection."""

MAX_BACKOFF = 30.0
MAX_RETRY_AFTER = 300.0

BUNDLE_MAGIC = b"PPBNDL01"
BUNDLE_CONTENT_TYPE = "application/vnd.putplace.bundle"
JSON_HEADERS = {"Content-Type": "application/json"}
BRIEF = {"brief": "true"}
_BUNDLE_COUNT = struct.Struct(">I")
_BUNDLE_ENTRY = struct.Struct(">32sQ")
_BUNDLE_PIECE = 256 * 1024
"""Members are handed to the connection in pieces of about this size (fewer syscalls
than one write per small member)."""

#: Endpoints an older server lacks; 404 or 405 there means "not supported", not an error.
OPTIONAL_ENDPOINTS = frozenset({"/put_files", "/bundles", "/scans"})


class ApiError(Exception):
    """The server refused a request (or kept failing); ``detail`` is its explanation."""

    def __init__(self, status: int | None, detail: str) -> None:
        super().__init__(f"{status or 'no answer'}: {detail}")
        self.status = status
        self.detail = detail


class AuthError(ApiError):
    """401 or 403: the key is missing, wrong, revoked or lacks the scope."""


class NotSupportedError(ApiError):
    """The server does not have this endpoint (an older PutPlace)."""


def base_url(url: str) -> str:
    """Accept ``http://host:8000``, ``.../`` and ``.../put_file`` alike."""
    return url.rstrip("/").removesuffix("/put_file").rstrip("/")


def is_transient(status: int) -> bool:
    return status == 429 or status >= 500


def error_detail(response: httpx.Response) -> str:
    """The ``detail`` of a FastAPI-style error body, else the body text."""
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        detail = response.text
    return detail if isinstance(detail, str) else str(detail)


def retry_after(response: httpx.Response | None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or HTTP-date), capped; None if absent."""
    value = "" if response is None else response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def backoff(attempt: int) -> float:
    """Exponential backoff with jitter: about 0.5 s, 1 s, 2 s, ... up to 30 s."""
    return min(MAX_BACKOFF, 0.5 * 2.0**attempt) * random.uniform(0.8, 1.2)


class _ProgressReader(io.RawIOBase):
    """A readable stream over *source* that reports bytes read and stops when told."""

    def __init__(self, source: IO[bytes], progress: Progress, stop: threading.Event | None):
        super().__init__()
        self._source = source
        self._progress = progress
        self._stop = stop

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        check(self._stop)
        data = self._source.read(size if size >= 0 else CHUNK_SIZE)
        if data:
            self._progress(len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def fileno(self) -> int:
        return self._source.fileno()  # lets httpx learn the length without reading

    def seekable(self) -> bool:
        return self._source.seekable()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._source.seek(offset, whence)

    def tell(self) -> int:
        return self._source.tell()


def _chunks(reader: _ProgressReader) -> Iterator[bytes]:
    while chunk := reader.read(CHUNK_SIZE):
        yield chunk


def bundle_header(members: Sequence[tuple[str, bytes]]) -> bytes:
    """Magic, member count, then per member its raw SHA-256 and length (big-endian)."""
    entries = (_BUNDLE_ENTRY.pack(bytes.fromhex(sha), len(data)) for sha, data in members)
    return BUNDLE_MAGIC + _BUNDLE_COUNT.pack(len(members)) + b"".join(entries)


def _bundle_body(
    header: bytes,
    members: Sequence[tuple[str, bytes]],
    progress: Progress,
    stop: threading.Event | None,
) -> Iterator[bytes]:
    yield header
    pending: list[bytes] = []
    size = 0
    for _, data in members:
        pending.append(data)
        size += len(data)
        if size >= _BUNDLE_PIECE:
            check(stop)  # a piece at a time: a member at a time cost a call per file
            yield b"".join(pending)
            progress(size)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)
        progress(size)


DEFAULT_TIMEOUT = 60.0
"""Seconds per request (connect, each read and write)."""
DEFAULT_RETRIES = 5
"""Retries of a transient failure before it counts as an error."""


class UnboundClient(httpx.Client):
    """An ``httpx.Client`` whose answers, once read, hold no reference cycle.

    httpx binds a response's stream to the response (a cycle), so a response, its
    request and the request's body (a batch's JSON, a bundle's members) were freed only
    when the cyclic garbage collector ran, not when the caller let go of them: in a
    first ingest, every one of the client's cyclic garbage objects. A read answer's
    spent stream is swapped for its bytes, so they go at once, and the collector may run
    rarely (:mod:`putplace.gctune`). Streamed answers (``stream=True``) are left as
    they are: their stream is still to be read."""

    def send(
        self, request: httpx.Request, *, stream: bool = False, **kwargs: Any
    ) -> httpx.Response:
        response = super().send(request, stream=stream, **kwargs)
        if not stream:
            response.stream = httpx.ByteStream(response.content)
        return response


class Session:
    """One ``httpx.Client`` for one server, with the key, timeouts and pool every
    ``ppclient`` command uses; safe to share between threads. Retry waits end early when
    *stop* is set."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        verify: bool | ssl.SSLContext = True,
        pool_size: int = 16,
        stop: threading.Event | None = None,
        sleep: Callable[[float], None] | None = None,
        namespace: str | None = None,
    ) -> None:
        self.url = base_url(url)
        #: What the local cache knows the server by: each namespace is its own inventory.
        self.cache_key = self.url if namespace is None else f"{self.url}?namespace={namespace}"
        self.retries = retries
        self._stop = stop
        self._sleep = sleep or self._wait
        self._options: dict[str, Any] = {
            "base_url": self.url,
            "headers": {"X-API-Key": api_key, "User-Agent": "ppclient"},
            # Every request acts on (or reads) this namespace; endpoints without
            # namespaces ignore the parameter.
            "params": {} if namespace is None else {"namespace": namespace},
            "timeout": httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            "verify": verify,
        }
        self._http = UnboundClient(
            **self._options,
            limits=httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def http(self) -> httpx.Client:
        """The connection pool, for protocols that handle their own answers (tus)."""
        return self._http

    def own_connection(self) -> httpx.Client:
        """A client of one connection (the caller closes it), for requests that must
        reach one server process one after another: a tus upload's PATCHes and the
        request that completes it. A server worker keeps the running hash of the uploads
        it takes bytes for; another worker completing one reads the whole upload back
        (measured with two workers: a 512 MiB file sent among 20,000 small ones was read
        back in 3 of 6 runs, +1.4-1.9 CPU-s). Over the shared pool, each request leaves
        on whichever connection is free, to whichever worker."""
        return UnboundClient(**self._options, limits=httpx.Limits(max_connections=1))

    def wait_to_retry(self, seconds: float) -> None:
        """Wait before a retry (ends early when the run is stopped)."""
        self._sleep(seconds)

    def _wait(self, seconds: float) -> None:
        if self._stop is None:
            time.sleep(seconds)
        else:
            self._stop.wait(seconds)


def _results(response: httpx.Response, count: int, field: str) -> list[dict[str, Any]]:
    """The ``results`` of a batch's or a bundle's answer: *count* objects, each with
    *field*; else :class:`ApiError`. Parsed by orjson: they hold an entry per record or
    member, which the standard json module parses at half the speed (0.56 against 0.26
    ms for a bundle of 750)."""
    try:
        results = orjson.loads(response.content)["results"]
    except (orjson.JSONDecodeError, TypeError, KeyError) as exc:
        raise ApiError(response.status_code, f"not a batch answer: {exc}") from None
    if not (
        isinstance(results, list)
        and len(results) == count
        and all(isinstance(result, dict) and field in result for result in results)
    ):
        raise ApiError(
            response.status_code,
            f"not a batch answer: expected {count} results, each with {field!r}",
        )
    return results


class ApiClient(Session):
    """The PutPlace API for uploads."""

    def _request(
        self, method: str, path: str, body: Callable[[ExitStack], dict[str, Any]]
    ) -> httpx.Response:
        """Send, retrying transient failures; *body* builds fresh kwargs for each attempt
        (opening files on the given ExitStack, closed once the attempt is over)."""
        for attempt in range(self.retries + 1):
            check(self._stop)
            response: httpx.Response | None = None
            with ExitStack() as resources:
                try:
                    response = self._http.request(method, path, **body(resources))
                except httpx.TransportError as exc:
                    failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if response is not None:
                status = response.status_code
                if status < 400:
                    return response
                if status in (401, 403):
                    raise AuthError(status, error_detail(response))
                if status in (404, 405) and path in OPTIONAL_ENDPOINTS:
                    raise NotSupportedError(status, error_detail(response))
                if not is_transient(status):
                    raise ApiError(status, error_detail(response))
                failure = f"HTTP {status}: {error_detail(response)}"
            if attempt == self.retries:
                status_or_none = None if response is None else response.status_code
                raise ApiError(status_or_none, f"{failure} (gave up after {attempt + 1} tries)")
            delay = retry_after(response)
            self._sleep(backoff(attempt) if delay is None else delay)
        raise AssertionError("unreachable")

    def put_file(self, record: dict[str, Any]) -> dict[str, Any]:
        """``POST /put_file``: register one file; the answer has ``upload_required``."""
        answer: dict[str, Any] = self._request(
            "POST", "/put_file", lambda _: {"json": record}
        ).json()
        return answer

    def put_files(
        self, records: list[dict[str, Any]], scan: str | None = None
    ) -> list[dict[str, Any]]:
        """``POST /put_files``: one result per record (``ok`` + ``file`` or ``errors``),
        seen by *scan* when given.

        Raises :class:`NotSupportedError` on a server without the endpoint.
        """
        params = BRIEF if scan is None else {**BRIEF, "scan": scan}
        # orjson: the request and answer of a batch hold thousands of records, which the
        # standard json module took 15% of a first ingest's client CPU to convert.
        body = orjson.dumps({"files": records})
        # brief: each answer holds just _id and upload_required (an older server ignores
        # the parameter and answers whole records, which hold those too).
        response = self._request(
            "POST",
            "/put_files",
            lambda _: {"content": body, "headers": JSON_HEADERS, "params": params},
        )
        return _results(response, len(records), "ok")

    def holds_size(self, size: int) -> bool | None:
        """Whether the server has any file record (live or deleted) of exactly *size*
        bytes this key can see; None when it cannot say (a key without read access, an
        older server). No such record: the server cannot hold the content of a file of
        that size for this key, so its bytes are needed before its hash is."""
        params = {"min_size": size, "max_size": size, "state": "all", "sort": "size",
                  "limit": 1}  # fmt: skip
        try:
            response = self._request("GET", "/files", lambda _: {"params": params})
            return bool(response.json())
        except (ApiError, ValueError):
            return None

    def open_scan(self, hostname: str, root: str, excludes: list[str]) -> str | None:
        """``POST /scans``: the new scan's id; None from a server without scans."""
        body = {"hostname": hostname, "root": root, "excludes": excludes}
        try:
            answer = self._request("POST", "/scans", lambda _: {"json": body}).json()
        except NotSupportedError:
            return None
        return str(answer["scan_id"])

    def scan_seen(self, scan: str, filepaths: list[str]) -> int:
        """``POST /scans/{scan}/seen``: unchanged files, not sent again, still seen."""
        body = orjson.dumps({"filepaths": filepaths})  # thousands of paths: as put_files
        answer = self._request(
            "POST", f"/scans/{scan}/seen", lambda _: {"content": body, "headers": JSON_HEADERS}
        ).json()
        return int(answer["seen"])

    def finish_scan(self, scan: str, *, completed: bool) -> dict[str, Any]:
        """``POST /scans/{scan}/complete`` (the walk finished: the server marks what it
        did not see deleted) or ``/abandon`` (nothing is deleted)."""
        action = "complete" if completed else "abandon"
        answer: dict[str, Any] = self._request(
            "POST", f"/scans/{scan}/{action}", lambda _: {}
        ).json()
        return answer

    def upload_file(
        self,
        sha256: str,
        open_content: Opener,
        *,
        hostname: str,
        filepath: str,
        progress: Progress = lambda _: None,
    ) -> dict[str, Any]:
        """``POST /upload_file/{sha256}?hostname=&filepath=``, multipart field ``file``.

        *filepath* is the wire form of the path; its last component is the filename.
        """

        def body(resources: ExitStack) -> dict[str, Any]:
            source = resources.enter_context(open_content())
            reader = resources.enter_context(_ProgressReader(source, progress, self._stop))
            filename = filepath.rsplit("/", 1)[-1]
            return {
                "params": {"hostname": hostname, "filepath": filepath},
                "files": {"file": (filename, reader, "application/octet-stream")},
            }

        answer: dict[str, Any] = self._request("POST", f"/upload_file/{sha256}", body).json()
        return answer

    def put_blob(
        self, sha256: str, open_content: Opener, progress: Progress = lambda _: None
    ) -> None:
        """``PUT /blobs/{sha256}`` with the content as a raw, streamed body."""

        def body(resources: ExitStack) -> dict[str, Any]:
            source = resources.enter_context(open_content())
            reader = resources.enter_context(_ProgressReader(source, progress, self._stop))
            return {
                "content": _chunks(reader),
                "headers": {"Content-Type": "application/octet-stream"},
            }

        self._request("PUT", f"/blobs/{sha256}", body)

    def put_bundle(
        self, members: Sequence[tuple[str, bytes]], progress: Progress = lambda _: None
    ) -> list[dict[str, Any]]:
        """``POST /bundles``: many ``(sha256, content)`` in one request; ``results[i]``
        (``sha256``, ``status`` of ``stored``/``present``/``refused``, ``detail``) answers
        ``members[i]``.

        The body is streamed from the members with its length known up front. Raises
        :class:`NotSupportedError` on a server without the endpoint (404/405).
        """
        header = bundle_header(members)
        length = len(header) + sum(len(data) for _, data in members)

        def body(_: ExitStack) -> dict[str, Any]:
            return {
                "content": _bundle_body(header, members, progress, self._stop),
                "headers": {"Content-Type": BUNDLE_CONTENT_TYPE, "Content-Length": str(length)},
            }

        response = self._request("POST", "/bundles", body)
        results = _results(response, len(members), "status")
        answered = (result.get("sha256") for result in results)
        if any(sha != member for sha, (member, _) in zip(answered, members, strict=True)):
            raise ApiError(
                response.status_code,
                f"the bundle answer does not match its {len(members)} members",
            )
        return results
