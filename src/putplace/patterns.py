"""Exclude patterns, matched alike by the client's walk and the server's scan completion
(a record an exclude covers was not walked, so it is not "gone").

Matched with RE2 (pathspec's ``re2`` backend, from ``google-re2``), in time linear in
the path: a scan's excludes are chosen by a write key and its paths by the host, and
Python's backtracking engine took 1.4 s to match ``**/a*a*a*b`` against one path of
2,000 characters, on the server's event loop, at scan completion."""

from __future__ import annotations

from collections.abc import Callable, Iterable

# pathspec (with RE2) is imported when a pattern is first checked or matched: 19 ms of
# start-up that a run without excludes does not need.

Excluder = Callable[[str, bool], bool]
_ENGINE = "re2"


def checked_exclude(pattern: str) -> str:
    """*pattern*, or ValueError saying why it cannot be matched (``[z-a]``, ``\\``)."""
    import pathspec

    try:
        pathspec.GitIgnoreSpec.from_lines([pattern], backend=_ENGINE)
    except Exception as exc:  # pathspec, re and RE2 each have their own error types
        # re's message without "at position N", a place in the regex made of it.
        why = getattr(exc, "msg", None) or str(exc)
        raise ValueError(f"not a valid exclude pattern {pattern!r}: {why}") from None
    return pattern


def excluder(patterns: Iterable[str]) -> Excluder:
    """``excluded(relative_posix_path, is_dir)`` for gitignore-style *patterns*."""
    lines = list(patterns)
    if not lines:  # matching every path against an empty spec cost 4% of a first ingest
        return lambda relative, is_dir: False
    import pathspec

    spec = pathspec.GitIgnoreSpec.from_lines(lines, backend=_ENGINE)

    def excluded(relative: str, is_dir: bool) -> bool:
        return spec.match_file(relative + "/" if is_dir else relative)

    return excluded
