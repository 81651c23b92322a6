"""Small contents travel in bundles (``POST /bundles``); what is counted, stored, retried.

The stand-in passes every request to the real server (see fake_server.py), so stored,
present and refused below are the real server's answers.
"""

from __future__ import annotations

import gc
import hashlib
import os
import random
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from putplace.client import pipeline
from putplace.client.cancel import Cancelled
from putplace.client.cli import main
from putplace.client.uploader import BUNDLE_CONTENT_TYPE, ApiClient, NotSupportedError
from tests.client.fake_server import CUT, KEY, FakeServer, fake_server, parse_bundle
from tests.client.helpers import counts, ppclient, record

MiB = 1024 * 1024


def small_tree(root: Path, count: int, duplicates: int = 0, seed: int = 3) -> dict[Path, bytes]:
    """*count* files of 100-2000 bytes, the last *duplicates* copying earlier ones."""
    rng = random.Random(seed)
    files: dict[Path, bytes] = {}
    contents: list[bytes] = []
    for i in range(count):
        path = root / f"d{i // 10}" / f"f{i:04d}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if i < count - duplicates:
            data = rng.randbytes(rng.randint(100, 2000))
            contents.append(data)
        else:
            data = contents[i % len(contents)]
        path.write_bytes(data)
        files[path] = data
    return files


def all_stored(server: FakeServer, files: dict[Path, bytes]) -> bool:
    """Every file is recorded by the real server with its content present, byte-exact."""
    stored = server.files("h1")
    return set(stored) == {str(p) for p in files} and all(
        stored[str(p)]["has_file_content"] and server.content(stored[str(p)]["sha256"]) == data
        for p, data in files.items()
    )


def test_small_files_go_in_bundles_within_their_limits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = small_tree(tmp_path, 60, duplicates=10)
    with fake_server() as server:
        code = ppclient(server.url, str(tmp_path), "--bundle-files", "20", "--bundle-bytes", "16K")
        assert code == 0
        assert all_stored(server, files)
    bundles = [parse_bundle(r.body) for r in server.requests if r.path == "/bundles"]
    assert server.count("/blobs") == 0
    assert sum(len(b) for b in bundles) == 50  # each distinct content once
    assert all(len(b) <= 20 and sum(len(d) for _, d in b) <= 16 * 1024 for b in bundles)
    assert len(bundles) < 50 / 2  # many contents per request
    assert {u.status for u in server.uploads} == {"stored"}
    summary = counts(capsys.readouterr().out)
    assert (summary["Content uploaded (files)"], summary["Content already on server"]) == (50, 10)
    assert summary["Bytes uploaded"] == len(b"".join(set(files.values())))


def test_bundle_body_is_framed_as_documented(tmp_path: Path) -> None:
    members = [(hashlib.sha256(d).hexdigest(), d) for d in (b"first", b"", b"third" * 100)]
    progress: list[int] = []
    with fake_server() as server:
        api = ApiClient(server.url, KEY)
        api.put_files([record(d, f"/m{i}") for i, (_, d) in enumerate(members)])
        results = api.put_bundle(members, progress.append)
        again = api.put_bundle(members)
    (request, _) = [r for r in server.requests if r.path == "/bundles"]
    body = request.body
    assert body[:8] == b"PPBNDL01"
    assert struct.unpack(">I", body[8:12]) == (3,)
    entries = [struct.unpack(">32sQ", body[12 + 40 * i : 52 + 40 * i]) for i in range(3)]
    assert entries == [(bytes.fromhex(sha), len(data)) for sha, data in members]
    assert body[132:] == b"".join(data for _, data in members)
    assert request.headers["Content-Type"] == BUNDLE_CONTENT_TYPE
    assert request.headers["Content-Length"] == str(len(body))  # not chunked
    assert sum(progress) == len(body) - 132
    assert [r["status"] for r in results] == ["stored"] * 3
    assert [r["status"] for r in again] == ["present"] * 3
    assert [r["sha256"] for r in results] == [sha for sha, _ in members]


