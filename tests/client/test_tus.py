"""The client's resumable uploads (tus): large files over ``/tus/``, in parallel parts,
continued after a dropped connection, a server error or a new run; older servers get the
single upload."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from putplace.client import pipeline, tus
from putplace.client.cache import ClientCache
from putplace.client.cancel import Cancelled
from putplace.client.cli import main
from putplace.client.hashing import FileChangedError, hash_entry
from putplace.client.scanner import FileEntry
from putplace.client.tus import (
    CHUNK,
    MAX_CHUNK,
    MAX_UNCHECKED_CHUNK,
    ContentRefusedError,
    ResumableUpload,
    UnhashedUpload,
    chunk_for,
    file_identity,
    split,
    tus_checksum,
)
from putplace.client.uploader import ApiClient, ApiError
from tests.client.fake_server import CUT, DAMAGE, KEY, FakeServer, fake_server
from tests.client.helpers import counts, ppclient

MIB = 1024 * 1024


def register(server_url: str, content: bytes) -> str:
    sha = hashlib.sha256(content).hexdigest()
    record = {
        "filepath": f"/big/{sha[:8]}", "hostname": "h", "ip_address": "127.0.0.1",
        "sha256": sha, "file_size": len(content), "file_mode": 0o100644, "file_uid": 0,
        "file_gid": 0, "file_mtime": 1.0, "file_atime": 1.0, "file_ctime": 1.0,
    }  # fmt: skip
    answer = httpx.post(f"{server_url}/put_file", json=record, headers={"X-API-Key": KEY})
    assert answer.status_code == 201
    return sha


def source(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "big.bin"
    path.write_bytes(content)
    return path


def tree_with_big_file(tmp_path: Path) -> tuple[Path, bytes]:
    """A directory holding ``big``, 3 MiB of random bytes (over ``--tus-threshold 2M``)."""
    tree = tmp_path / "tree"
    tree.mkdir()
    big = os.urandom(3 * MIB)
    (tree / "big").write_bytes(big)
    return tree, big


def test_split_keeps_parts_large_enough() -> None:
    assert split(100, 4, min_part=30) == [(0, 33), (33, 33), (66, 34)]
    assert split(10, 4, min_part=30) == [(0, 10)]
    assert split(0, 4, min_part=30) == [(0, 0)]
    parts = split(10**10 + 7, 4, min_part=64 * MIB)
    assert sum(length for _, length in parts) == 10**10 + 7
    assert len(parts) == 4


@pytest.mark.parametrize("parts", [1, 3])
def test_upload_in_chunks_and_parts(tmp_path: Path, parts: int) -> None:
    content = os.urandom(5 * MIB + 123)
    path = source(tmp_path, content)
    with fake_server() as server, ApiClient(server.url, KEY) as api:
        sha = register(server.backend, content)
        cache = ClientCache(None)
        upload = ResumableUpload(api, cache, sha, len(content), lambda: path.open("rb"),
                                 parts=parts, chunk=MIB, min_part=MIB)  # fmt: skip
        upload.run()
        assert upload.bytes_sent == len(content)  # nothing twice
        assert server.content(sha) == content
        partials = [r for r in server.requests if r.headers.get("Upload-Concat") == "partial"]
        assert len(partials) == (parts if parts > 1 else 0)
        patches = [r for r in server.requests if r.method == "PATCH"]
        assert all(len(r.body) <= MIB for r in patches)
        assert all(r.headers["Upload-Checksum"].startswith("sha256 ") for r in patches)
        assert cache.unfinished_upload(api.cache_key, sha, len(content)) is None


@pytest.mark.parametrize("hashed", [True, False], ids=["hashed", "hashed-while-sent"])
def test_dropped_connections_and_server_errors_resume_where_acknowledged(
    tmp_path: Path, hashed: bool
) -> None:
    """Sent while hashed, the bytes sent again are hashed once: the hash still holds."""
    content = os.urandom(6 * MIB)
    path = source(tmp_path, content)
    sha = hashlib.sha256(content).hexdigest()
    with fake_server(script={"PATCH /tus": [CUT, 503, CUT], "HEAD /tus": [CUT]}) as server:
        with ApiClient(server.url, KEY, retries=5, sleep=lambda _: None) as api:
            if hashed:
                register(server.backend, content)
                upload = ResumableUpload(api, ClientCache(None), sha, len(content),
                                         lambda: path.open("rb"), chunk=MIB)  # fmt: skip
                upload.run()
            else:
                identity = file_identity(path.stat())
                upload = UnhashedUpload(api, ClientCache(None), identity, len(content),
                                        lambda: path.open("rb"), chunk=MIB)  # fmt: skip
                assert upload.send() == sha
                register(server.backend, content)
                upload.finish()
        assert server.content(sha) == content
        patches = [r.status for r in server.requests if r.method == "PATCH"]
        assert patches[:3] == [None, 503, None]  # cut, refused, cut
        # Each failure costs at most the chunk in flight.
        assert len(content) < upload.bytes_sent <= len(content) + 3 * MIB


def stopped_after_3_mib(
    api: ApiClient,
    cache_path: Path,
    key: str,
    size: int,
    upload_for: Callable[[ClientCache, Callable[[int], None], threading.Event], ResumableUpload],
) -> tuple[ClientCache, int]:
    """Send an upload (cached under *key*) until 3 MiB are out, then stop the run; the
    next run's cache and the bytes the server acknowledged."""
    cache = ClientCache(cache_path)
    stop = threading.Event()

    def stop_after_3_mib(_: int) -> None:
        if first.bytes_sent >= 3 * MIB:
            stop.set()

    first = upload_for(cache, stop_after_3_mib, stop)
    with pytest.raises(Cancelled):
        first.send() if isinstance(first, UnhashedUpload) else first.run()
    cache.close()
    cache = ClientCache(cache_path)  # the next run
    (url,) = cache.unfinished_upload(api.cache_key, key, size) or []
    acknowledged = int(api.http.head(url, headers={"Tus-Resumable": "1.0.0"}).headers[
        "Upload-Offset"
    ])  # fmt: skip
    assert acknowledged >= 3 * MIB
    return cache, acknowledged


