"""Path globs: both ways of matching (Python's engine, and the bit-parallel automaton
used where backtracking could run away) agree with a plain reading of the rules, and
no glob makes matching a long path slow."""

from __future__ import annotations

import functools
import random

import pytest

from putplace.metadata.globs import MAX_RUNS, PathGlob, checked_glob

ALWAYS_AUTOMATON = -1
"""``regex_runs`` that sends every glob to the automaton."""


def reference(pattern: str, path: str) -> bool:
    """The rules, read plainly (and slowly): ``**`` any run, ``*`` a run without "/",
    ``?`` one character but "/", ``[...]``/``[!...]`` one character of a set."""

    @functools.cache
    def at(p: int, s: int) -> bool:
        if p == len(pattern):
            return s == len(path)
        if pattern.startswith("**", p):
            return any(at(p + 2, end) for end in range(s, len(path) + 1))
        char = pattern[p]
        if char == "*":
            end = s
            while True:
                if at(p + 1, end):
                    return True
                if end == len(path) or path[end] == "/":
                    return False
                end += 1
        if s == len(path):
            return False
        if char == "?":
            return path[s] != "/" and at(p + 1, s + 1)
        if char == "[" and (close := pattern.find("]", p + 2)) != -1:
            body = pattern[p + 1 : close]
            negate = body.startswith("!")
            members = set(body[1:] if negate else body)
            return (path[s] in members) != negate and at(close + 1, s + 1)
        return path[s] == char and at(p + 1, s + 1)

    return at(0, 0)


@pytest.mark.parametrize("regex_runs", [ALWAYS_AUTOMATON, 1])
def test_globs_match_by_the_rules(regex_runs: int) -> None:
    rng = random.Random(7)
    pieces = ["a", "b", "/", "\n", "*", "**", "?", "[ab]", "[!a]", "[/]", "[[b]", "["]
    for _ in range(20_000):
        pattern = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 6)))
        path = "".join(rng.choice("ab/\n[") for _ in range(rng.randint(0, 9)))
        expected = reference(pattern, path)
        assert PathGlob(pattern, regex_runs).matches(path) == expected, (pattern, path)


@pytest.mark.timeout(60)  # the backtracking engine took minutes on the first of these
@pytest.mark.parametrize(
    "pattern",
    [
        "/**a**a**a**b",
        "/*a*a*a*a*b",
        "/**a*a**a*a**b",
        "/**" + "a" * 500 + "**b",
        "/" + "*a" * MAX_RUNS + "b",  # the most parts, each found at every place
    ],
)
def test_no_glob_makes_a_long_path_slow(pattern: str) -> None:
    """A read key chooses the glob and any writer the path: 4,096 characters of "a"
    (the longest path a record may have) must not make matching try every split."""
    path = "/" + "a" * 4095
    glob = PathGlob(checked_glob(pattern))
    for _ in range(100):  # as a search over 100 such records would
        assert not glob.matches(path)


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("/[z-a]", "not a valid glob"),
        ("/[!]", "not a valid glob"),
        ("/a\0", "NUL"),
        ("/" + "*a" * (MAX_RUNS + 1), f"at most {MAX_RUNS}"),  # each run costs a pass
    ],
)
def test_malformed_globs_are_refused_with_the_reason(pattern: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        checked_glob(pattern)