def test_answered_requests_are_freed_without_the_garbage_collector() -> None:
    """A batch's records and a bundle's bytes are let go the moment they are answered,
    not left in reference cycles for the collector: a first ingest sends tens of MiB of
    them, and the collector runs rarely."""
    members = [(hashlib.sha256(d).hexdigest(), d) for d in (b"one" * 1000, b"two" * 1000)]
    with fake_server() as server:
        api = ApiClient(server.url, KEY)
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds is kept in gc.garbage
        try:
            api.put_files([record(d, f"/g{i}") for i, (_, d) in enumerate(members)])
            api.put_bundle(members)
            gc.collect()
            requests = [o for o in gc.garbage if isinstance(o, httpx.Request)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
    # The stand-in forwards to the real server with httpx too: only the client's count.
    assert [r for r in requests if str(r.url).startswith(server.url)] == []


def test_put_bundle_on_a_server_without_it_raises_not_supported() -> None:
    with fake_server(bundles=False) as server, pytest.raises(NotSupportedError):
        ApiClient(server.url, KEY).put_bundle([(hashlib.sha256(b"x").hexdigest(), b"x")])


def test_refused_member_is_an_error_and_the_others_are_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    files = small_tree(tmp_path, 12)
    victim = sorted(files)[5]
    # Nothing kept from hashing: the bundle reads the files again, after the victim was
    # rewritten in place (same size and mtime), so its bytes no longer match its hash.
    monkeypatch.setattr(pipeline, "KEEP_BUDGET", 0)
    real_put_files = ApiClient.put_files

    def register_then_rewrite(
        self: ApiClient, records: list[dict[str, Any]], scan: Any = None
    ) -> Any:
        answers = real_put_files(self, records, scan)
        before = os.stat(victim)
        victim.write_bytes(bytes(b ^ 0xFF for b in files[victim]))
        os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
        return answers

    monkeypatch.setattr(ApiClient, "put_files", register_then_rewrite)
    cache = str(tmp_path.parent / "cache.db")
    args = ("--cache-file", cache, "--no-progress", str(tmp_path))
    with fake_server() as server:
        assert main(["--url", server.url, "--api-key", KEY, "--hostname", "h1", *args]) == 1
        stored = server.files("h1")
        captured = capsys.readouterr()
        assert f"{victim}: upload failed: refused: content hashes to" in captured.err
        assert counts(captured.out)["Errors"] == 1
        assert [u.status for u in server.uploads].count("refused") == 1
        assert not stored[str(victim)]["has_file_content"]
        assert all(stored[str(p)]["has_file_content"] for p in files if p != victim)
        # The others are in the cache as sent; the victim (its ctime changed) is sent again.
        monkeypatch.setattr(ApiClient, "put_files", real_put_files)
        assert main(["--url", server.url, "--api-key", KEY, "--hostname", "h1", *args]) == 0
        second = counts(capsys.readouterr().out)
        assert (second["Unchanged since last run (not re-sent)"], second["New metadata sent"]) == (
            11, 1
        )  # fmt: skip
        assert server.files("h1")[str(victim)]["has_file_content"]


@pytest.mark.parametrize("workers", [1, 4])
def test_without_bundles_endpoint_the_run_falls_back_to_put_blobs(
    tmp_path: Path, workers: int
) -> None:
    files = small_tree(tmp_path, 40)
    with fake_server(bundles=False) as server:
        assert ppclient(server.url, str(tmp_path), "--batch-size", "10", "--bundle-files",
                        "5", "--upload-workers", str(workers)) == 0  # fmt: skip
        assert all_stored(server, files)
    # Learnt from the first 404: only bundles already on their way are tried.
    assert 1 <= server.count("/bundles") <= workers
    assert server.count("/blobs") == 40
    assert all(r.status == 404 for r in server.requests if r.path == "/bundles")


def test_bundle_cut_short_is_sent_again_and_everything_is_stored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = small_tree(tmp_path, 30)
    with fake_server(script={"/bundles": [CUT]}) as server:
        assert ppclient(server.url, str(tmp_path)) == 0
        assert all_stored(server, files)
    first, second = [r for r in server.requests if r.path == "/bundles"]
    assert (first.status, second.status) == (None, 200)  # no answer, then the retry
    assert first.body == second.body
    statuses = [u.status for u in server.uploads if u.via == "bundles"][len(files) :]
    # What arrived whole before the cut was kept by the server: "present" on the retry.
    assert 0 < statuses.count("present") < len(files)
    assert statuses.count("stored") + statuses.count("present") == len(files)
    summary = counts(capsys.readouterr().out)
    assert summary["Errors"] == 0


def test_bundle_too_large_for_the_server_is_split(tmp_path: Path) -> None:
    files = small_tree(tmp_path, 16)
    with fake_server(script={"/bundles": [413]}) as server:
        assert ppclient(server.url, str(tmp_path)) == 0
        assert all_stored(server, files)
    sizes = [(len(parse_bundle(r.body)), r.status) for r in server.requests if r.path == "/bundles"]
    assert sizes == [(16, 413), (8, 200), (8, 200)]


@pytest.mark.parametrize(
    "answer",
    [b"not JSON", b'{"detail": "no results"}', b'{"results": null}', b'{"results": [1]}',
     b'{"results": []}', b'{"results": {"sha256": "ab"}}'],
)  # fmt: skip
def test_an_answer_that_is_not_a_bundle_answer_fails_its_members_not_the_client(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], answer: bytes
) -> None:
    files = small_tree(tmp_path, 12)
    with fake_server(script={"/bundles": [answer]}) as server:  # the real server stored them
        assert ppclient(server.url, str(tmp_path)) == 1
        captured = capsys.readouterr()
        assert captured.err.count("upload failed: not a batch answer") == len(files)
        assert counts(captured.out)["Errors"] == len(files)
        assert ppclient(server.url, str(tmp_path)) == 0  # the next run sends them
        assert all_stored(server, files)


