"""Walking directory trees: regular files and symlinks, with gitignore-style excludes.

Symlinked directories are recorded as symlinks and never followed. Sockets, FIFOs and
devices are skipped. Problems (unreadable directories, vanished entries) are reported to
``on_error`` and the walk carries on.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pathspec


@dataclass(frozen=True, slots=True)
class Entry:
    """A file or symlink found by the walk, with its ``lstat`` data."""

    path: str
    stat: os.stat_result

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.stat.st_mode)


ErrorHandler = Callable[[str, str], None]
SkipHandler = Callable[[str, str], None]


def excluder(patterns: Iterable[str]) -> Callable[[str, bool], bool]:
    """``excluded(relative_path, is_dir)`` for gitignore-style *patterns*."""
    spec = pathspec.GitIgnoreSpec.from_lines(list(patterns))

    def excluded(relative: str, is_dir: bool) -> bool:
        return spec.match_file(relative + "/" if is_dir else relative)

    return excluded


def walk(
    roots: Iterable[str],
    excludes: Iterable[str] = (),
    *,
    on_error: ErrorHandler,
    on_skip: SkipHandler,
) -> Iterator[Entry]:
    """Yield every regular file and symlink under *roots* (files may be roots too)."""
    excluded = excluder(excludes)
    for root in roots:
        root_path = os.path.abspath(root)
        try:
            root_stat = os.lstat(root_path)
        except OSError as exc:
            on_error(root_path, exc.strerror or str(exc))
            continue
        if not stat.S_ISDIR(root_stat.st_mode):
            entry = _classify(root_path, root_stat, on_skip)
            if entry is not None:
                yield entry
            continue
        yield from _walk_dir(root_path, excluded, on_error, on_skip)


def _classify(path: str, st: os.stat_result, on_skip: SkipHandler) -> Entry | None:
    mode = st.st_mode
    if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
        return Entry(path, st)
    kind = (
        "socket" if stat.S_ISSOCK(mode)
        else "FIFO" if stat.S_ISFIFO(mode)
        else "device" if stat.S_ISBLK(mode) or stat.S_ISCHR(mode)
        else "special file"
    )  # fmt: skip
    on_skip(path, kind)
    return None


def _walk_dir(
    root: str,
    excluded: Callable[[str, bool], bool],
    on_error: ErrorHandler,
    on_skip: SkipHandler,
) -> Iterator[Entry]:
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                children = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            on_error(directory, exc.strerror or str(exc))
            continue
        subdirs = []
        for child in children:
            relative = Path(child.path).relative_to(root).as_posix()
            try:
                is_dir = child.is_dir(follow_symlinks=False)
                if excluded(relative, is_dir):
                    continue
                if is_dir:
                    subdirs.append(child.path)
                    continue
                st = child.stat(follow_symlinks=False)
            except OSError as exc:
                on_error(child.path, exc.strerror or str(exc))
                continue
            entry = _classify(child.path, st, on_skip)
            if entry is not None:
                yield entry
        stack.extend(reversed(subdirs))
