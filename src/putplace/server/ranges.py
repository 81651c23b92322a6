"""HTTP ``Range: bytes=...`` parsing for downloads (RFC 9110 section 14)."""

from __future__ import annotations

import re

_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")
#: Positions beyond this are "past any content" (no store holds 2^63 bytes). Converting
#: the digits as given would let a header of 10,000 zeros hit Python's int limit.
_BEYOND = 1 << 63


def _position(digits: str) -> int:
    significant = digits.lstrip("0")
    return int(significant or "0") if len(significant) <= 19 else _BEYOND


class RangeNotSatisfiableError(ValueError):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end_inclusive)`` for a single satisfiable byte range, or None to send all.

    Multi-range and malformed headers are ignored (the whole content is sent), which RFC
    9110 allows. A syntactically valid range that lies wholly beyond the content raises
    :class:`RangeNotSatisfiableError` (HTTP 416).
    """
    if not header:
        return None
    match = _RANGE_RE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix range: the last N bytes
        suffix = _position(last)
        if suffix == 0:
            raise RangeNotSatisfiableError(header)
        return (max(0, size - suffix), size - 1) if size else _unsatisfiable(header)
    start = _position(first)
    end = _position(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        raise RangeNotSatisfiableError(header)
    return start, min(end, size - 1)


def _unsatisfiable(header: str) -> tuple[int, int]:
    raise RangeNotSatisfiableError(header)