def test_a_new_run_continues_an_unfinished_upload(tmp_path: Path) -> None:
    content = os.urandom(8 * MIB)
    path = source(tmp_path, content)
    with fake_server() as server, ApiClient(server.url, KEY) as api:
        sha = register(server.backend, content)
        cache, acknowledged = stopped_after_3_mib(
            api, tmp_path / "cache.db", sha, len(content),
            lambda cache, progress, stop: ResumableUpload(
                api, cache, sha, len(content), lambda: path.open("rb"), chunk=MIB,
                progress=progress, stop=stop,
            ),
        )  # fmt: skip
        assert server.content(sha) is None
        second = ResumableUpload(api, cache, sha, len(content), lambda: path.open("rb"),
                                 chunk=MIB)  # fmt: skip
        second.run()
        assert second.bytes_sent == len(content) - acknowledged
        assert server.content(sha) == content
        assert cache.unfinished_upload(api.cache_key, sha, len(content)) is None


def test_an_expired_upload_starts_again(tmp_path: Path) -> None:
    content = os.urandom(3 * MIB)
    path = source(tmp_path, content)
    cache = ClientCache(None)
    with fake_server() as server, ApiClient(server.url, KEY) as api:
        sha = register(server.backend, content)
        cache.remember_upload(api.cache_key, sha, len(content), ["/tus/" + "ab" * 16])
        upload = ResumableUpload(api, cache, sha, len(content), lambda: path.open("rb"))
        upload.run()
        assert server.content(sha) == content


