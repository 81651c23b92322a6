"""End to end on loopback: a real ``ppserver`` process and the real ``ppclient``.

The tree has duplicate content, a symlink to a file and one to a directory, an
unreadable file and excluded paths; it is scanned under two hostnames. Then the server's
records are checked, each distinct content must have been uploaded exactly once, and
``/download`` must return identical bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from putplace.config import Settings
from putplace.service.stores import open_metadata
from tests.support.processes import BIN, ppserver_process, run_ppserver

UNREADABLE_OWNER = 12345


def build_tree(root: Path) -> dict[str, bytes]:
    """Create the tree; return the regular files the client must register, by path."""
    files = {
        "a.txt": b"alpha\n",
        "sub/a-copy.txt": b"alpha\n",
        "sub/deep/c.txt": b"gamma\n" * 1000,
        "b.bin": os.urandom(3 * 1024 * 1024 + 7),
        "empty": b"",
    }
    excluded = {".git/config": b"[core]\n", "build/out.o": b"obj", "debug.log": b"log line\n"}
    for relative, content in {**files, **excluded}.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    (root / "link-to-a").symlink_to("a.txt")
    (root / "linkdir").symlink_to("sub", target_is_directory=True)
    os.mkfifo(root / "pipe")
    secret = root / "noread.txt"
    secret.write_bytes(b"secret")
    os.chown(secret, UNREADABLE_OWNER, UNREADABLE_OWNER)
    secret.chmod(0)
    return files


def ppclient(tree: Path, url: str, key: str, hostname: str) -> subprocess.CompletedProcess[str]:
    command = [
        str(BIN / "ppclient"), str(tree), "--url", url, "--hostname", hostname,
        "--exclude", ".git", "--exclude", "build/", "--exclude", "*.log", "--no-progress",
    ]  # fmt: skip
    if os.geteuid() == 0:  # root reads anything: drop the capabilities that allow it
        drop = "-dac_override,-dac_read_search"
        command = ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", "--", *command]
    env = {**os.environ, "PUTPLACE_API_KEY": key, "HOME": str(tree.parent)}
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, check=False
    )


async def blob_count(settings: Settings) -> int:
    async with open_metadata(settings) as store:
        return len(await store.list_blobs(limit=1000))


@pytest.mark.slow
def test_client_and_server_end_to_end(settings: Settings, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    expected = build_tree(tree)
    created = run_ppserver(
        settings, "keys", "create", "--name", "e2e", "--scope", "write", "--json", cwd=tmp_path
    )
    key = httpx.Response(200, content=created.stdout).json()["api_key"]

    debug = settings.model_copy(update={"log_level": "debug"})
    with ppserver_process(debug, tmp_path) as url:
        first = ppclient(tree, url, key, "host-one")
        assert first.returncode == 1, first.stdout + first.stderr  # the unreadable file
        assert "noread.txt" in first.stderr
        distinct = {hashlib.sha256(c).hexdigest() for c in expected.values()}
        assert asyncio.run(blob_count(settings)) == len(distinct)

        second = ppclient(tree, url, key, "host-two")
        assert second.returncode == 1
        assert asyncio.run(blob_count(settings)) == len(distinct)

        with httpx.Client(base_url=url, headers={"X-API-Key": key}) as api:
            for host in ("host-one", "host-two"):
                records = {
                    r["filepath"]: r
                    for r in api.get("/files", params={"hostname": host, "limit": 1000}).json()
                }
                wanted = {str(tree / p) for p in expected} | {
                    str(tree / "link-to-a"), str(tree / "linkdir"),
                }  # fmt: skip
                assert set(records) == wanted, host
                for relative, content in expected.items():
                    record = records[str(tree / relative)]
                    assert record["sha256"] == hashlib.sha256(content).hexdigest()
                    assert record["file_size"] == len(content)
                    assert record["has_file_content"] is True
                assert records[str(tree / "link-to-a")]["is_symlink"] is True
                assert records[str(tree / "link-to-a")]["link_target"] == "a.txt"
                assert records[str(tree / "linkdir")]["is_symlink"] is True

            for content in expected.values():
                sha = hashlib.sha256(content).hexdigest()
                download = api.get(f"/download/{sha}")
                assert download.status_code == 200
                assert download.content == content

    uploads = upload_requests(tmp_path)
    assert sorted(uploads) == sorted(distinct), "each distinct content uploaded exactly once"


def upload_requests(server_dir: Path) -> list[str]:
    """Hashes of the contents sent to the server, one entry per time sent.

    Single uploads are in the access log; bundle members in the server's DEBUG log.
    """
    (log,) = server_dir.glob("ppserver-*.log")
    found = []
    single = r'"(?:POST /upload_file|PUT /blobs)/([0-9a-f]{64})\S* HTTP/1.1" 20'
    for line in log.read_text().splitlines():
        match = re.search(single, line) or re.search(r"bundle member ([0-9a-f]{64}) ", line)
        if match:
            found.append(match.group(1))
    return found
