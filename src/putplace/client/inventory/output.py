"""Printing what the server says, safely: tables for people, JSON for scripts.

Every string in an answer (file names above all, but also host names and link targets)
was chosen by whoever named the file, so a name may hold ``ESC [ 2 J``, a newline or a
right-to-left override. In tables each such character is shown escaped, the way Python's
``repr`` shows it (``\\x1b``, ``\\n``, ``\\u202e``); a backslash is doubled, so an
escaped name cannot pass for another. Nothing is interpreted: no markup, no colour.
JSON output is ``json.dumps`` with ``ensure_ascii``, which escapes the same way.
"""

from __future__ import annotations

import json
import stat
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import IO, Any

from rich.cells import cell_len

from putplace.display import safe


def human_size(size: object) -> str:
    """``1023``, ``1.0K``, ``1.5M``: binary units, like ``ls -lh``."""
    if not isinstance(size, int | float):
        return "-"
    value = float(size)
    for unit in ("", "K", "M", "G", "T", "P"):
        if abs(value) < 1024 or unit == "P":
            return f"{int(value)}" if unit == "" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def when(value: object) -> str:
    """A time from an answer (Unix seconds or ISO 8601) as local ``YYYY-MM-DD HH:MM:SS``;
    ``-`` for none."""
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            moment = datetime.fromtimestamp(value).astimezone()
        elif isinstance(value, str) and value:
            moment = datetime.fromisoformat(value.replace("z", "Z")).astimezone()
        else:
            return "-"
    except (ValueError, OverflowError, OSError):
        return safe(value)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def mode_text(mode: object, is_symlink: bool = False) -> str:
    """``-rw-r--r--`` for a full ``st_mode``; symlinks as ``lrwxrwxrwx``."""
    if not isinstance(mode, int):
        return "-"
    if is_symlink and not stat.S_ISLNK(mode):
        mode = stat.S_IFLNK | stat.S_IMODE(mode)
    elif stat.S_IFMT(mode) == 0:
        mode |= stat.S_IFREG
    return stat.filemode(mode)


def count(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


class Table:
    """An aligned, plain-text table written as rows arrive.

    Column widths come from the first batch of rows and only ever grow, so a listing of
    millions of records is printed a page at a time without being held in memory. The
    last column is never padded (it is the path, and may be long).
    """

    def __init__(
        self, headers: Sequence[str], out: IO[str] | None = None, right: Iterable[int] = ()
    ) -> None:
        self.headers = list(headers)
        self.out = out or sys.stdout
        self.right = set(right)
        self.widths: list[int] | None = None
        self.rows = 0

    def write(self, rows: Sequence[Sequence[str]]) -> None:
        """Rows of already-safe strings (see :func:`safe`)."""
        if not rows:
            return
        if self.widths is None:
            self.widths = [cell_len(h) for h in self.headers]
            self._widen(rows)
            self._line(self.headers)
        else:
            self._widen(rows)
        for row in rows:
            self._line(row)
        self.rows += len(rows)
        self.out.flush()

    def _widen(self, rows: Sequence[Sequence[str]]) -> None:
        assert self.widths is not None
        for row in rows:
            for index, cell in enumerate(row[:-1]):
                self.widths[index] = max(self.widths[index], cell_len(cell))

    def _line(self, row: Sequence[str]) -> None:
        assert self.widths is not None
        cells = []
        for index, cell in enumerate(row):
            if index == len(row) - 1:
                cells.append(cell)
                break
            pad = " " * (self.widths[index] - cell_len(cell))
            cells.append(pad + cell if index in self.right else cell + pad)
        self.out.write("  ".join(cells).rstrip() + "\n")


def print_json(value: Any, out: IO[str] | None = None) -> None:
    """One JSON document; ``ensure_ascii`` keeps it 7-bit and terminal-safe."""
    stream = out or sys.stdout
    stream.write(json.dumps(value, indent=2, ensure_ascii=True) + "\n")


class JsonList:
    """A JSON list printed an item at a time (for listings of any length)."""

    def __init__(self, out: IO[str] | None = None) -> None:
        self.out = out or sys.stdout
        self.count = 0

    def write(self, items: Iterable[Any]) -> None:
        for item in items:
            self.out.write("[\n  " if self.count == 0 else ",\n  ")
            self.out.write(json.dumps(item, ensure_ascii=True))
            self.count += 1
        self.out.flush()

    def close(self) -> None:
        self.out.write("[]\n" if self.count == 0 else "\n]\n")
        self.out.flush()
