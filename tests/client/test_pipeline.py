"""The stages of a run overlap, and stay bounded while one of them is slow."""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from putplace.client import hashing, pipeline
from putplace.client.cli import main
from putplace.client.scanner import FileEntry
from putplace.client.uploader import ApiClient, AuthError
from tests.client.fake_server import KEY, fake_server

WAIT = 10.0


class Counter:
    def __init__(self) -> None:
        self.value = 0
        self._changed = threading.Condition()

    def add(self, count: int = 1) -> None:
        with self._changed:
            self.value += count
            self._changed.notify_all()

    def wait_for(self, value: int, timeout: float = WAIT) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.value >= value, timeout)


def make_files(root: Path, count: int) -> None:
    for i in range(count):
        (root / f"f{i:04d}").write_bytes(f"content {i}".encode() * 10)


def ppclient(url: str, *args: str) -> int:
    return main(["--url", url, "--api-key", KEY, "--no-progress", "--no-cache",
                 "--hostname", "h1", *args])  # fmt: skip


def test_registration_hashing_and_uploads_run_at_the_same_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_files(tmp_path, 100)
    hashed, registering = Counter(), Counter()
    seen: dict[str, bool] = {}
    real_read, real_put_files, real_put_bundle = (
        hashing.read_whole, ApiClient.put_files, ApiClient.put_bundle
    )  # fmt: skip

    def read_whole(entry: FileEntry) -> bytes:
        hashed.add()
        return real_read(entry)

    def put_files(self: ApiClient, records: list[dict[str, Any]], scan: Any = None) -> Any:
        registering.add()
        if registering.value == 1:
            # While the first batch is being registered, a second registration starts
            # and later batches are hashed: nothing waits for this request.
            seen["second registration"] = registering.wait_for(2)
            seen["three batches hashed"] = hashed.wait_for(30)
        return real_put_files(self, records, scan)

    def put_bundle(self: ApiClient, *args: Any, **kwargs: Any) -> Any:
        if "registration during upload" not in seen:
            already = registering.value
            seen["registration during upload"] = registering.wait_for(already + 1)
        return real_put_bundle(self, *args, **kwargs)

    monkeypatch.setattr(pipeline, "read_whole", read_whole)
    monkeypatch.setattr(ApiClient, "put_files", put_files)
    monkeypatch.setattr(ApiClient, "put_bundle", put_bundle)
    with fake_server() as server:
        assert ppclient(server.url, str(tmp_path), "--batch-size", "10",
                        "--bundle-files", "5") == 0  # fmt: skip
        assert all(r["has_file_content"] for r in server.files("h1").values())
    assert seen == {
        "second registration": True,
        "three batches hashed": True,
        "registration during upload": True,
    }


def record_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths whose bytes the run reads (to hash them), in the order read."""
    read: list[str] = []
    real_read, real_hash = hashing.read_whole, hashing.hash_entry

    def read_whole(entry: FileEntry) -> bytes:
        read.append(entry.path)
        return real_read(entry)

    def hash_entry(entry: FileEntry, *args: Any) -> str:
        read.append(entry.path)
        return real_hash(entry, *args)

    monkeypatch.setattr(pipeline, "read_whole", read_whole)
    monkeypatch.setattr(pipeline, "hash_entry", hash_entry)
    return read


def cached_run(url: str, cache: Path, *args: str) -> int:
    return main(["--url", url, "--api-key", KEY, "--no-progress", "--hostname", "h1",
                 "--cache-file", str(cache), "--batch-size", "10", *args])  # fmt: skip


def test_a_run_reads_only_the_files_the_cache_does_not_know(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first run (an empty cache) reads every file once; the next, after one file is
    added to the directory, reads that one only: the others' hashes come from the cache
    (a first run skips asking it, and must not make later runs skip it too)."""
    tree, cache = tmp_path / "tree", tmp_path / "cache.sqlite3"
    tree.mkdir()
    make_files(tree, 30)
    read = record_reads(monkeypatch)
    with fake_server() as server:
        assert cached_run(server.url, cache, str(tree)) == 0
        assert sorted(read) == sorted(str(path) for path in tree.iterdir())
        read.clear()
        (tree / "new").write_bytes(b"new content")
        assert cached_run(server.url, cache, str(tree)) == 0
        assert read == [str(tree / "new")]
        assert len(server.files("h1")) == 31


