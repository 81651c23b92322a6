"""Retry policy against a real HTTP server on loopback that fails on purpose."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from putplace.client.uploader import ApiClient, ApiError, AuthError


class Script:
    """Statuses to answer, in order; then 200 forever."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.requests = 0


@pytest.fixture
def flaky() -> Iterator[tuple[str, Script]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            script.requests += 1
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status = script.statuses.pop(0) if script.statuses else 200
            body = json.dumps(
                {"results": [], "detail": f"scripted {status}"}
                if status != 200
                else {"results": []}
            ).encode()
            self.send_response(status)
            if status == 429:
                self.send_header("Retry-After", "0")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", script
    server.shutdown()
    server.server_close()


def client(url: str, retries: int = 3) -> ApiClient:
    return ApiClient(url, "k" * 64, retries=retries, sleep=lambda s: None)


def test_transient_failures_are_retried(flaky: tuple[str, Script]) -> None:
    url, script = flaky
    script.statuses = [503, 500, 429]
    assert client(url).put_files([]) == []
    assert script.requests == 4


def test_client_errors_are_not_retried(flaky: tuple[str, Script]) -> None:
    url, script = flaky
    script.statuses = [400]
    with pytest.raises(ApiError) as caught:
        client(url).put_files([])
    assert caught.value.status == 400
    assert "scripted 400" in caught.value.detail
    assert script.requests == 1


def test_bad_key_stops_at_once(flaky: tuple[str, Script]) -> None:
    url, script = flaky
    script.statuses = [401]
    with pytest.raises(AuthError):
        client(url).put_files([])
    assert script.requests == 1


def test_gives_up_after_the_retry_budget(flaky: tuple[str, Script]) -> None:
    url, script = flaky
    script.statuses = [503] * 10
    with pytest.raises(ApiError) as caught:
        client(url, retries=2).put_files([])
    assert script.requests == 3
    assert "503" in str(caught.value)


def test_connection_refused_is_retried_then_reported() -> None:
    sleeps: list[float] = []
    api = ApiClient("http://127.0.0.1:1", "k" * 64, retries=2, sleep=sleeps.append)
    with pytest.raises(ApiError) as caught:
        api.put_files([])
    assert len(sleeps) == 2
    assert sleeps[1] > sleeps[0]  # backoff grows
    assert caught.value.status is None
