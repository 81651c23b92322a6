"""A stand-in PutPlace server for client tests: the real server behind a recording,
scriptable front.

The client talks to a stdlib ``http.server`` on loopback. It records every request,
answers it with a scripted status (or cuts the connection) when told to, and otherwise
passes it on to the real application (``putplace.server.app.create_app`` on SQLite and
local disk in a temporary directory, served by uvicorn in a thread: see
``tests/support/servers.py``), then hands the real answer back. Every answer that is not
scripted is the real server's, so the stand-in cannot drift from it: the real server
never asks for a symlink's content, refuses content whose hash or size is wrong, answers
``present`` for a bundle member it already has, and so on.

``legacy=True`` plays an older server without ``/put_files``, ``/blobs`` and ``/bundles``
(the real application's answer to an unknown path is passed back for those);
``bundles=False`` one without ``/bundles`` only, ``tus=False`` one without ``/tus``.
``script`` maps a path prefix (or ``METHOD /prefix``) to the answers to give first, in
order: ``None`` (pass the request on as usual), an HTTP status, ``bytes`` (pass the
request on, then answer 200 with those bytes as its JSON body instead of the real
answer), ``CUT`` (pass the first half of the body on, as if the connection broke
there, and close the connection without answering), ``DAMAGE`` (pass the body on
with one byte changed, as a link could that TCP's checksum does not catch), or a dict
of headers (answer 200 with them and no body, without passing the request on: a tus
``HEAD`` answered as at an earlier moment).
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import json
import struct
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from putplace.auth import hash_key, utcnow
from putplace.config import Settings
from putplace.digest import sha256_hex
from putplace.models import Scope
from putplace.service.stores import open_metadata
from tests.support.servers import running_server

KEY = "c0ffee42" * 8
"""The write key the stand-in's server knows by default."""
CUT = "cut"
DAMAGE = "damage"
LEGACY_ONLY = ("/put_file", "/upload_file")
"""What an older server has; everything else answers as an unknown path there."""
_HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    status: int | None = None
    """What the client was answered (None: the connection was cut)."""
    answer: bytes = b""
    client_port: int = 0
    """The client's end of the connection it came over."""

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Upload:
    """One content the client sent, by whichever endpoint."""

    sha256: str
    content: bytes
    via: str
    """``upload_file``, ``blobs`` or ``bundles``."""
    status: str | int | None
    """The HTTP status, or for a bundle member ``stored``/``present``/``refused``."""
    filename: str | None = None
    query: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class FakeServer:
    url: str = ""
    backend: str = ""
    """The real server's own URL (requests made there are not recorded)."""
    legacy: bool = False
    bundles: bool = True
    tus: bool = True
    api_key: str = KEY
    requests: list[Request] = field(default_factory=list)
    script: dict[str, list[int | str | bytes | dict[str, str] | None]] = field(default_factory=dict)
    retry_after: str | None = None

    def paths(self) -> list[str]:
        return [f"{r.method} {r.path}" for r in self.requests]

    def count(self, prefix: str) -> int:
        """Requests made to *prefix* (``"/bundles"``, ``"/blobs"``, ...)."""
        return sum(_under(r.path, prefix) for r in self.requests)

    def records(self) -> list[dict[str, Any]]:
        """Every metadata record the server took, from /put_file and /put_files alike."""
        found: list[dict[str, Any]] = []
        for r in self.requests:
            if r.path == "/put_file" and r.status == 201:
                found.append(r.json())
            elif r.path == "/put_files" and r.status == 200:
                found.extend(r.json()["files"])
        return found

    @property
    def uploads(self) -> list[Upload]:
        """Every content the client sent, in order, with the answer it got."""
        found: list[Upload] = []
        for r in self.requests:
            if r.path.startswith("/upload_file/") and r.method == "POST":
                _, filename, content = _multipart_file(r.headers["Content-Type"], r.body)
                sha = r.path.rsplit("/", 1)[1]
                found.append(Upload(sha, content, "upload_file", r.status, filename, r.query))
            elif r.path.startswith("/blobs/") and r.method == "PUT":
                found.append(Upload(r.path.rsplit("/", 1)[1], r.body, "blobs", r.status))
            elif r.path == "/bundles" and r.method == "POST":
                results = json.loads(r.answer)["results"] if r.status == 200 else None
                for index, (sha, content) in enumerate(parse_bundle(r.body)):
                    status = results[index]["status"] if results else r.status
                    found.append(Upload(sha, content, "bundles", status))
        return found

    def _backend(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"X-API-Key": self.api_key}
        return httpx.request(method, self.backend + path, headers=headers, timeout=30, **kwargs)

    def store(self, content: bytes) -> str:
        """Have the real server hold *content* already (not recorded); its hash."""
        sha = sha256_hex(content)
        record = {
            "filepath": f"/seed/{sha}", "hostname": "seed", "ip_address": "127.0.0.1",
            "sha256": sha, "file_size": len(content), "file_mode": 0o100644, "file_uid": 0,
            "file_gid": 0, "file_mtime": 0.0, "file_atime": 0.0, "file_ctime": 0.0,
        }  # fmt: skip
        self._backend("POST", "/put_file", json=record).raise_for_status()
        self._backend("PUT", f"/blobs/{sha}", content=content).raise_for_status()
        return sha

    def files(self, hostname: str) -> dict[str, dict[str, Any]]:
        """The real server's records for *hostname*, by path."""
        found: dict[str, dict[str, Any]] = {}
        after: str | None = None
        while True:
            params: dict[str, Any] = {"hostname": hostname, "limit": 1000}
            if after:
                params["after"] = after
            page = self._backend("GET", "/files", params=params).json()
            if not page:
                return found
            found.update((r["filepath"], r) for r in page)
            after = page[-1]["_id"]

    def content(self, sha256: str) -> bytes | None:
        """What the real server stores under *sha256* (None if nothing)."""
        response = self._backend("GET", f"/download/{sha256}")
        return response.content if response.status_code == 200 else None


