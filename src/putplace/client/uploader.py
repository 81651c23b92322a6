"""HTTP calls to a PutPlace server, with retries for transient failures only.

Connection errors, timeouts, 5xx and 429 are retried with exponential backoff and
jitter (429 and 503 honour ``Retry-After``); any other 4xx is final. 401/403 raise
:class:`AuthError` so a run with a bad key stops at once.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from putplace.digest import CHUNK_SIZE

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


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
    url = url.rstrip("/")
    return url.removesuffix("/put_file")


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        detail = response.text
    return detail if isinstance(detail, str) else str(detail)


def _retry_after(response: httpx.Response | None) -> float | None:
    if response is None:
        return None
    value = response.headers.get("retry-after", "")
    return float(value) if value.replace(".", "", 1).isdigit() else None


class ApiClient:
    """One connection pool to the server, shared by every worker thread."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = 60.0,
        retries: int = 5,
        verify: bool | str = True,
        pool_size: int = 16,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = base_url(url)
        self.retries = retries
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.url,
            headers={"X-API-Key": api_key, "User-Agent": "ppclient"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            verify=verify,
            limits=httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size),
        )

    def close(self) -> None:
        self._http.close()

    def _request(
        self, method: str, path: str, body: Callable[[], dict[str, Any]]
    ) -> httpx.Response:
        """Send, retrying transient failures; *body* builds fresh kwargs for each attempt."""
        for attempt in range(self.retries + 1):
            response: httpx.Response | None = None
            try:
                response = self._http.request(method, path, **body())
            except httpx.TransportError as exc:
                failure = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 400:
                    return response
                if response.status_code in (401, 403):
                    raise AuthError(response.status_code, _detail(response))
                if response.status_code in (404, 405) and path in ("/put_files",):
                    raise NotSupportedError(response.status_code, _detail(response))
                if response.status_code not in RETRY_STATUSES:
                    raise ApiError(response.status_code, _detail(response))
                failure = f"HTTP {response.status_code}: {_detail(response)}"
            if attempt == self.retries:
                raise ApiError(response.status_code if response else None, failure)
            delay = _retry_after(response) or min(30.0, 0.5 * 2**attempt)
            self._sleep(delay * random.uniform(0.8, 1.2))
        raise AssertionError("unreachable")

    def put_files(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Register a batch; one result per record (``ok`` + ``file`` or ``errors``)."""
        response = self._request("POST", "/put_files", lambda: {"json": {"files": records}})
        results: list[dict[str, Any]] = response.json()["results"]
        return results

    def put_file(self, record: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = self._request("POST", "/put_file", lambda: {"json": record}).json()
        return answer

    def upload(self, sha256: str, path: str, progress: Callable[[int], None]) -> None:
        """Stream a file's bytes to ``PUT /blobs/{sha256}`` (restarted on retry)."""

        def body() -> dict[str, Any]:
            return {
                "content": _file_chunks(path, progress),
                "headers": {"Content-Type": "application/octet-stream"},
            }

        self._request("PUT", f"/blobs/{sha256}", body)

    def upload_multipart(
        self, sha256: str, path: str, hostname: str, filepath: str
    ) -> dict[str, Any]:
        """The upload existing PutPlace servers accept: ``POST /upload_file`` multipart."""

        def body() -> dict[str, Any]:
            handle = open(path, "rb")  # noqa: SIM115 - httpx streams and closes it
            return {
                "params": {"hostname": hostname, "filepath": filepath},
                "files": {"file": (os.path.basename(path), handle, "application/octet-stream")},
            }

        answer: dict[str, Any] = self._request("POST", f"/upload_file/{sha256}", body).json()
        return answer


def _file_chunks(path: str, progress: Callable[[int], None]) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            progress(len(chunk))
            yield chunk