def test_a_first_run_reads_a_hard_linked_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first run asks the cache only about files with other hard links: one met again
    thirty batches later, under another name, is found hashed and not read again."""
    tree, cache = tmp_path / "tree", tmp_path / "cache.sqlite3"
    tree.mkdir()
    make_files(tree, 300)
    os.link(tree / "f0000", tree / "z-link")  # named last: its batch is the last
    read = record_reads(monkeypatch)
    with fake_server() as server:
        assert cached_run(server.url, cache, str(tree)) == 0
        files = server.files("h1")
    assert str(tree / "z-link") not in read
    assert len(read) == 300
    assert files[str(tree / "z-link")]["sha256"] == files[str(tree / "f0000")]["sha256"]


def test_a_first_run_over_nested_roots_reads_each_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ppclient tree/sub tree`` meets sub's files twice: a first run asks the cache
    about each file then, as any run does, and the second time finds them hashed."""
    tree, cache = tmp_path / "tree", tmp_path / "cache.sqlite3"
    (tree / "sub").mkdir(parents=True)
    make_files(tree / "sub", 10)
    make_files(tree, 200)  # twenty batches between sub's two turns
    read = record_reads(monkeypatch)
    with fake_server() as server:
        assert cached_run(server.url, cache, str(tree / "sub"), str(tree)) == 0
        assert len(server.files("h1")) == 210
    assert sorted(read) == sorted(str(p) for p in tree.rglob("f*"))


def test_a_stalled_server_does_not_let_the_walk_run_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_files(tmp_path, 400)
    walked = Counter()
    release = threading.Event()
    real_start, real_put_files = pipeline.Run._start_hashing, ApiClient.put_files

    def counting_start(self: pipeline.Run, root: str, batch: list[FileEntry], *rest: Any) -> Any:
        walked.add(len(batch))  # the walk cut this batch
        return real_start(self, root, batch, *rest)

    def stalled(self: ApiClient, records: list[dict[str, Any]], scan: Any = None) -> Any:
        release.wait(WAIT)
        return real_put_files(self, records, scan)

    monkeypatch.setattr(pipeline.Run, "_start_hashing", counting_start)
    monkeypatch.setattr(ApiClient, "put_files", stalled)
    with fake_server() as server:
        done = threading.Thread(target=ppclient, args=(server.url, str(tmp_path),
                                "--batch-size", "10"))  # fmt: skip
        done.start()
        walked.wait_for(400, timeout=1.0)  # as far as it gets in a second
        ahead = walked.value
        release.set()
        done.join(WAIT * 2)
    # Registering (2 batches), hashing (3) and the walk's queue (2, plus the batch being
    # cut) hold about 8 batches; the rest of the tree waits.
    assert ahead <= 10 * (
        pipeline.REGISTER_IN_FLIGHT + pipeline.HASH_AHEAD + 1 + pipeline.WALK_AHEAD + 1
    )
    assert walked.value == 400


def test_the_first_batch_reaches_the_server_while_the_walk_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small files are hashed as they are walked, so their batch is registered at once:
    the server starts on it while the client still walks (it used to wait until the
    walk had filled the hashing look-ahead, three batches on)."""
    make_files(tmp_path, 40)
    registering = threading.Event()
    seen_while_walking: list[bool] = []
    real_start, real_put_files = pipeline.Run._start_hashing, ApiClient.put_files
    started = Counter()

    def slow_third(self: pipeline.Run, root: str, batch: list[FileEntry], *rest: Any) -> Any:
        started.add()
        if started.value == 3:  # the walk stays on its third batch until the first is sent
            seen_while_walking.append(registering.wait(WAIT / 2))
        return real_start(self, root, batch, *rest)

    def noticed(self: ApiClient, records: list[dict[str, Any]], scan: Any = None) -> Any:
        registering.set()
        return real_put_files(self, records, scan)

    monkeypatch.setattr(pipeline.Run, "_start_hashing", slow_third)
    monkeypatch.setattr(ApiClient, "put_files", noticed)
    with fake_server() as server:
        assert ppclient(server.url, str(tmp_path), "--batch-size", "10") == 0
        assert len(server.files("h1")) == 40
    assert seen_while_walking == [True]


def test_a_run_whose_scan_is_refused_ends_with_its_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk starts while the scans open; when opening one fails (here a key the
    server refuses), the run stops the walk and waits for it before it returns, so
    nothing reads files or writes the cache after the run has reported."""
    make_files(tmp_path, 40)
    walking = threading.Event()
    real_start = pipeline.Run._start_hashing

    def slow(self: pipeline.Run, root: str, batch: list[FileEntry], *rest: Any) -> Any:
        walking.set()
        time.sleep(0.2)  # a walk still going when the scan is refused
        return real_start(self, root, batch, *rest)

    def refused(self: ApiClient, hostname: str, root: str, excludes: list[str]) -> str:
        assert walking.wait(WAIT)
        raise AuthError(401, "Invalid API key")

    monkeypatch.setattr(pipeline.Run, "_start_hashing", slow)
    monkeypatch.setattr(ApiClient, "open_scan", refused)
    with fake_server() as server:
        assert ppclient(server.url, str(tmp_path), "--batch-size", "5") != 0
        walkers = [t for t in threading.enumerate() if t.name == "walk" and t.is_alive()]
        assert walkers == []
        assert not server.files("h1")  # nothing registered without its scan


