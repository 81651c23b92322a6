"""A stand-in PutPlace server for client tests: stdlib ``http.server`` on loopback.

It speaks the wire protocol of DESIGN.md (``POST /put_file``, multipart
``POST /upload_file/{sha256}``) and, unless ``legacy`` is set, the batch endpoints
(``POST /put_files``, raw ``PUT /blobs/{sha256}``). It records every request and checks
uploaded content against its hash the way the real server does. ``script`` holds
statuses to answer (in order) per path prefix before behaving normally.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Upload:
    sha256: str
    content: bytes
    filename: str | None
    query: dict[str, list[str]]


@dataclass
class FakeServer:
    url: str = ""
    legacy: bool = True
    api_key: str = "k" * 64
    blobs: dict[str, bytes] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    uploads: list[Upload] = field(default_factory=list)
    script: dict[str, list[int]] = field(default_factory=dict)
    retry_after: str | None = None

    def paths(self) -> list[str]:
        return [f"{r.method} {r.path}" for r in self.requests]

    def records(self) -> list[dict[str, Any]]:
        """Every metadata record received, from /put_file and /put_files alike."""
        found: list[dict[str, Any]] = []
        for r in self.requests:
            if r.path == "/put_file":
                found.append(r.json())
            elif r.path == "/put_files" and not self.legacy:
                found.extend(r.json()["files"])
        return found


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


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


def _handler(state: FakeServer) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _handle(self) -> None:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = _read_chunked(self.rfile)
            else:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            split = urlsplit(self.path)
            request = Request(self.command, split.path, parse_qs(split.query),
                              dict(self.headers.items()), body)  # fmt: skip
            with lock:
                state.requests.append(request)
                scripted = next(
                    (s for p, s in state.script.items() if _under(split.path, p) and s), None
                )
                status = scripted.pop(0) if scripted else None
            if status is not None:
                extra = {"Retry-After": state.retry_after} if state.retry_after else {}
                self._answer(status, {"detail": f"scripted {status}"}, extra)
                return
            self._route(request)

        def _route(self, request: Request) -> None:
            path = request.path
            known = ["/put_file", "/upload_file"]
            known += [] if state.legacy else ["/put_files", "/blobs"]
            if not any(_under(path, p) for p in known):
                self._answer(404, {"detail": "Not Found"})
                return
            if self.headers.get("X-API-Key") != state.api_key:
                self._answer(401, {"detail": "Invalid API key"})
                return
            if self.command == "POST" and path == "/put_file":
                self._answer(201, self._register(request.json()))
            elif self.command == "POST" and path == "/put_files" and not state.legacy:
                results = [{"ok": True, "file": self._register(r)} for r in request.json()["files"]]
                self._answer(200, {"results": results})
            elif self.command == "POST" and path.startswith("/upload_file/"):
                sha = path.rsplit("/", 1)[1]
                name, filename, content = _multipart_file(
                    request.headers["Content-Type"], request.body
                )
                if name != "file":
                    self._answer(422, {"detail": "field 'file' required"})
                    return
                if not self._store(sha, content, filename, request.query):
                    return
                self._answer(200, {"message": "File uploaded successfully", "sha256": sha,
                                   "file_size": len(content),
                                   "hostname": request.query["hostname"][0],
                                   "filepath": request.query["filepath"][0]})  # fmt: skip
            elif self.command == "PUT" and path.startswith("/blobs/") and not state.legacy:
                sha = path.rsplit("/", 1)[1]
                if self._store(sha, request.body, None, request.query):
                    self._answer(201, {"sha256": sha, "file_size": len(request.body)})
            else:
                self._answer(404, {"detail": "Not Found"})

        def _register(self, record: dict[str, Any]) -> dict[str, Any]:
            required = record["sha256"] not in state.blobs
            url = f"/upload_file/{record['sha256']}" if required else None
            return {**record, "_id": "x", "has_file_content": not required,
                    "upload_required": required, "upload_url": url}  # fmt: skip

        def _store(
            self, sha: str, content: bytes, filename: str | None, query: dict[str, list[str]]
        ) -> bool:
            if hashlib.sha256(content).hexdigest() != sha:
                self._answer(400, {"detail": "Content hash does not match the sha256 in the URL"})
                return False
            with lock:
                state.blobs[sha] = content
                state.uploads.append(Upload(sha, content, filename, query))
            return True

        do_POST = do_PUT = _handle

    return Handler


@contextmanager
def fake_server(**options: Any) -> Iterator[FakeServer]:
    state = FakeServer(**options)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
