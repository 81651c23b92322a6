"""``ppclient restore`` against the real server.

A source tree is registered and uploaded by the real upload client (``ppclient PATH``),
then restored into another directory and compared with the original: contents, modes,
times, symlinks, odd names. Hostile records are registered through the API directly.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from putplace.client.cli import main
from putplace.client.inventory.restorefs import TEMP_PREFIX, temp_name
from putplace.digest import sha256_hex
from tests.client.helpers import counts
from tests.client.test_readcmds import clean_env, put  # noqa: F401 (clean_env: autouse)
from tests.conftest import Keys

TOP_MTIME, TOP_ATIME = 1_600_000_000, 1_500_000_000


@pytest.fixture(params=["sqlite-local", "sqlite-s3"])
def stack(request: pytest.FixtureRequest) -> str:
    """Both blob stores (ranged downloads differ); what the metadata store answers
    (versions, ``as_of``, paging by path) is proven on every backend by
    tests/metadata."""
    return str(request.param)


ROOT_IS_RUNNING = os.geteuid() == 0


@dataclass
class Source:
    root: Path
    files: dict[str, bytes]
    """Regular files: path relative to root (``/``-separated, OS form) -> content."""
    links: dict[str, str]
    """Symlinks: relative path -> target."""


@pytest.fixture
def source(
    server_url: str, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Source:
    """A tree on host ``src``, registered and uploaded with ``ppclient``."""
    root = tmp_path / "src" / "tree"
    files = {
        "top.txt": b"top\n" * 100,
        "a/b/c/deep.bin": os.urandom(300_000),
        "a/dup1": b"same" * 1000,
        "a/b/dup2": b"same" * 1000,
        "empty": b"",
        "tool": b"#!/bin/sh\necho hi\n",
        "red\x1b[31m\nname": b"odd name",
        os.fsdecode(b"caf\xe9.txt"): b"latin-1 name",
    }
    links = {"link": "a/b/c/deep.bin", "a/up": "../top.txt"}
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for name, target in links.items():
        (root / name).symlink_to(target)
    os.chmod(root / "top.txt", 0o640)
    os.utime(root / "top.txt", (TOP_ATIME, TOP_MTIME))
    os.chmod(root / "tool", 0o4755)
    sibling = tmp_path / "src" / "tree-other"  # a string prefix of it, but not under it
    sibling.mkdir()
    (sibling / "x").write_bytes(b"not under the prefix")
    upload(server_url, keys, root, sibling)
    capsys.readouterr()
    return Source(root, files, links)


def upload(server_url: str, keys: Keys, *paths: Path) -> None:
    args = ["--url", server_url, "--api-key", keys.write, "--no-progress", "--no-cache"]
    assert main([*args, "--hostname", "src", *map(str, paths)]) == 0


def restore(url: str, key: str, *args: str) -> int:
    return main(["restore", "--url", url, "--api-key", key, "--no-progress", *args])


def downloads(caplog: pytest.LogCaptureFixture, status: int | None = None) -> list[str]:
    """Paths of the ``GET /download/...`` requests the client made (answered with
    *status*), as httpx logs each answer it gets: all of them before the run returns.
    (The server's access line of a request may come a moment after the client has its
    answer, from the server's thread: a run's last lines could land after it returned,
    among the next run's, or be missed.)"""
    found = []
    for record in caplog.records:
        words = record.getMessage().split()
        if record.name != "httpx" or words[2:3] != ["GET"] or "/download/" not in words[3]:
            continue
        if status is None or words[5:6] == [str(status)]:  # ... "HTTP/1.1 206 Partial..."
            found.append(urllib.parse.urlsplit(words[3]).path)
    return found


def leftovers(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.name.startswith(TEMP_PREFIX)]


def assert_restored(source: Source, out: Path) -> None:
    for name, data in source.files.items():
        assert (out / name).read_bytes() == data, name
    for name, target in source.links.items():
        assert os.readlink(out / name) == target
    assert not leftovers(out)


def test_restores_the_tree(
    server_url: str, keys: Keys, source: Source, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    out = tmp_path / "out"
    code = restore(server_url, keys.read, "--hostname", "src", str(source.root), "--to", str(out),
                   "--workers", "8")  # fmt: skip
    output = capsys.readouterr()
    assert code == 0, output.err
    top = (out / "top.txt").stat()  # before anything reads it (and moves its atime)
    assert stat.S_IMODE(top.st_mode) == 0o640
    assert (top.st_mtime, top.st_atime) == (TOP_MTIME, TOP_ATIME)
    assert_restored(source, out)
    summary = counts(output.out)
    assert summary["Files restored"] == len(source.files)
    assert summary["Bytes restored"] == sum(map(len, source.files.values()))
    assert (summary["Symlinks created"], summary["Errors"]) == (2, 0)
    # setuid is given back only by root: anyone else would be making a set-id program.
    tool_mode = stat.S_IMODE((out / "tool").stat().st_mode)
    assert tool_mode == (0o4755 if ROOT_IS_RUNNING else 0o755)
    assert b"caf\xe9.txt" in os.listdir(os.fsencode(out))  # the original bytes, unescaped
    assert (out / "link").read_bytes() == source.files["a/b/c/deep.bin"]  # the link works
    assert not (out / "x").exists()
    assert not (tmp_path / "out-other").exists()  # the sibling was not under the prefix


def test_a_second_run_skips_what_is_there_and_repairs_the_rest(
    server_url: str, keys: Keys, source: Source, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    out = tmp_path / "out"
    args = ["--hostname", "src", str(source.root), "--to", str(out)]
    assert restore(server_url, keys.read, *args) == 0
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger="httpx"):
        caplog.clear()
        assert restore(server_url, keys.read, *args) == 0
        summary = counts(capsys.readouterr().out)
        assert any("GET" in r.getMessage() for r in caplog.records)  # the requests are seen
        assert downloads(caplog) == []  # nothing fetched again
    assert summary["Files restored"] == 0
    assert summary["Skipped (already matching)"] == len(source.files) + len(source.links)

    (out / "a" / "dup1").unlink()
    (out / "a" / "b" / "dup2").write_bytes(b"same" * 999 + b"diff")  # same size, other bytes
    os.chmod(out / "top.txt", 0o666)
    os.utime(out / "top.txt", (1, 1))
    assert restore(server_url, keys.read, *args) == 0
    summary = counts(capsys.readouterr().out)
    assert summary["Files restored"] == 2
    assert_restored(source, out)
    top = (out / "top.txt").stat()
    assert (stat.S_IMODE(top.st_mode), top.st_mtime) == (0o640, TOP_MTIME)


def test_hostile_paths_and_link_targets_are_refused(
    server_url: str, keys: Keys, source: Source, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    root = str(source.root)
    put(server_url, keys.write, "src", f"{root}/a/../../../escaped.txt", b"escape")
    put(server_url, keys.write, "src", f"{root}/abs", link="/etc/passwd")
    put(server_url, keys.write, "src", f"{root}/a/climb", link="../../outside")
    put(server_url, keys.write, "src", f"{root}/a/sneaky", link="b/../../..")
    # NUL cannot be in a local name; in the wire form it is %00 (and %FF makes it read so).
    put(server_url, keys.write, "src", f"{root}/nul%00%FF", b"nul")
    put(server_url, keys.write, "src", f"{root}/nul-link", link="x%00%FF")
    out = tmp_path / "out"
    assert restore(server_url, keys.read, "--hostname", "src", root, "--to", str(out)) == 1
    output = capsys.readouterr()
    refused = [line for line in output.err.splitlines() if line.startswith("refused: ")]
    assert len(refused) == 6
    assert any("escaped.txt: the path has a '..' component" in line for line in refused)
    assert any("/abs: the symlink target /etc/passwd is absolute" in line for line in refused)
    assert any("%00%FF: the path holds a NUL character" in line for line in refused)
    assert any("nul-link: the symlink target holds a NUL" in line for line in refused)
    assert counts(output.out)["Errors"] == 6
    assert list(tmp_path.rglob("escaped.txt")) == []
    for name in ("abs", "a/climb", "a/sneaky"):
        assert not os.path.lexists(out / name)
    assert_restored(source, out)  # everything else was restored all the same


def test_never_writes_through_a_symlink_in_the_target(
    server_url: str, keys: Keys, source: Source, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").symlink_to(outside)  # planted (or restored) earlier: a -> somewhere else
    assert restore(server_url, keys.read, "--hostname", "src", str(source.root),
                   "--to", str(out)) == 1  # fmt: skip
    output = capsys.readouterr()
    assert list(outside.iterdir()) == []  # not one byte outside the target
    errors = [line for line in output.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 4  # a/dup1, a/b/dup2, a/b/c/deep.bin, the symlink a/up
    assert all(line.endswith(": a is a symlink or not a directory; not written through")
               for line in errors)  # fmt: skip
    assert (out / "top.txt").read_bytes() == source.files["top.txt"]


def test_as_of_restores_the_tree_as_it_was(
    server_url: str, keys: Keys, source: Source, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    time.sleep(0.05)
    moment = repr(time.time())
    time.sleep(0.05)
    (source.root / "top.txt").write_bytes(b"changed later")
    (source.root / "added-later").write_bytes(b"new")
    (source.root / "a" / "dup1").unlink()  # the next scan records it deleted
    upload(server_url, keys, source.root)
    args = ["--hostname", "src", str(source.root)]
    assert restore(server_url, keys.read, *args, "--to", str(tmp_path / "then"),
                   "--as-of", moment) == 0  # fmt: skip
    assert restore(server_url, keys.read, *args, "--to", str(tmp_path / "now")) == 0
    assert_restored(source, tmp_path / "then")
    assert not (tmp_path / "then" / "added-later").exists()
    assert (tmp_path / "now" / "top.txt").read_bytes() == b"changed later"
    assert (tmp_path / "now" / "added-later").read_bytes() == b"new"
    assert not (tmp_path / "now" / "a" / "dup1").exists()


@dataclass
class Meddler:
    """What :func:`meddling_proxy` does to downloads, and the downloads it saw."""

    corrupt: bool = False
    """Flip the first byte of every download."""
    cut_once: set[str] = field(default_factory=set)
    """Paths whose first download is cut off halfway (connection closed)."""
    seen: list[tuple[str, str | None]] = field(default_factory=list)
    """(path, Range header) of every download asked for."""


@contextmanager
def meddling_proxy(backend: str, meddler: Meddler) -> Iterator[str]:
    """A front for *backend* that passes everything on, but meddles with downloads."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            wanted = {"x-api-key", "range"}
            headers = {k: v for k, v in self.headers.items() if k.lower() in wanted}
            answer = httpx.get(backend + self.path, headers=headers, timeout=30)
            body = answer.content
            length = len(body)
            if self.path.startswith("/download/"):
                meddler.seen.append((self.path, self.headers.get("Range")))
                if meddler.corrupt and body:
                    body = bytes([body[0] ^ 0xFF]) + body[1:]
                if self.path in meddler.cut_once:
                    meddler.cut_once.discard(self.path)
                    body = body[: len(body) // 2]
                    self.close_connection = True
            self.send_response(answer.status_code)
            for name in ("content-type", "content-range", "x-next-cursor"):
                if name in answer.headers:
                    self.send_header(name, answer.headers[name])
            self.send_header("Content-Length", str(length))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_corrupted_download_is_detected_and_leaves_nothing(
    server_url: str, keys: Keys, source: Source, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    out = tmp_path / "out"
    args = ["--hostname", "src", str(source.root), "--to", str(out)]
    with meddling_proxy(server_url, Meddler(corrupt=True)) as proxy:
        assert restore(proxy, keys.read, *args, "--json") == 1
    summary = json.loads(capsys.readouterr().out)
    with_content = [name for name, data in source.files.items() if data]
    assert summary["errors"] == len(with_content)
    assert summary["files_restored"] == 1  # the empty file needs no download
    assert all("does not match the record" in f["error"] for f in summary["failures"])
    for name in with_content:
        assert not (out / name).exists()
    assert leftovers(out) == []
    assert restore(server_url, keys.read, *args) == 0  # straight from the server: fine
    assert_restored(source, out)


def test_partial_files_of_an_interrupted_run_are_resumed_or_replaced(
    server_url: str, keys: Keys, source: Source, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    out = tmp_path / "out"
    deep = source.files["a/b/c/deep.bin"]
    (out / "a" / "b" / "c").mkdir(parents=True)
    (out / "a" / "b" / "c" / temp_name("deep.bin")).write_bytes(deep[:100_000])
    (out / temp_name("top.txt")).write_bytes(b"not the start of top.txt at all")
    with caplog.at_level(logging.INFO, logger="httpx"):
        assert restore(server_url, keys.read, "--hostname", "src", str(source.root),
                       "--to", str(out)) == 0  # fmt: skip
    assert_restored(source, out)
    # Both were continued with a Range request; the bad one then failed its check and
    # was fetched again whole, and nothing of it is left.
    resumed = downloads(caplog, 206)
    assert sorted(resumed) == sorted(f"/download/{sha256_hex(data)}"
                                     for data in (deep, source.files["top.txt"]))  # fmt: skip
    assert downloads(caplog, 200).count(f"/download/{sha256_hex(source.files['top.txt'])}") == 1


def test_a_download_cut_short_is_resumed_where_it_stopped(
    server_url: str, keys: Keys, source: Source, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    deep = f"/download/{sha256_hex(source.files['a/b/c/deep.bin'])}"
    meddler = Meddler(cut_once={deep})
    with meddling_proxy(server_url, meddler) as proxy:
        assert restore(proxy, keys.read, "--hostname", "src", str(source.root),
                       "--to", str(out)) == 0  # fmt: skip
    assert_restored(source, out)
    asked = [range_ for path, range_ in meddler.seen if path == deep]
    assert asked == [None, "bytes=150000-"]  # the rest only, not the whole file again


def test_one_file_as_the_prefix(
    server_url: str, keys: Keys, source: Source, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    prefix = str(source.root / "top.txt")
    assert restore(server_url, keys.read, "--hostname", "src", prefix, "--to", str(out)) == 0
    assert os.listdir(out) == ["top.txt"]
    assert (out / "top.txt").read_bytes() == source.files["top.txt"]


def test_nothing_recorded_there_is_an_error(
    server_url: str, keys: Keys, source: Source, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    prefix = str(source.root / "nope")
    assert restore(server_url, keys.read, "--hostname", "src", prefix,
                   "--to", str(tmp_path / "out")) == 1  # fmt: skip
    assert "nothing is recorded under" in capsys.readouterr().err


def test_usage_errors(server_url: str, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    assert restore(server_url, keys.read, "--hostname", "h", "/x") == 2  # no --to
    assert restore(server_url, keys.read, "--to", "/tmp/x", "/x") == 2  # no --hostname
    assert restore(server_url, keys.read, "--hostname", "h", "/x/../y", "--to", "/tmp/x") == 2
    assert "'..'" in capsys.readouterr().err
