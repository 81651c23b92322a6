"""GET requests to a PutPlace server, with retries for transient failures only.

Like :class:`putplace.client.uploader.ApiClient` (whose error types and backoff rules
this shares), but for reading: JSON answers, pages followed through the
``X-Next-Cursor`` header, and downloads streamed from a byte offset.

A refused connection before the server has ever answered is not retried: the usual
cause is a wrong ``--url`` or a server that is not running, and a person at a terminal
should hear that at once, not after half a minute of backoff. Once the server has
answered, a refused connection (a restart, say) is retried like any transient failure.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import httpx
import orjson

from putplace.client.cancel import check
from putplace.client.uploader import (
    ApiError,
    AuthError,
    Session,
    backoff,
    error_detail,
    is_transient,
    retry_after,
)

Params = Sequence[tuple[str, str]]
"""Query parameters in order; a name may repeat (``hostname=a&hostname=b``)."""
MAX_PAGE = 1000
"""The most records ``GET /files`` answers at once."""
NEXT_CURSOR = "X-Next-Cursor"


class ConnectFailedError(ApiError):
    """The server could not be reached at all (refused, unknown host, TLS failure)."""


def _detail(response: httpx.Response) -> str:
    """The server's ``detail``; FastAPI's validation lists as ``where: what`` lines."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list) and all(isinstance(item, dict) for item in detail):
        parts = []
        for item in detail:
            where = ".".join(str(p) for p in item.get("loc", []) if p not in ("query", "path"))
            parts.append(f"{where}: {item.get('msg', '')}" if where else str(item.get("msg")))
        return "; ".join(parts)
    return error_detail(response)


class ReadClient(Session):
    """GETs against one server; safe to share between threads."""

    #: Whether the server has answered once: a refused connection before that is a
    #: wrong URL (fail at once), after it a hiccup (retry).
    _answered = False

    def pause(self, attempt: int) -> None:
        """Wait before retry number *attempt* + 1 (backoff with jitter; ends early when
        the run is stopped)."""
        self._sleep(backoff(attempt))

    def _open(self, path: str, params: Params, headers: Mapping[str, str] | None) -> httpx.Response:
        """Send ``GET path`` until a final answer; return it unread if it is a success."""
        request = self._http.build_request("GET", path, params=list(params), headers=headers)
        for attempt in range(self.retries + 1):
            check(self._stop)
            try:
                response = self._http.send(request, stream=True)
            except httpx.ConnectError as exc:
                if not self._answered:
                    raise ConnectFailedError(None, f"cannot connect to {self.url}: {exc}") from None
                failure, delay = f"cannot connect: {exc}", None
            except httpx.TransportError as exc:
                failure, delay = f"{type(exc).__name__}: {exc}".rstrip(": "), None
            else:
                self._answered = True
                status = response.status_code
                if status < 400:
                    return response
                try:
                    response.read()
                except httpx.TransportError:
                    pass  # the status is what matters; the detail is a courtesy
                finally:
                    response.close()
                if status in (401, 403):
                    raise AuthError(status, _detail(response))
                if not is_transient(status):
                    raise ApiError(status, _detail(response))
                failure, delay = f"HTTP {status}: {_detail(response)}", retry_after(response)
            if attempt == self.retries:
                raise ApiError(None, f"{failure} (gave up after {attempt + 1} tries)")
            self._sleep(backoff(attempt) if delay is None else delay)
        raise AssertionError("unreachable")

    @contextmanager
    def stream(
        self, path: str, params: Params = (), headers: Mapping[str, str] | None = None
    ) -> Iterator[httpx.Response]:
        """A successful (< 400) response whose body is not read yet; transient failures
        before the answer are retried. Raises :class:`ApiError` (``AuthError`` for
        401/403, ``ConnectFailedError`` when the server was never reached)."""
        response = self._open(path, params, headers)
        try:
            yield response
        finally:
            response.close()

    def get_json(self, path: str, params: Params = ()) -> tuple[Any, httpx.Headers]:
        """The decoded JSON answer of ``GET path`` and its headers."""
        for attempt in range(self.retries + 1):
            try:
                with self.stream(path, params) as response:
                    return orjson.loads(response.read()), response.headers
            except httpx.TransportError as exc:  # the body broke off: retry the request
                if attempt == self.retries:
                    raise ApiError(None, f"{type(exc).__name__}: {exc}") from None
                self._sleep(backoff(attempt))
            except orjson.JSONDecodeError as exc:
                raise ApiError(None, f"the server's answer is not JSON: {exc}") from None
        raise AssertionError("unreachable")

    def pages(
        self, path: str, params: Params, limit: int | None = None, page_size: int = MAX_PAGE
    ) -> Iterator[list[dict[str, Any]]]:
        """Pages of a listing, following ``X-Next-Cursor`` until *limit* items (None:
        all) or the last page. Each request asks for at most what is still wanted."""
        remaining = limit
        cursor: str | None = None
        while remaining is None or remaining > 0:
            size = page_size if remaining is None else min(remaining, page_size)
            query = [*params, ("limit", str(size))]
            if cursor is not None:
                query.append(("cursor", cursor))
            page, headers = self.get_json(path, query)
            if not isinstance(page, list):
                raise ApiError(None, f"expected a list from {path}, got {type(page).__name__}")
            if remaining is not None:
                page = page[:remaining]
                remaining -= len(page)
            if page:
                yield page
            cursor = headers.get(NEXT_CURSOR)
            if not cursor or not page:
                return
