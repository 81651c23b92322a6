"""Client tests run against the embedded-default server only; the backends are covered
by the API and end-to-end suites."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["sqlite-local"])
def stack(request: pytest.FixtureRequest) -> str:
    return str(request.param)