def test_files_above_the_threshold_are_sent_alone(tmp_path: Path) -> None:
    files = {
        tmp_path / "at-threshold": b"a" * MiB,
        tmp_path / "over-threshold": b"b" * (MiB + 1),
        tmp_path / "small": b"c" * 10,
    }
    for path, data in files.items():
        path.write_bytes(data)
    with fake_server() as server:
        assert ppclient(server.url, str(tmp_path)) == 0
        assert all_stored(server, files)
    assert {(u.via, len(u.content)) for u in server.uploads} == {
        ("bundles", MiB), ("bundles", 10), ("blobs", MiB + 1)
    }  # fmt: skip
    with fake_server() as server:
        assert ppclient(server.url, str(tmp_path), "--bundle-threshold", "0") == 0
        assert all_stored(server, files)
    assert {u.via for u in server.uploads} == {"blobs"}


def test_every_byte_kept_for_a_bundle_is_released_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes read while hashing are kept against a budget until their bundle is sent, or
    freed at once for a copy of content already going up (a file over the threshold is
    not kept at all). A leak would leave later files to be read twice; a double release
    would let the client keep more than its budget."""
    budgets: list[pipeline._Budget] = []

    class Recorded(pipeline._Budget):
        def __init__(self, limit: int, stop: threading.Event) -> None:
            super().__init__(limit, stop)
            budgets.append(self)

    monkeypatch.setattr(pipeline, "_Budget", Recorded)
    files = small_tree(tmp_path, 120, duplicates=30)  # copies in the same batches
    (tmp_path / "alone").write_bytes(os.urandom(MiB // 2))  # over the threshold below
    with fake_server() as server:
        args = ("--bundle-files", "16", "--bundle-threshold", "256K", "--batch-size", "40")
        assert ppclient(server.url, str(tmp_path), *args) == 0
        assert all_stored(server, {**files, tmp_path / "alone": (tmp_path / "alone").read_bytes()})
    assert {u.via for u in server.uploads} == {"bundles", "blobs"}
    assert [budget._left for budget in budgets] == [pipeline.KEEP_BUDGET]


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Paths read by the run, once per read (kept whole, hashed apart, or read to send)."""
    reads: Counter[str] = Counter()

    def counted(read: Callable[..., Any]) -> Callable[..., Any]:
        def reading(entry: Any, *args: Any) -> Any:
            reads[entry.path] += 1
            return read(entry, *args)

        return reading

    monkeypatch.setattr(pipeline, "read_whole", counted(pipeline.read_whole))
    monkeypatch.setattr(pipeline, "hash_entry", counted(pipeline.hash_entry))
    return reads


