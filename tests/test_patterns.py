"""Exclude patterns: a pattern and a path chosen by others cannot make matching slow."""

from __future__ import annotations

import pytest

from putplace.patterns import excluder


@pytest.mark.timeout(60)  # Python's engine took 1.4 s per path on the first, minutes on more
@pytest.mark.parametrize("pattern", ["**/a*a*a*b", "a**a**a**a**b", "/x/**/a*a*a*a*b*"])
def test_no_exclude_makes_a_long_path_slow(pattern: str) -> None:
    """A scan's excludes come from a write key and its records' paths from the host;
    the server matches them at scan completion, on its event loop."""
    excluded = excluder([pattern])
    for _ in range(100):  # as a completion over 100 such records would
        assert not excluded("a" * 4095, False)
        assert not excluded("x/" + "a" * 4093, False)


def test_excludes_still_match_as_gitignore_does() -> None:
    excluded = excluder(["*.log", "build/", "!keep.log", "/top-only"])
    assert excluded("a/b/c.log", False)
    assert not excluded("a/keep.log", False)
    assert excluded("a/build", True)
    assert not excluded("a/build", False)  # a file named build is not the directory
    assert excluded("top-only", False)
    assert not excluded("a/top-only", False)
