"""kill -9 of a real ppserver while a large file goes over tus: after a restart the
client continues from the last acknowledged offset, re-sending at most the chunk in
flight, and the stored blob is whole. Local disk (1 GiB) and S3 (a smaller file: moto keeps every
part in memory)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from putplace.client.cache import ClientCache
from putplace.client.tus import ResumableUpload, UnhashedUpload
from putplace.client.uploader import ApiClient
from tests.conftest import make_settings
from tests.faults.test_crash import start
from tests.support.payloads import metadata
from tests.support.processes import run_ppserver
from tests.support.servers import free_port

MIB = 1024 * 1024
#: (stack, the hash sent before the bytes or found while sending them) -> file size
SIZES = {
    ("sqlite-local", "hashed"): 1024 * MIB,
    ("sqlite-s3", "hashed"): 160 * MIB,
    ("sqlite-local", "unhashed"): 128 * MIB,
}


def big_file(path: Path, size: int) -> str:
    """*size* random-looking bytes (a repeated random block: quick to make); their hash."""
    block = os.urandom(4 * MIB)
    hasher = hashlib.sha256()
    with path.open("wb") as out:
        for i in range(size // len(block)):
            piece = block[:-8] + i.to_bytes(8, "big")  # no two blocks alike
            out.write(piece)
            hasher.update(piece)
    return hasher.hexdigest()


@pytest.mark.parametrize(("stack", "order"), list(SIZES))
def test_kill_9_mid_upload_resumes_from_the_acknowledged_offset(
    request: pytest.FixtureRequest, stack: str, order: str, tmp_path: Path
) -> None:
    """*order* "unhashed": the file is sent as it is hashed (a part announced as the
    whole), its record registered after, and the part joined: the restarted server has
    no running hash of it and verifies it by reading it back."""
    settings = make_settings(request, stack, tmp_path, fsync=True)
    created = run_ppserver(settings, "keys", "create", "--name", "tus", "--json", cwd=tmp_path)
    key = json.loads(created.stdout)["api_key"]
    size = SIZES[stack, order]
    path = tmp_path / "disk.img"
    sha = big_file(path, size)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start(settings, tmp_path, port)
    try:
        record = {**metadata(b""), "sha256": sha, "file_size": size}

        def register() -> None:
            answer = httpx.post(f"{url}/put_file", json=record, headers={"X-API-Key": key})
            assert answer.status_code == 201

        api = ApiClient(url, key, retries=8)
        opener = lambda: path.open("rb")  # noqa: E731
        upload: ResumableUpload
        if order == "hashed":
            register()
            upload = ResumableUpload(api, ClientCache(None), sha, size, opener)
        else:
            upload = UnhashedUpload(api, ClientCache(None), "file:1", size, opener)
        failure: list[BaseException] = []

        def send() -> None:
            try:
                if isinstance(upload, UnhashedUpload):
                    assert upload.send() == sha
                    register()
                    upload.finish()
                else:
                    upload.run()
            except BaseException as exc:
                failure.append(exc)

        sender = threading.Thread(target=send)
        sender.start()
        while upload.bytes_sent < size * 0.4 and sender.is_alive():
            time.sleep(0.005)
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        sent_before = upload.bytes_sent
        server = start(settings, tmp_path, port)
        sender.join(timeout=300)
        assert not sender.is_alive()
        assert failure == []
        # At most the request in flight: sent whole, perhaps, but never acknowledged.
        resent = upload.bytes_sent - size
        assert 0 <= resent <= upload.chunk, (resent, sent_before)
        with httpx.stream("GET", f"{url}/download/{sha}", headers={"X-API-Key": key},
                          timeout=120) as download:  # fmt: skip
            assert download.status_code == 200
            hasher = hashlib.sha256()
            for chunk in download.iter_bytes():
                hasher.update(chunk)
        assert hasher.hexdigest() == sha
        api.close()
    finally:
        server.kill()
        server.wait()