def parse_bundle(body: bytes) -> list[tuple[str, bytes]]:
    """The members of a ``POST /bundles`` body (those that arrived whole)."""
    (count,) = struct.unpack_from(">I", body, 8)
    members, offset = [], 12 + 40 * count
    for index in range(count):
        digest, length = struct.unpack_from(">32sQ", body, 12 + 40 * index)
        if offset + length > len(body):
            break
        members.append((digest.hex(), body[offset : offset + length]))
        offset += length
    return members


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def _scripted(method: str, path: str, key: str) -> bool:
    """Whether a script entry (``/prefix`` or ``METHOD /prefix``) is for this request."""
    wanted, _, prefix = key.rpartition(" ")
    return (not wanted or wanted == method) and _under(path, prefix)


def _read_chunked(rfile: Any) -> bytes:
    body = bytearray()
    while True:
        size = int(rfile.readline().split(b";")[0], 16)
        if size == 0:
            rfile.readline()
            return bytes(body)
        body += rfile.read(size)
        rfile.readline()


def _multipart_file(content_type: str, body: bytes) -> tuple[str | None, str | None, bytes]:
    """(field name, filename, content) of the one part of a multipart body."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    (part,) = list(message.iter_parts())  # type: ignore[attr-defined]
    payload = part.get_payload(decode=True)
    return part.get_param("name", header="content-disposition"), part.get_filename(), payload


def _handler(state: FakeServer, backend: httpx.Client) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _answer(
            self, request: Request, status: int, body: bytes, headers: dict[str, str]
        ) -> None:
            request.status, request.answer = status, body
            self.send_response(status)
            for name, value in headers.items():
                if name.lower() not in _HOP_BY_HOP and name.lower() not in {"server", "date"}:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _handle(self) -> None:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = _read_chunked(self.rfile)
            else:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            split = urlsplit(self.path)
            request = Request(self.command, split.path, parse_qs(split.query),
                              dict(self.headers.items()), body,
                              client_port=self.client_address[1])  # fmt: skip
            with lock:
                state.requests.append(request)
                scripted = next(
                    (s for p, s in state.script.items() if _scripted(self.command, split.path, p)
                     and s), None
                )  # fmt: skip
                action = scripted.pop(0) if scripted else None
            if action == CUT:
                self._forward(request, body[: len(body) // 2])
                self.close_connection = True  # no answer: the client sees a broken link
                return
            if action == DAMAGE and body:
                body = bytes([body[0] ^ 0xFF]) + body[1:]
            if isinstance(action, dict):
                self._answer(request, 200, b"", action)
                return
            if isinstance(action, int):
                extra = {"Retry-After": state.retry_after} if state.retry_after else {}
                payload = json.dumps({"detail": f"scripted {action}"}).encode()
                self._answer(
                    request, action, payload, {"Content-Type": "application/json", **extra}
                )
                return
            response = self._forward(request, body)
            if isinstance(action, bytes):
                self._answer(request, 200, action, {"Content-Type": "application/json"})
                return
            self._answer(request, response.status_code, response.content, dict(response.headers))

        def _forward(self, request: Request, body: bytes) -> httpx.Response:
            path = request.path
            missing = (
                (state.legacy and not any(_under(path, p) for p in LEGACY_ONLY))
                or (not state.bundles and _under(path, "/bundles"))
                or (not state.tus and _under(path, "/tus"))
            )
            if missing:
                path = "/an-older-server-has-no" + path  # the real answer to an unknown path
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
            return backend.request(
                request.method, path, params=request.query, headers=headers, content=body
            )

        do_POST = do_PUT = do_GET = do_PATCH = do_HEAD = do_OPTIONS = do_DELETE = _handle

    return Handler


async def _add_key(settings: Settings, key: str) -> None:
    async with open_metadata(settings) as store:
        await store.add_api_key(
            key_hash=hash_key(key), name="client-tests", description=None, scope=Scope.write,
            created_at=utcnow(),
        )  # fmt: skip


@contextmanager
def fake_server(settings: dict[str, Any] | None = None, **options: Any) -> Iterator[FakeServer]:
    """*settings*: overrides of the real server's settings (limits, say)."""
    state = FakeServer(**options)
    with tempfile.TemporaryDirectory(prefix="pp-client-server-") as tmp:
        settings = Settings(
            database_url=f"sqlite:///{Path(tmp)}/putplace.db",
            storage_url=f"file://{Path(tmp)}/blobs",
            fsync=False,
            key_cache_seconds=0,
            **(settings or {}),
        )
        asyncio.run(_add_key(settings, state.api_key))
        with (
            running_server(settings) as backend_url,
            httpx.Client(base_url=backend_url, timeout=60) as backend,
        ):
            state.backend = backend_url
            server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state, backend))
            state.url = f"http://127.0.0.1:{server.server_address[1]}"
            thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
            thread.start()
            try:
                yield state
            finally:
                server.shutdown()
                server.server_close()