def test_ppclient_sends_large_files_over_tus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tus, "CHUNK", 256 * 1024)  # a dozen PATCHes, not one
    tree = tmp_path / "tree"
    tree.mkdir()
    # "a" is sent while it is hashed; "b", of the same size, is hashed first (the server
    # may hold its content by then) and sent after.
    big, twin, small = os.urandom(3 * MIB), os.urandom(3 * MIB), os.urandom(1000)
    (tree / "a").write_bytes(big)
    (tree / "b").write_bytes(twin)
    (tree / "small").write_bytes(small)
    with fake_server() as server:
        code = ppclient(server.url, "--tus-threshold", "2M", str(tree))
        assert code == 0
        assert counts(capsys.readouterr().out)["Content uploaded (files)"] == 3
        assert server.content(hashlib.sha256(big).hexdigest()) == big
        assert server.content(hashlib.sha256(twin).hexdigest()) == twin
        via_tus = [r for r in server.requests if r.path.startswith("/tus")]
        assert {r.method for r in via_tus} >= {"OPTIONS", "POST", "PATCH"}
        (joined,) = [r for r in via_tus if "final" in r.headers.get("Upload-Concat", "")]
        (part_url,) = joined.headers["Upload-Concat"].removeprefix("final;").split()
        part = urlsplit(part_url).path
        patches = [r for r in via_tus if r.method == "PATCH"]
        sent_while_hashed = [r for r in patches if r.path == part]
        hashed_first = [r for r in patches if r.path != part]
        assert len(sent_while_hashed) > 1
        assert len(hashed_first) > 1
        # Sent while hashed, each byte is read once: no checksum can go before it (the
        # server checks the whole content's SHA-256 at the join instead).
        assert not [r for r in sent_while_hashed if "Upload-Checksum" in r.headers]
        # Otherwise the cheapest checksum the server offers: a request's damage is all it
        # must catch.
        assert all(r.headers["Upload-Checksum"].startswith("crc32c ") for r in hashed_first)
        assert server.count("/blobs") == 0
        assert server.count("/bundles") == 1  # the small one
        # The bytes, and the request that joins them, over one connection of their own:
        # one server worker hashes them as they come and joins them without reading
        # them back (another worker would).
        (connection,) = {r.client_port for r in [*sent_while_hashed, joined]}
        assert {r.path[:5] for r in server.requests if r.client_port == connection} == {"/tus/"}


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [("crc32c,crc32,sha256", "crc32c"), ("crc32,sha256,sha1", "crc32"),
     ("sha1,sha256", "sha256"), ("sha1, md5", "sha1"), ("blake3", "sha256"), (None, None)],
)  # fmt: skip
def test_the_checksum_is_the_fastest_the_server_offers(
    offered: str | None, chosen: str | None
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if offered is None:  # an older server: no tus at all
            return httpx.Response(404)
        headers = {"Tus-Version": "1.0.0", "Tus-Checksum-Algorithm": offered}
        return httpx.Response(204, headers=headers)

    with ApiClient("http://server.test", KEY) as api:
        api.http._transport = httpx.MockTransport(answer)
        assert tus_checksum(api) == chosen


def test_servers_without_tus_get_the_single_upload(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree, big = tree_with_big_file(tmp_path)
    with fake_server(tus=False) as server:
        code = ppclient(server.url, "--tus-threshold", "2M", str(tree))
        assert code == 0
        assert server.content(hashlib.sha256(big).hexdigest()) == big
        assert server.count("/blobs") == 1
        assert [r.method for r in server.requests if r.path.startswith("/tus")] == ["OPTIONS"]


def test_an_upload_goes_in_about_16_patches_of_32_to_128_mib() -> None:
    # Fewer PATCHes, fewer waits on the server's fsync and commit; at most one is resent.
    assert chunk_for(10 * MIB) == CHUNK == 32 * MIB
    assert chunk_for(1024 * MIB) == 64 * MIB
    assert chunk_for(2048 * MIB) == MAX_CHUNK == 128 * MIB
    assert chunk_for(100 * 1024 * MIB) == MAX_CHUNK


def test_an_upload_without_checksums_goes_in_about_4_patches_of_32_to_512_mib() -> None:
    # A request cut short keeps what arrived: only a server dying mid-request costs one.
    assert chunk_for(10 * MIB, checked=False) == CHUNK
    assert chunk_for(1024 * MIB, checked=False) == 256 * MIB
    assert chunk_for(2048 * MIB, checked=False) == MAX_UNCHECKED_CHUNK == 512 * MIB
    assert chunk_for(100 * 1024 * MIB, checked=False) == MAX_UNCHECKED_CHUNK
    with ApiClient("http://127.0.0.1:9", KEY) as api:  # nothing is sent
        opener = Path(__file__).open
        sent_while_hashed = UnhashedUpload(api, ClientCache(None), "file:1", 2048 * MIB, opener)
        hashed_first = ResumableUpload(api, ClientCache(None), "ab" * 32, 2048 * MIB, opener)
    assert sent_while_hashed.chunk == MAX_UNCHECKED_CHUNK
    assert hashed_first.chunk == MAX_CHUNK


def tus_creations(server: FakeServer) -> list[dict[str, str]]:
    return [r.headers for r in server.requests if r.method == "POST" and r.path == "/tus/"]


def test_a_large_file_is_sent_while_it_is_hashed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No content of its size on the server: the file is read once, its bytes sent as
    they are hashed, and joined as its content once its record is in."""
    tree = tmp_path / "tree"
    tree.mkdir()
    big = os.urandom(3 * MIB + 5)
    (tree / "big").write_bytes(big)

    def not_read_twice(*_: object) -> str:
        raise AssertionError("the file was hashed before it was sent")

    monkeypatch.setattr(pipeline, "hash_entry", not_read_twice)
    with fake_server() as server:
        assert ppclient(server.url, "--tus-threshold", "2M", str(tree)) == 0
        assert counts(capsys.readouterr().out)["Content uploaded (files)"] == 1
        assert server.content(hashlib.sha256(big).hexdigest()) == big
        part, final = tus_creations(server)
        assert part["Upload-Concat"] == "partial"
        assert "whole" in part["Upload-Metadata"]
        assert final["Upload-Concat"].startswith("final;")
        patches = [r for r in server.requests if r.method == "PATCH"]
        assert sum(len(r.body) for r in patches) == len(big)  # each byte sent once
        paths = server.paths()  # the record (which needs the hash) between the two
        last_patch = max(i for i, p in enumerate(paths) if p.startswith("PATCH"))
        joined = max(i for i, p in enumerate(paths) if p == "POST /tus/")
        assert last_patch < paths.index("POST /put_files") < joined


def test_a_file_the_size_of_a_recorded_one_is_hashed_before_it_is_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The server may hold its content: ask first, as for every other file."""
    tree, big = tree_with_big_file(tmp_path)
    with fake_server() as server:
        server.store(os.urandom(3 * MIB))  # another content, the same size
        assert ppclient(server.url, "--tus-threshold", "2M", str(tree)) == 0
        assert counts(capsys.readouterr().out)["Content uploaded (files)"] == 1
        assert server.content(hashlib.sha256(big).hexdigest()) == big
        (whole,) = tus_creations(server)
        assert "Upload-Concat" not in whole  # one upload of the named content
        assert "sha256" in whole["Upload-Metadata"]


def test_bytes_sent_ahead_that_the_server_did_not_need_are_freed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tree, big = tree_with_big_file(tmp_path)
    with fake_server() as server:
        server.store(big)
        # As if the records of that size were gone but the content kept.
        monkeypatch.setattr(ApiClient, "holds_size", lambda *_: False)
        assert ppclient(server.url, "--tus-threshold", "2M", str(tree)) == 0
        assert counts(capsys.readouterr().out)["Content uploaded (files)"] == 0
        (part,) = tus_creations(server)
        assert part["Upload-Concat"] == "partial"
        freed = [r for r in server.requests if r.method == "DELETE"]
        assert [r.status for r in freed] == [204]
        assert server.files("h1")[str(tree / "big")]["sha256"] == hashlib.sha256(big).hexdigest()


def test_a_new_run_continues_bytes_sent_before_the_hash(tmp_path: Path) -> None:
    content = os.urandom(8 * MIB)
    path = source(tmp_path, content)
    identity = file_identity(path.stat())
    with fake_server() as server, ApiClient(server.url, KEY) as api:
        cache, acknowledged = stopped_after_3_mib(
            api, tmp_path / "cache.db", identity, len(content),
            lambda cache, progress, stop: UnhashedUpload(
                api, cache, identity, len(content), lambda: path.open("rb"), chunk=MIB,
                progress=progress, stop=stop,
            ),
        )  # fmt: skip
        second = UnhashedUpload(api, cache, identity, len(content), lambda: path.open("rb"),
                                chunk=MIB)  # fmt: skip
        sha = second.send()
        assert sha == hashlib.sha256(content).hexdigest()  # the bytes sent before included
        assert second.bytes_sent == len(content) - acknowledged
        assert register(server.backend, content) == sha
        second.finish()
        assert server.content(sha) == content
        assert cache.unfinished_upload(api.cache_key, identity, len(content)) is None


def test_hard_links_to_a_large_file_are_not_sent_twice_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same device, inode, size and mtime: one is sent while hashed, the other hashed
    first (two writers on one upload would break both its offset and its hash)."""
    tree = tmp_path / "tree"
    tree.mkdir()
    big = os.urandom(3 * MIB)
    (tree / "a").write_bytes(big)
    os.link(tree / "a", tree / "b")
    hashed_first: list[str] = []

    def counted(entry: FileEntry, *args: Any) -> str:
        hashed_first.append(entry.path)
        return hash_entry(entry, *args)

    monkeypatch.setattr(pipeline, "hash_entry", counted)
    with fake_server() as server:
        assert ppclient(server.url, "--tus-threshold", "2M", str(tree)) == 0
        assert counts(capsys.readouterr().out)["Content uploaded (files)"] == 1
        assert server.content(hashlib.sha256(big).hexdigest()) == big
        assert [h.get("Upload-Concat") for h in tus_creations(server)].count("partial") == 1
        assert set(server.files("h1")) == {str(tree / "a"), str(tree / "b")}
        assert len(hashed_first) == 1


def test_copies_of_a_large_file_are_sent_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two files with the same content, found in one run before either is recorded: the
    first is sent while hashed, the second (the same size) hashed first, then found held."""
    tree = tmp_path / "tree"
    tree.mkdir()
    big = os.urandom(3 * MIB)
    for name in ("a", "b"):
        (tree / name).write_bytes(big)
    with fake_server() as server:
        assert ppclient(server.url, "--tus-threshold", "2M", str(tree)) == 0
        assert counts(capsys.readouterr().out)["Content uploaded (files)"] == 1
        assert server.content(hashlib.sha256(big).hexdigest()) == big
        patches = [r for r in server.requests if r.method == "PATCH"]
        assert sum(len(r.body) for r in patches) == len(big)  # not twice
        assert not [r for r in server.requests if r.method == "DELETE"]
        assert set(server.files("h1")) == {str(tree / "a"), str(tree / "b")}


def test_files_walked_after_a_large_file_being_sent_do_not_wait_for_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a slow link a large file's upload takes hours: the batches after it are
    registered (and their contents sent) meanwhile, and it is registered once sent."""
    tree, big = tree_with_big_file(tmp_path)
    later = tree / "later"
    later.mkdir()
    small = {later / f"f{i}": os.urandom(100 + i) for i in range(4)}
    for path, content in small.items():
        path.write_bytes(content)
    registered_meanwhile = threading.Event()
    send = UnhashedUpload.send

    def slow_send(upload: UnhashedUpload) -> str:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if {str(p) for p in small} <= set(server.files("h1")):
                registered_meanwhile.set()
                break
            time.sleep(0.05)
        return send(upload)

    monkeypatch.setattr(UnhashedUpload, "send", slow_send)
    with fake_server() as server:
        code = ppclient(server.url, "--tus-threshold", "2M", "--batch-size", "1", str(tree))
        assert code == 0
        assert registered_meanwhile.is_set()
        assert counts(capsys.readouterr().out)["Content uploaded (files)"] == 5
        assert server.content(hashlib.sha256(big).hexdigest()) == big
        assert all(server.content(hashlib.sha256(c).hexdigest()) == c for c in small.values())
        assert str(tree / "big") in server.files("h1")


def test_a_size_the_server_holds_does_not_use_up_a_turn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With one upload worker (and one file looked at at a time): ``a`` (a size the
    server has a record of) is hashed first, and ``b`` (a new size) is still sent while
    hashed."""
    tree = tmp_path / "tree"
    (tree / "later").mkdir(parents=True)  # a directory's files come before its subdirectories
    (tree / "a").write_bytes(os.urandom(3 * MIB))
    (tree / "later" / "b").write_bytes(os.urandom(3 * MIB + 1))
    with fake_server() as server:
        register(server.url, os.urandom(3 * MIB))  # a record of a's size
        args = ("--tus-threshold", "2M", "--upload-workers", "1", "--hash-workers", "1")
        assert ppclient(server.url, *args, str(tree)) == 0
        partial = [h for h in tus_creations(server) if h.get("Upload-Concat") == "partial"]
        assert len(partial) == 1
        assert counts(capsys.readouterr().out)["Content uploaded (files)"] == 2


def ppclient_cached(url: str, cache: Path, *args: str) -> int:
    """``ppclient`` in process as host h1, with the local cache *cache*."""
    return main(["--url", url, "--api-key", KEY, "--no-progress", "--cache-file", str(cache),
                 "--hostname", "h1", "--ip", "10.1.2.3", *args])  # fmt: skip


def slow_unhashed_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each send while hashing takes a second longer (a slow link)."""
    send = UnhashedUpload.send

    def slow_send(upload: UnhashedUpload) -> str:
        time.sleep(1)
        return send(upload)

    monkeypatch.setattr(UnhashedUpload, "send", slow_send)


def test_a_copy_known_from_the_cache_waits_for_the_file_sent_while_hashed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``b``'s hash is in the local cache (an earlier dry run), ``a`` is a new copy of
    it, sent while hashed: ``b`` is registered once ``a`` is, and found held."""
    tree = tmp_path / "tree"
    tree.mkdir()
    big = os.urandom(3 * MIB)
    (tree / "b").write_bytes(big)
    cache = tmp_path / "cache.db"
    with fake_server() as server:
        assert ppclient_cached(server.url, cache, "--dry-run", str(tree)) == 0
        (tree / "a").write_bytes(big)
        slow_unhashed_sends(monkeypatch)
        assert ppclient_cached(server.url, cache, "--tus-threshold", "2M", str(tree)) == 0
        assert counts(capsys.readouterr().out)["Content uploaded (files)"] == 1
        patches = [r for r in server.requests if r.method == "PATCH"]
        assert sum(len(r.body) for r in patches) == len(big)  # not twice
        assert set(server.files("h1")) == {str(tree / "a"), str(tree / "b")}


def test_a_lost_directory_sent_again_is_registered_before_its_scan_completes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory unchanged since the last run whose files the server no longer holds
    is sent again; its large file, sent while hashed, is registered before the scan
    completes, or the scan would mark it deleted."""
    tree, _ = tree_with_big_file(tmp_path)
    cache = tmp_path / "cache.db"
    with fake_server() as server:
        assert ppclient_cached(server.url, cache, "--tus-threshold", "2M", str(tree)) == 0
        capsys.readouterr()
        monkeypatch.setattr(pipeline.Run, "_seen", lambda *_: 0)  # the server lost them
        monkeypatch.setattr(ClientCache, "lookup_hashes", lambda _, stats: [None] * len(stats))
        monkeypatch.setattr(ApiClient, "holds_size", lambda *_: False)
        slow_unhashed_sends(monkeypatch)
        assert ppclient_cached(server.url, cache, "--tus-threshold", "2M", str(tree)) == 0
        assert counts(capsys.readouterr().out)["Gone since last run (marked deleted)"] == 0
        assert str(tree / "big") in server.files("h1")


def test_a_failure_while_sending_unhashed_falls_back_to_hashing_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree, big = tree_with_big_file(tmp_path)
    with fake_server(script={"POST /tus": [500]}) as server:
        code = ppclient(server.url, "--retries", "0", "--tus-threshold", "2M", str(tree))
        assert code == 0
        assert counts(capsys.readouterr().out)["Content uploaded (files)"] == 1
        assert server.content(hashlib.sha256(big).hexdigest()) == big
        first, second = tus_creations(server)
        assert first["Upload-Concat"] == "partial"  # refused (500)
        assert "sha256" in second["Upload-Metadata"]  # the file hashed, then sent


def test_bytes_sent_while_hashing_before_the_link_failed_are_kept_for_the_next_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retries used up part-way: the file is an error of this run, and the next run sends
    only what the server does not have (not everything again)."""
    tree, big = tree_with_big_file(tmp_path)
    monkeypatch.setattr(tus, "chunk_for", lambda *_, **__: MIB)  # 3 chunks
    args = ["--url", "", "--api-key", KEY, "--no-progress", "--hostname", "h1",
            "--cache-file", str(tmp_path / "cache.db"), "--retries", "0",
            "--tus-threshold", "2M", str(tree)]  # fmt: skip
    # The first chunk arrives; the connection breaks in the second, and the server is not
    # reached again (its HEAD is cut too: the first one, before any bytes, is answered).
    with fake_server(script={"PATCH /tus": [None, CUT], "HEAD /tus": [None, CUT]}) as server:
        args[1] = server.url
        assert main(args) == 1
        assert "the bytes the server has are kept" in capsys.readouterr().err
        assert not [r for r in server.requests if r.method == "DELETE"]
        first_run = len(server.requests)
        assert main(args) == 0
        assert server.content(hashlib.sha256(big).hexdigest()) == big
        again = [r for r in server.requests[first_run:] if r.method == "PATCH"]
        # Sent without checksums, the half of the second chunk that arrived is kept too.
        assert sum(len(r.body) for r in again) == len(big) - MIB - MIB // 2
        part, final = tus_creations(server)  # the first run's part, continued, then joined
        assert part["Upload-Concat"] == "partial"
        assert final["Upload-Concat"].startswith("final;")


class CountedReads:
    """Opens a file whose reads are counted in :attr:`read` (bytes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.read = 0

    def __call__(self) -> io.FileIO:
        counter = self

        class Counted(io.FileIO):
            def read(self, size: int = -1, /) -> bytes:
                data = super().read(size)
                counter.read += len(data)
                return data

        return Counted(self.path)


def send_while_hashed(
    api: ApiClient, server: FakeServer, content: bytes, opener: CountedReads
) -> UnhashedUpload:
    """Send *content* (the file *opener* opens) in 1 MiB requests while hashing it, then
    register it and join it; the upload, once the server holds the content."""
    upload = UnhashedUpload(api, ClientCache(None), file_identity(opener.path.stat()),
                            len(content), opener, chunk=MIB)  # fmt: skip
    assert upload.send() == hashlib.sha256(content).hexdigest()
    register(server.backend, content)
    upload.finish()
    assert server.content(upload.sha256) == content
    return upload


def test_a_request_sent_while_hashed_and_cut_goes_on_from_what_arrived(tmp_path: Path) -> None:
    """Without checksums the server keeps the half of a cut request that arrived, so the
    next request starts inside bytes already read and hashed: each is hashed once, and
    only the lost half is read again."""
    content = os.urandom(4 * MIB)
    opener = CountedReads(source(tmp_path, content))
    with fake_server(script={"PATCH /tus": [CUT]}) as server:
        with ApiClient(server.url, KEY, retries=3, sleep=lambda _: None) as api:
            upload = send_while_hashed(api, server, content, opener)
        offsets = [int(r.headers["Upload-Offset"]) for r in server.requests if r.body]
        assert offsets[:3] == [0, MIB // 2, MIB // 2 + MIB]
        assert upload.bytes_sent == len(content) + MIB // 2  # the half that was lost
    assert opener.read == len(content) + MIB // 2


def test_a_file_sent_while_hashed_is_read_once(tmp_path: Path) -> None:
    content = os.urandom(5 * MIB + 123)
    opener = CountedReads(source(tmp_path, content))
    with fake_server() as server, ApiClient(server.url, KEY) as api:
        send_while_hashed(api, server, content, opener)
    assert opener.read == len(content)


def test_bytes_damaged_on_the_way_are_sent_again_with_checksums(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Sent while hashed, without checksums, a damaged request is found when the server
    checks the whole content at the join: the file is sent again in the same run, with a
    checksum per request, the run succeeds, and the user is told."""
    tree, big = tree_with_big_file(tmp_path)
    monkeypatch.setattr(tus, "chunk_for", lambda *_, **__: MIB)
    with fake_server(script={"PATCH /tus": [None, DAMAGE]}) as server:
        assert ppclient(server.url, "--tus-threshold", "2M", str(tree)) == 0
        assert server.content(hashlib.sha256(big).hexdigest()) == big
        warned = capsys.readouterr().err
        assert "warning" in warned
        assert "big: the server refused the bytes sent (content hashes to" in warned
        finals = [r for r in server.requests if r.headers.get("Upload-Concat", "")[:6] == "final;"]
        assert [r.status for r in finals] == [400]
        patches = [r for r in server.requests if r.method == "PATCH"]
        unchecked = [r for r in patches if "Upload-Checksum" not in r.headers]
        checked = [r for r in patches if "Upload-Checksum" in r.headers]
        assert sum(len(r.body) for r in unchecked) == len(big)
        assert sum(len(r.body) for r in checked) == len(big)


def test_a_final_request_refused_for_another_reason_is_not_taken_for_damage(
    tmp_path: Path,
) -> None:
    """Only a content the server refused and freed is sent again: any other 400 is the
    caller's error, and the bytes sent stay on the server."""
    content = os.urandom(2 * MIB)
    path = source(tmp_path, content)
    with fake_server() as server, ApiClient(server.url, KEY) as api:
        upload = UnhashedUpload(api, ClientCache(None), file_identity(path.stat()),
                                len(content), lambda: path.open("rb"))  # fmt: skip
        upload.send()
        register(server.backend, content)
        server.script["POST /tus"] = [400]
        with pytest.raises(ApiError) as refused:
            upload.finish()
        assert not isinstance(refused.value, ContentRefusedError)
        assert refused.value.status == 400
        assert upload.url is not None
        assert api.http.head(upload.url, headers={"Tus-Resumable": "1.0.0"}).status_code == 200


def test_a_file_that_shrinks_while_sent_is_an_error_of_its_own(tmp_path: Path) -> None:
    """Without a checksum pass before it, the sending pass is the one that finds the file
    shorter: it says so, rather than leaving the HTTP client with a request shorter than
    it declared, and the bytes sent are freed."""
    content = os.urandom(3 * MIB)
    # The DELETE that frees the bytes sent may come while the cut request still holds
    # the upload (423): it is sent again.
    with fake_server(script={"DELETE /tus": [423]}) as server:
        with ApiClient(server.url, KEY, sleep=lambda _: None) as api:
            upload = UnhashedUpload(api, ClientCache(None), "file:1", len(content),
                                    lambda: io.BytesIO(content[: 2 * MIB]), chunk=MIB)  # fmt: skip
            with pytest.raises(FileChangedError, match="shorter"):
                upload.send()
            url = upload.url
            upload.abandon()
            assert url is not None
            assert api.http.head(url, headers={"Tus-Resumable": "1.0.0"}).status_code == 404
        # The scripted 423, perhaps the real server's own (the cut request may still hold
        # the upload), then the one that frees it.
        deletes = [r.status for r in server.requests if r.method == "DELETE"]
        assert deletes[0] == 423
        assert deletes[-1] == 204


def test_a_link_that_cuts_every_request_still_gets_the_file_through(tmp_path: Path) -> None:
    """Each cut request moves the upload on (the server keeps what arrived, there being
    no checksum), so the failures in a row never reach the retries, however many cuts.
    Right after a cut the server may still answer the offset from before it (it has not
    seen the request end yet): the progress is the offset it then takes bytes at."""
    content = os.urandom(4 * MIB)
    opener = CountedReads(source(tmp_path, content))
    cuts = 5
    # After each cut: a HEAD answered with the offset before it (the cut request keeps
    # half of its MiB), an empty PATCH at that offset (409), the real HEAD, an empty PATCH
    # that is taken (204), then the next data PATCH.
    stale = [{"Tus-Resumable": "1.0.0", "Upload-Offset": str(k * MIB // 2)} for k in range(cuts)]
    script: dict[str, list[int | str | bytes | dict[str, str] | None]] = {
        "PATCH /tus": [CUT, None, None] * cuts,
        "HEAD /tus": [None] + [entry for answer in stale for entry in (answer, None)],
    }
    with fake_server(script=script) as server:
        with ApiClient(server.url, KEY, retries=2, sleep=lambda _: None) as api:
            send_while_hashed(api, server, content, opener)
        cut = [r for r in server.requests if r.method == "PATCH" and r.status is None]
        assert len(cut) == cuts
        assert [r.status for r in server.requests if r.method == "PATCH" and not r.body][:2] == [
            409,
            204,
        ]


def test_a_final_request_answered_busy_is_sent_again(tmp_path: Path) -> None:
    """423: the same final request, sent before (its answer lost), still joins the part."""
    content = os.urandom(2 * MIB)
    path = source(tmp_path, content)
    with fake_server() as server:
        with ApiClient(server.url, KEY, retries=3, sleep=lambda _: None) as api:
            upload = UnhashedUpload(api, ClientCache(None), file_identity(path.stat()),
                                    len(content), lambda: path.open("rb"))  # fmt: skip
            sha = upload.send()
            register(server.backend, content)
            server.script["POST /tus"] = [423]
            upload.finish()
        assert server.content(sha) == content
        finals = [
            r.status for r in server.requests if r.headers.get("Upload-Concat", "")[:6] == "final;"
        ]
        assert finals == [423, 201]


def test_a_large_file_sent_before_the_scans_open_is_registered_with_its_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large file is sent while it is hashed, apart from the batches, and the walk
    starts while the scans open: should its upload end first, its record must still
    name its scan, or completing the scan would take the file for deleted."""
    tree, _ = tree_with_big_file(tmp_path)
    sent = threading.Event()
    real_send, real_put_files = pipeline.Run._hash_while_sending, ApiClient.put_files

    def sending(self: pipeline.Run, entry: FileEntry) -> Any:
        try:
            return real_send(self, entry)
        finally:
            sent.set()

    def slow_scan(self: ApiClient, hostname: str, root: str, excludes: list[str]) -> str:
        assert sent.wait(10)  # the upload is over before the scan opens
        time.sleep(0.3)  # time to register the file, were that not waiting for the scan
        return "scan-1"

    named: list[tuple[str, Any]] = []

    def noted(self: ApiClient, records: list[dict[str, Any]], scan: Any = None) -> Any:
        named.extend((record["filepath"], scan) for record in records)
        return real_put_files(self, records)  # the fake server knows no scans

    monkeypatch.setattr(pipeline.Run, "_hash_while_sending", sending)
    monkeypatch.setattr(ApiClient, "open_scan", slow_scan)
    monkeypatch.setattr(ApiClient, "put_files", noted)
    monkeypatch.setattr(ApiClient, "finish_scan", lambda *_, **__: {"deleted": 0})
    with fake_server() as server:
        assert ppclient(server.url, "--tus-threshold", "2M", str(tree)) == 0
    assert named == [(str(tree / "big"), "scan-1")]
