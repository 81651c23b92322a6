"""Whole runs (dry runs: no server needed): what is reported, counted and returned."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from putplace.client import hashing, pipeline
from putplace.client.cache import ClientCache
from putplace.client.cli import main
from putplace.client.scanner import FileEntry, Listing
from tests.client.helpers import counts


def dry_run(*args: str) -> int:
    return main(["--dry-run", "--no-progress", "--no-cache", *args])


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "d").mkdir(parents=True)
    for name in ("a", "d/b", "d/c"):
        (root / name).write_text(name)
    return root


def test_clean_run_exits_0_and_prints_only_the_summary(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert dry_run(str(tree)) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # no progress bar when stderr is not a terminal
    summary = counts(captured.out)
    assert (
        summary["Files seen"],
        summary["Errors"],
        summary["Skipped (sockets, FIFOs, devices)"],
    ) == (3, 0, 0)


def test_file_whose_open_fails_is_reported_and_the_run_carries_on(
    tree: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = hashing.open_nofollow

    def refuse(entry: FileEntry) -> int:
        if entry.path.endswith("/d/b"):
            raise PermissionError(13, "Permission denied", entry.path)
        return real_open(entry)

    monkeypatch.setattr(hashing, "open_nofollow", refuse)
    assert dry_run(str(tree)) == 1
    captured = capsys.readouterr()
    assert f"{tree}/d/b: Permission denied" in captured.err
    summary = counts(captured.out)
    assert (summary["Files seen"], summary["Errors"]) == (3, 1)


def test_file_that_vanishes_after_the_scan_is_an_error(
    tree: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_walk = pipeline.walk_listings

    def walk_then_delete(*args: Any, **kwargs: Any) -> Iterator[Listing]:
        for listing in real_walk(*args, **kwargs):
            for entry in listing.entries:
                if entry.path.endswith("/a"):
                    os.unlink(entry.path)
            yield listing

    monkeypatch.setattr(pipeline, "walk_listings", walk_then_delete)
    assert dry_run(str(tree)) == 1
    assert f"{tree}/a: No such file or directory" in capsys.readouterr().err


def test_file_changed_since_the_scan_is_an_error(
    tree: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_walk = pipeline.walk_listings

    def walk_then_modify(*args: Any, **kwargs: Any) -> Iterator[Listing]:
        for listing in real_walk(*args, **kwargs):
            for entry in listing.entries:
                if entry.path.endswith("/c"):
                    Path(entry.path).write_text("modified after the scan")
            yield listing

    monkeypatch.setattr(pipeline, "walk_listings", walk_then_modify)
    assert dry_run(str(tree)) == 1
    assert f"{tree}/d/c: changed while being read" in capsys.readouterr().err


def test_special_files_are_skipped_and_named_with_verbose(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.mkfifo(tree / "fifo")
    os.mkfifo(tree / "red\x1b[31m\nfifo")  # shown escaped, never colouring the terminal
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tree / "sock"))
        assert dry_run(str(tree)) == 0
        quiet = capsys.readouterr()
        assert dry_run("--verbose", str(tree)) == 0
        loud = capsys.readouterr()
    assert "fifo" not in quiet.err
    assert f"skipped FIFO: {tree}/fifo" in loud.err
    assert f"skipped socket: {tree}/sock" in loud.err
    assert f"skipped FIFO: {tree}/red\\x1b[31m\\nfifo" in loud.err
    assert "\x1b" not in loud.err
    assert counts(loud.out)["Skipped (sockets, FIFOs, devices)"] == 3


def test_single_files_and_excludes(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert dry_run(str(tree / "a"), "--path", str(tree / "d" / "b")) == 0
    assert counts(capsys.readouterr().out)["Files seen"] == 2
    assert dry_run(str(tree), "--exclude", "d/") == 0
    assert counts(capsys.readouterr().out)["Files seen"] == 1


def test_missing_path_is_an_error(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert dry_run(str(tree / "nope"), str(tree / "no\x1b[2Jpe\rX"), str(tree)) == 1
    captured = capsys.readouterr()
    assert "nope: No such file or directory" in captured.err
    assert "no\\x1b[2Jpe\\rX: No such file or directory" in captured.err  # shown literally
    assert "\x1b" not in captured.err
    assert counts(captured.out)["Files seen"] == 3


def test_ctrl_c_prints_the_summary_so_far_and_exits_130(
    tree: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupt(entry: FileEntry, stop: object = None) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "hash_entry", interrupt)
    assert dry_run(str(tree)) == 130
    assert "Interrupted; summary so far:" in capsys.readouterr().out


def test_a_run_on_a_cache_another_run_is_using_exits_2_at_once(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache.db"
    other_run = ClientCache(cache)
    args = ["--dry-run", "--no-progress", "--cache-file", str(cache), str(tree)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == (
        f"ppclient: another ppclient run is using the cache {cache}: wait for it to finish, "
        "or give this run a --cache-file of its own\n"
    )
    other_run.close()
    assert main(args) == 0