def test_a_batch_too_large_for_the_server_is_split_until_it_fits(tmp_path: Path) -> None:
    make_files(tmp_path, 23)
    with fake_server(settings={"max_batch_records": 4}) as server:
        assert ppclient(server.url, str(tmp_path), "--batch-size", "10") == 0
        stored = server.files("h1")
        assert len(stored) == 23
        assert all(r["has_file_content"] for r in stored.values())
        sizes = [len(r.json()["files"]) for r in server.requests if r.path == "/put_files"]
        assert max(sizes) == 10  # tried whole first
        accepted = [r for r in server.requests if r.path == "/put_files" and r.status == 200]
        assert sum(len(r.json()["files"]) for r in accepted) == 23


def test_a_refused_batch_size_is_not_tried_again(tmp_path: Path) -> None:
    """After a 413 the client sends no batch that large again: only the batches already
    on their way (two registrations in flight) are refused, not every one of the run."""
    make_files(tmp_path, 100)
    with fake_server(settings={"max_batch_records": 10}) as server:
        assert ppclient(server.url, str(tmp_path), "--batch-size", "20") == 0
        assert len(server.files("h1")) == 100
    refused = [r for r in server.requests if r.path == "/put_files" and r.status == 413]
    assert 1 <= len(refused) <= pipeline.REGISTER_IN_FLIGHT  # of the 5 batches of 20


@pytest.mark.parametrize("answer", [b'{"results": []}', b'{"results": [{"index": 0}]}'])
def test_a_batch_answer_that_does_not_answer_each_record_is_an_error_of_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], answer: bytes
) -> None:
    make_files(tmp_path, 3)  # one batch; the answer has no result, or one without "ok"
    with fake_server(script={"/put_files": [answer]}) as server:
        assert ppclient(server.url, str(tmp_path)) == 1
        assert capsys.readouterr().err.count("not registered: not a batch answer") == 3
        assert ppclient(server.url, str(tmp_path)) == 0
        assert len(server.files("h1")) == 3


@pytest.mark.parametrize(
    ("mtime", "ctime"),
    [
        (1.7e9 + 0.1, 1.7e9 + 0.1),
        (1.7e9 + 0.1, 1.7e9 + 0.25),
        (0.0, -0.0),
        (-0.0, 0.0),
        (1e16, 1e16),
    ],
)
def test_fingerprints_keep_the_form_caches_already_hold(mtime: float, ctime: float) -> None:
    """The local caches of every client hold fingerprints in this form: another would
    make each client send all its metadata again."""
    record = {
        "sha256": "ab" * 32, "file_size": 12, "file_mode": 0o100644, "file_uid": 1000,
        "file_gid": 100, "file_mtime": mtime, "file_ctime": ctime, "link_target": None,
        "ip_address": "192.0.2.1",
    }  # fmt: skip
    expected = f"{'ab' * 32}|12|33188|1000|100|{mtime!r}|{ctime!r}|None|192.0.2.1"
    assert pipeline.fingerprint(record) == expected


@given(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.floats(min_value=1e-4, max_value=1e16),
        st.floats(min_value=-1e16, max_value=-1e-4),
        st.integers(min_value=0, max_value=4 * 10**18).map(lambda ns: ns / 1e9),
        st.sampled_from(
            [
                1e-4,
                math.nextafter(1e-4, 0),
                1e16,
                math.nextafter(1e16, 0),
                -1e-4,
                0.1,
                1.0,
                123456789.0,
                1.7e9 + 0.1,
            ]
        ),
    )
)
def test_times_are_shown_as_repr_shows_them(value: float) -> None:
    """Fingerprints held by caches show times as ``repr``: the faster form must match it
    for every float, a file time's (seconds with nanoseconds) above all."""
    assert pipeline.shown_time(value) == repr(value)


