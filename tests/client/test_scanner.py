"""Walking trees: what is found, what is skipped, what is reported."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from putplace.client.scanner import walk


def scan(root: Path, *excludes: str) -> tuple[list[str], list[str], list[str]]:
    errors: list[str] = []
    skipped: list[str] = []
    found = [
        os.path.relpath(e.path, root)
        for e in walk(
            [str(root)],
            excludes,
            on_error=lambda p, m: errors.append(p),
            on_skip=lambda p, k: skipped.append(f"{os.path.relpath(p, root)}:{k}"),
        )
    ]
    return found, skipped, errors


def test_excludes_are_gitignore_style(tmp_path: Path) -> None:
    for name in ("keep.txt", "app.log", ".git/HEAD", "build/x.o", "src/build/y.o", "src/a.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    (tmp_path / "buildfile").write_text("not a dir")
    found, _, _ = scan(tmp_path, ".git", "*.log", "build/")
    assert sorted(found) == ["buildfile", "keep.txt", "src/a.py"]


def test_symlinks_recorded_not_followed(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_text("x")
    (tmp_path / "dirlink").symlink_to("real", target_is_directory=True)
    (tmp_path / "filelink").symlink_to("real/f")
    (tmp_path / "dangling").symlink_to("nowhere")
    found, _, errors = scan(tmp_path)
    assert sorted(found) == ["dangling", "dirlink", "filelink", "real/f"]  # no dirlink/f
    assert errors == []
    entries = {os.path.basename(e.path): e for e in walk(
        [str(tmp_path)], on_error=lambda p, m: None, on_skip=lambda p, k: None
    )}  # fmt: skip
    assert entries["dirlink"].is_symlink
    assert (entries["dirlink"].link_target, entries["dangling"].link_target) == ("real", "nowhere")
    assert entries["f"].link_target is None
    assert not entries["f"].is_symlink


def test_excludes_are_relative_to_the_scanned_root(tmp_path: Path) -> None:
    root = tmp_path / "build" / "project"
    (root / "build").mkdir(parents=True)
    (root / "build" / "out.o").write_text("o")
    (root / "main.c").write_text("c")
    found, _, _ = scan(root, "build/")
    assert found == ["main.c"]  # the root's own ancestors named build/ do not count


def test_symlink_given_as_root_is_recorded_not_followed(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_text("x")
    (tmp_path / "link").symlink_to("real")
    found = list(walk([str(tmp_path / "link")], on_error=print, on_skip=print))
    assert [(e.path, e.link_target) for e in found] == [(str(tmp_path / "link"), "real")]


def test_special_files_skipped(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock"))
        found, skipped, _ = scan(tmp_path)
    assert found == []
    assert sorted(skipped) == ["fifo:FIFO", "sock:socket"]


def test_single_file_root_and_missing_root(tmp_path: Path) -> None:
    (tmp_path / "one").write_text("1")
    errors: list[str] = []
    roots = [str(tmp_path / "one"), str(tmp_path / "missing")]
    found = list(walk(roots, on_error=lambda p, m: errors.append(m), on_skip=lambda p, k: None))
    assert [e.path for e in found] == [str(tmp_path / "one")]
    assert errors == ["No such file or directory"]


def test_deep_trees_do_not_recurse(tmp_path: Path) -> None:
    path = tmp_path
    for i in range(300):
        path = path / f"d{i}"
    path.mkdir(parents=True)
    (path / "leaf").write_text("deep")
    found, _, _ = scan(tmp_path)
    assert len(found) == 1
