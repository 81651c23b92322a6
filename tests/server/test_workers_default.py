"""How many worker processes ``ppserver serve`` runs unless told: one where it may use
only one CPU, three otherwise (see :func:`putplace.config.default_workers`)."""

from __future__ import annotations

import os

import pytest

from putplace.config import Settings


@pytest.mark.parametrize(("cpus", "workers"), [(1, 1), (2, 3), (8, 3)])
def test_serve_runs_one_worker_on_one_cpu_and_three_on_more(
    monkeypatch: pytest.MonkeyPatch, cpus: int, workers: int
) -> None:
    monkeypatch.delenv("PUTPLACE_WORKERS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cpus)), raising=False)
    assert Settings(_env_file=None).workers == workers  # type: ignore[call-arg]


def test_a_workers_setting_wins_over_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUTPLACE_WORKERS", "2")
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    assert Settings(_env_file=None).workers == 2  # type: ignore[call-arg]