def test_a_time_of_a_float_subclass_is_shown_as_repr_shows_it() -> None:
    class Seconds(float):
        pass

    assert pipeline.shown_time(Seconds(1.7e9 + 0.1)) == repr(1.7e9 + 0.1)


def reads_by_thread(
    monkeypatch: pytest.MonkeyPatch, seconds_per_read: float
) -> tuple[list[str], list[int]]:
    """The threads that read small files whole, in the order read, and the largest number
    of reads under way at once; each read takes at least *seconds_per_read* (a disk)."""
    threads: list[str] = []
    most = [0]
    now = [0]
    lock = threading.Lock()
    real_read = hashing.read_whole

    def read_whole(entry: FileEntry) -> bytes:
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
            threads.append(threading.current_thread().name)
        try:
            time.sleep(seconds_per_read)
            return real_read(entry)
        finally:
            with lock:
                now[0] -= 1

    monkeypatch.setattr(pipeline, "read_whole", read_whole)
    return threads, most


def ingest_with_slow_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cached: bool | None
) -> tuple[list[str], list[int]]:
    """A first ingest of 600 small files, each read taking 2 ms, the page cache saying
    *cached* of every file; as :func:`reads_by_thread`."""
    make_files(tmp_path, 600)
    monkeypatch.setattr(pipeline, "in_page_cache", lambda entry: cached)
    threads, most = reads_by_thread(monkeypatch, 0.002)
    with fake_server() as server:
        assert ppclient(server.url, str(tmp_path)) == 0
        assert len(server.files("h1")) == 600
        assert all(r["has_file_content"] for r in server.files("h1").values())
    return threads, most


def test_small_files_not_in_the_page_cache_are_read_several_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Files that are not in the page cache (a host's first ingest after a reboot) wait on
    # the disk: the walking thread alone would wait for each in turn.
    threads, most = ingest_with_slow_reads(tmp_path, monkeypatch, cached=False)
    assert most[0] >= 2
    assert all(name.startswith("hash") for name in threads)


def test_small_files_in_the_page_cache_are_read_by_the_walking_thread_however_long_it_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A read of a cached file that takes long has waited for the GIL, which the run's
    # other threads hold: handing it to more threads would only make more of them wait.
    threads, _ = ingest_with_slow_reads(tmp_path, monkeypatch, cached=True)
    assert threads == ["walk"] * 600


def test_small_files_slow_to_read_go_to_the_pool_where_the_os_cannot_tell_if_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads, most = ingest_with_slow_reads(tmp_path, monkeypatch, cached=None)
    assert most[0] >= 2
    handed = next(i for i, name in enumerate(threads) if name.startswith("hash"))
    assert threads[:handed] == ["walk"] * handed  # until it had timed a few chunks
    # Still a chunk now and then read by the walking thread, to see when reads get fast.
    assert "walk" in threads[handed:]


def test_small_reads_timed_go_back_to_the_walking_thread_once_fast_again() -> None:
    # Timed here rather than end to end: in the test process the fake server's threads
    # share the interpreter lock with the client's, and waiting for it slows every read.
    reads = pipeline._SmallReads(probe=lambda entry: None)
    chunk = [FileEntry("/x", os.stat_result((0o100644, 1, 1, 1, 0, 0, 10, 0, 0, 0)))]

    def inline() -> bool:
        return reads.inline(chunk)

    for _ in range(3 * reads.WINDOW):  # from the page cache: all read here
        assert inline()
        reads.took(0.00032, 32)
    reads.took(0.032, 32)  # one slow chunk among fast ones changes nothing
    assert inline()
    for _ in range(reads.WINDOW):
        reads.took(0.0032, 32)  # 100 us a file: from the disk
    handed = [inline() for _ in range(2 * reads.SAMPLE_EVERY)]
    assert handed.count(True) == 2  # one chunk in eight still read here
    for _ in range(reads.WINDOW // 2 + 1):
        reads.took(0.00032, 32)  # 10 us a file: from the page cache
    assert all(inline() for _ in range(reads.SAMPLE_EVERY))
