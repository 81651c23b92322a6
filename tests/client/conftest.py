"""Client tests run against the embedded-default server only; the backends are covered
by the API and end-to-end suites."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(params=["sqlite-local"])
def stack(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Three files, two of them with the same content."""
    root = tmp_path / "tree"
    (root / "d").mkdir(parents=True)
    (root / "one").write_bytes(b"1" * 1000)
    (root / "d" / "two").write_bytes(b"2" * 2000)
    (root / "d" / "dup").write_bytes(b"1" * 1000)
    return root