def test_a_full_budget_waits_for_bundles_being_sent_rather_than_reading_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Uploads slower than the walk: hashing waits for the bundles on their way to give
    their kept bytes back, and every file is read once, not hashed now and read again to
    be sent (about 10,000 of 100,000 files in a first ingest did). The budget is more
    than a filling bundle and the batches between the walk and registration can hold
    (7 and 25 files of at most 2,000 bytes), so only the tasks giving bytes back can
    fill it: 16 bundles of 8 files sent or waiting to be (about 130 KiB)."""
    monkeypatch.setattr(pipeline, "KEEP_BUDGET", 96 * 1024)
    reads = _count_reads(monkeypatch)
    real_put_bundle = ApiClient.put_bundle

    def slow_put_bundle(self: ApiClient, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.3)
        return real_put_bundle(self, *args, **kwargs)

    monkeypatch.setattr(ApiClient, "put_bundle", slow_put_bundle)
    files = small_tree(tmp_path, 200)
    with fake_server() as server:
        args = ("--bundle-files", "8", "--batch-size", "5", "--upload-workers", "8")
        assert ppclient(server.url, str(tmp_path), *args) == 0
        assert all_stored(server, files)
    assert {u.via for u in server.uploads} == {"bundles"}
    assert reads == Counter(str(path) for path in files)


@pytest.mark.timeout(30)
def test_a_hasher_waiting_for_room_gets_it_when_given_back_and_stops_with_the_run() -> None:
    stop = threading.Event()
    budget = pipeline._Budget(10, stop)
    assert budget.take(8)
    budget.returning(1)  # a bundle holding those 8 bytes is being sent
    outcome: list[object] = []

    def hasher() -> None:
        try:
            outcome.append(budget.take(5))
        except Cancelled as exc:
            outcome.append(exc)

    waiting = threading.Thread(target=hasher)
    waiting.start()
    waiting.join(0.3)
    assert waiting.is_alive()  # no room yet: it waits
    budget.give(8)
    budget.returning(-1)
    waiting.join()
    assert outcome == [True]

    budget.returning(1)
    assert budget.take(5)  # room for 5 more, then none
    waiting = threading.Thread(target=hasher)
    waiting.start()
    stop.set()  # Ctrl-C: the waiting hasher gives up
    waiting.join()
    assert isinstance(outcome[-1], Cancelled)


@pytest.mark.timeout(60)
def test_a_full_budget_with_no_bundle_being_sent_does_not_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kept bytes that fill the budget while their bundle is still filling would never be
    given back to a hasher that waited for them: it reads on without keeping (and the
    file is read again when its bundle goes)."""
    monkeypatch.setattr(pipeline, "KEEP_BUDGET", 8 * 1024)
    reads = _count_reads(monkeypatch)
    files = small_tree(tmp_path, 60)
    with fake_server() as server:  # one bundle, sent at the end
        assert ppclient(server.url, str(tmp_path), "--bundle-files", "1000") == 0
        assert all_stored(server, files)
    assert len(server.uploads) == len(files)
    assert max(reads.values()) == 2  # those that did not fit: hashed, then read to be sent


@pytest.mark.parametrize("status", [401, 403])
def test_bundle_with_a_refused_key_stops_the_run(
    tmp_path: Path, status: int, capsys: pytest.CaptureFixture[str]
) -> None:
    small_tree(tmp_path, 200)
    with fake_server(script={"/bundles": [status]}) as server:
        assert ppclient(server.url, str(tmp_path), "--bundle-files", "5") == 2
    # 40 bundles to send; only those already handed to the 4 upload workers (at most
    # twice as many) are sent after the refusal.
    assert server.count("/bundles") <= 8
    captured = capsys.readouterr()
    assert f"refused the API key (HTTP {status})" in captured.err
    assert "Stopped:" in captured.out


def test_ctrl_c_while_bundles_are_in_flight_exits_130(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    small_tree(tmp_path, 30)
    started = threading.Event()

    def interrupted(self: ApiClient, *args: object, **kwargs: object) -> object:
        started.set()
        raise KeyboardInterrupt

    monkeypatch.setattr(ApiClient, "put_bundle", interrupted)
    with fake_server() as server:
        assert ppclient(server.url, str(tmp_path)) == 130
    assert started.is_set()
    assert "Interrupted; summary so far:" in capsys.readouterr().out
