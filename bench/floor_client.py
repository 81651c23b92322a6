"""The floor client of ``bench/floor.py``: the least a client must do for a first ingest,
and nothing else. Not ``ppclient``: no cache (so no fast rescan), scans, progress,
excludes, retries, large-file paths or error reports.

One thread walks the tree, reads each file whole, hashes it and makes its record; batches
of FLOOR_BATCH (default 1,000, as ``ppclient`` sends) records go to
``POST /put_files?brief=true``, then the contents the server asks for (each once) in one
``POST /bundles``, from FLOOR_SENDERS (default 2) threads, each with a connection of its
own (``http.client``, kept alive).

    python -m bench.floor_client URL KEY TREE
"""

from __future__ import annotations

import hashlib
import http.client
import os
import queue
import socket
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import orjson

from putplace.client.uploader import bundle_header

BATCH = int(os.environ.get("FLOOR_BATCH", "1000"))  # ppclient --batch-size, servers take 1,000
SENDERS = int(os.environ.get("FLOOR_SENDERS", "2"))
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK

Batch = tuple[list[dict[str, Any]], dict[str, bytes]]


def walk(top: str) -> Iterator[tuple[str, os.stat_result]]:
    """Every regular file under *top* with its lstat (no symlink followed)."""
    stack = [top]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    yield entry.path, entry.stat(follow_symlinks=False)


def send(url: str, key: str, batches: queue.Queue[Batch | None], errors: list[str]) -> None:
    """Sender thread: each batch's records, then the contents the server lacks. After a
    failure (in *errors*) it only takes batches off the queue, so the walk never waits on
    a full queue."""
    where = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port)
    while (batch := batches.get()) is not None:
        if not errors:
            try:
                _send(connection, key, *batch)
            except Exception as exc:  # any failure ends the run with its reason
                errors.append(f"{type(exc).__name__}: {exc}")


def _send(
    connection: http.client.HTTPConnection,
    key: str,
    records: list[dict[str, Any]],
    contents: dict[str, bytes],
) -> None:
    headers = {"Content-Type": "application/json", "X-API-Key": key}
    connection.request("POST", "/put_files?brief=true", orjson.dumps({"files": records}), headers)
    answers = _answer(connection)["results"]
    pairs = zip(records, answers, strict=True)
    needed = dict.fromkeys(r["sha256"] for r, a in pairs if a["file"]["upload_required"])
    if needed:
        members = [(sha, contents[sha]) for sha in needed]
        body = bundle_header(members) + b"".join(data for _, data in members)
        headers = {"Content-Type": "application/octet-stream", "X-API-Key": key}
        connection.request("POST", "/bundles", body, headers)
        statuses = {r["status"] for r in _answer(connection)["results"]}
        if statuses - {"stored", "present"}:
            raise RuntimeError(f"bundle members not stored: {sorted(statuses)}")


def _answer(connection: http.client.HTTPConnection) -> Any:
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"the server answered {response.status}: {body[:500]!r}")
    return orjson.loads(body)


def main() -> None:
    if BATCH < 1 or SENDERS < 1:
        raise SystemExit("FLOOR_BATCH and FLOOR_SENDERS must be at least 1")
    url, key, tree = sys.argv[1:4]
    hostname, address = socket.gethostname(), "127.0.0.1"
    batches: queue.Queue[Batch | None] = queue.Queue(4)
    errors: list[str] = []
    senders = [
        threading.Thread(target=send, args=(url, key, batches, errors)) for _ in range(SENDERS)
    ]
    for sender in senders:
        sender.start()
    records: list[dict[str, Any]] = []
    contents: dict[str, bytes] = {}
    for path, st in walk(tree):
        fd = os.open(path, _READ_FLAGS)
        try:
            data = os.read(fd, st.st_size)
        finally:
            os.close(fd)
        sha = hashlib.sha256(data).hexdigest()
        contents[sha] = data
        records.append({
            "filepath": path, "hostname": hostname, "ip_address": address, "sha256": sha,
            "file_size": st.st_size, "file_mode": st.st_mode, "file_uid": st.st_uid,
            "file_gid": st.st_gid, "file_mtime": st.st_mtime, "file_atime": st.st_atime,
            "file_ctime": st.st_ctime, "is_symlink": False, "link_target": None,
        })  # fmt: skip
        if len(records) == BATCH:
            batches.put((records, contents))
            records, contents = [], {}
    if records:
        batches.put((records, contents))
    for _ in senders:
        batches.put(None)
    for sender in senders:
        sender.join()
    if errors:
        raise SystemExit(f"floor client: {errors[0]}")


if __name__ == "__main__":
    main()
