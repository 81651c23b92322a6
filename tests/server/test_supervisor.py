"""``ppserver serve --workers N`` killed with SIGKILL (the OOM killer, a hard stop) takes
its workers with it: they stop within seconds and the port is free for the next start.
A server of one process never stops because of who started it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import psutil
import pytest

from putplace.server.supervisor import CHECK_SECONDS, SUPERVISOR_ENV
from tests.conftest import make_settings
from tests.support.processes import ppserver_process, worker_processes


def running(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those of *processes* still running (an exited one nobody reaped is a zombie)."""
    alive = []
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def test_workers_stop_when_their_supervisor_is_killed(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # what a killed run leaves, left here
    settings = make_settings(request, "sqlite-local", tmp_path)
    with ppserver_process(settings, tmp_path, "--workers", "2") as url:
        workers = worker_processes(url)
        assert len(workers) == 2
        supervisor = workers[0].parent()
        assert supervisor is not None
        supervisor.kill()  # SIGKILL: it cannot stop them itself
        deadline = time.monotonic() + 10 * CHECK_SECONDS + 10
        while (alive := running(workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        for worker in alive:  # not left running by a failing test
            worker.kill()
        assert not alive, [w.pid for w in alive]
        with pytest.raises(httpx.ConnectError):  # nobody holds the port any more
            httpx.get(f"{url}/health", timeout=5)


def test_the_next_server_removes_what_a_killed_one_left(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its metrics and shared-limits directories: a killed serve cannot remove them, and
    servers restarted after the OOM killer would otherwise fill the temporary directory.
    Another user's, and a running server's, are left alone."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setenv("TMPDIR", str(temporary))
    settings = make_settings(request, "sqlite-local", tmp_path)
    live = temporary / f"putplace-limits-{os.getpid()}-x"  # a serve still running
    unrelated = temporary / "putplace-limits-notes"
    live.mkdir()
    unrelated.mkdir()
    with ppserver_process(settings, tmp_path, "--workers", "2") as url:
        workers = worker_processes(url)
        supervisor = workers[0].parent()
        assert supervisor is not None
        killed = sorted(temporary.glob(f"putplace-*-{supervisor.pid}-*"))
        assert [p.name.split("-")[1] for p in killed] == ["limits", "metrics"]
        supervisor.kill()
        psutil.wait_procs(workers, timeout=10 * CHECK_SECONDS + 10)
        assert all(p.exists() for p in killed)  # what a SIGKILL leaves
    with ppserver_process(settings, tmp_path, "--workers", "2"):
        left = {p.name for p in temporary.iterdir()}
    assert not {p.name for p in killed} & left
    assert {live.name, unrelated.name} <= left


def test_a_single_process_server_ignores_a_supervisor_it_does_not_have(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value inherited from elsewhere (an exported variable) names no parent of it."""
    monkeypatch.setenv(SUPERVISOR_ENV, str(2**22 + 1))  # above any process id Linux gives
    settings = make_settings(request, "sqlite-local", tmp_path)
    with ppserver_process(settings, tmp_path, "--workers", "1") as url:
        time.sleep(3 * CHECK_SECONDS)  # a supervised worker would have stopped by now
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
