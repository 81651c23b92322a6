"""Streaming one content from ``GET /download/{sha256}`` into an open file.

The file may already hold the start of the content (an interrupted run's partial file,
or the bytes that arrived before a connection broke): the rest is asked for with
``Range: bytes=N-``. A server that answers the whole content instead (200) is fine: the
file starts over. The SHA-256 of what the file holds is kept up to date as bytes
arrive, so the check at the end costs no second read.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable

import httpx

from putplace.client.cancel import check
from putplace.client.inventory.reader import ReadClient
from putplace.client.inventory.restorefs import hash_fd
from putplace.client.uploader import ApiError


class Sink:
    """An open file being filled from its start, and the hash of what it holds."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = 0
        self.hasher = hashlib.sha256()

    def load(self, stop: threading.Event | None = None) -> None:
        """Take what the file already holds as the start of the content."""
        self.size, self.hasher = hash_fd(self.fd, stop)  # leaves the offset at the end

    def reset(self) -> None:
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.size = 0
        self.hasher = hashlib.sha256()

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        self.hasher.update(data)
        self.size += len(data)

    def holds(self, size: int, sha256: str) -> bool:
        return self.size == size and self.hasher.hexdigest() == sha256


def fetch(
    client: ReadClient,
    sha256: str,
    size: int,
    sink: Sink,
    progress: Callable[[int], None],
    stop: threading.Event | None = None,
) -> None:
    """Fill *sink* up to *size* bytes of the content (not checked here: see
    :meth:`Sink.holds`). A connection that breaks mid-body is resumed from where it
    stopped, up to the client's retries; other failures raise :class:`ApiError`."""
    if sink.size > size:
        sink.reset()
    for attempt in range(client.retries + 1):
        if sink.size >= size:
            return
        headers = {"Range": f"bytes={sink.size}-"} if sink.size else None
        try:
            with client.stream(f"/download/{sha256}", headers=headers) as response:
                if response.status_code != 206 and sink.size:
                    sink.reset()  # the whole content came, not the rest of it
                elif response.status_code == 206 and not response.headers.get(
                    "content-range", ""
                ).startswith(f"bytes {sink.size}-"):
                    raise ApiError(206, "the server sent a different byte range than asked")
                for chunk in response.iter_bytes():  # as it arrives: a cut loses nothing
                    check(stop)
                    sink.write(chunk)
                    progress(len(chunk))
                    if sink.size > size:
                        return  # more than recorded: the check will say so
            return
        except httpx.TransportError as exc:
            failure = f"{type(exc).__name__}: {exc}".rstrip(": ")
        if attempt == client.retries:
            tries = attempt + 1
            raise ApiError(None, f"download broke off: {failure} (gave up after {tries} tries)")
        client.pause(attempt)
