"""Logs of a real ppserver: JSON lines, one access line per request, never a key."""

from __future__ import annotations

import io
import json
import logging
import socket
import time
from pathlib import Path

import httpx
import pytest

from putplace.config import LogFormat, MetricsAccess, Settings
from putplace.server.logs import TextFormatter
from tests.support.payloads import metadata
from tests.support.processes import ppserver_process, run_ppserver


@pytest.mark.parametrize("metrics", [MetricsAccess.key, MetricsAccess.off])
def test_json_access_log_with_request_ids_and_no_secrets(
    tmp_path: Path, metrics: MetricsAccess
) -> None:
    """Logged and given ids alike whether the requests are also counted or not."""
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/putplace.db",
        storage_url=f"file://{tmp_path}/blobs",
        log_format=LogFormat.json,
        metrics=metrics,
    )
    created = run_ppserver(settings, "keys", "create", "--name", "logs", "--json", cwd=tmp_path)
    key = json.loads(created.stdout)["api_key"]
    with ppserver_process(settings, tmp_path) as url, httpx.Client(base_url=url) as client:
        headers = {"X-API-Key": key, "X-Request-ID": "trace-123"}
        answered = client.post("/put_file", json=metadata(b"x"), headers=headers)
        assert answered.status_code == 201
        assert answered.headers["x-request-id"] == "trace-123"
        refused = client.get("/files", headers={"X-API-Key": "f" * 64})
        assert refused.status_code == 401
        generated = refused.headers["x-request-id"]
        assert len(generated) == 32
        again = client.get("/files", headers={"X-API-Key": "f" * 64}).headers["x-request-id"]
        assert again != generated  # made up afresh for each request
        hostile = client.get("/", headers={"X-Request-ID": "x\ty" * 100})
        assert hostile.headers["x-request-id"] != "x\ty" * 100
    (log,) = tmp_path.glob("ppserver-*.log")
    text = log.read_text()
    assert key not in text
    assert "f" * 64 not in text
    entries = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    access = {e["request_id"]: e for e in entries if e["logger"] == "putplace.access"}
    assert access["trace-123"]["status"] == 201
    assert access["trace-123"]["path"] == "/put_file"
    assert access["trace-123"]["key_id"] == json.loads(created.stdout)["_id"]
    assert access[generated]["status"] == 401
    assert access[generated]["key_id"] is None
    assert not [e for e in entries if e["logger"] == "uvicorn.access"]  # one line a request
    non_json = [line for line in text.splitlines() if line and not line.startswith("{")]
    assert non_json == []


def test_text_log_shows_a_hostile_request_path_literally(tmp_path: Path) -> None:
    """Anyone may request any path (no key needed): a newline in it must not forge a log
    line, and an ESC must not reach the terminal of whoever reads the log."""
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/putplace.db",
        storage_url=f"file://{tmp_path}/blobs",
        log_format=LogFormat.text,
    )
    forged = "2026-12-02 09:00:00,000 INFO putplace.access: forged"
    with ppserver_process(settings, tmp_path) as url, httpx.Client(base_url=url) as client:
        path = "/files/%1b%5b31mRED%0d%0a" + forged.replace(" ", "%20")
        assert client.get(path).status_code == 404
    (log,) = tmp_path.glob("ppserver-*.log")
    text = log.read_text()
    assert "\x1b" not in text
    assert not any(line.startswith(forged) for line in text.splitlines())
    assert f'"GET /files/\\x1b[31mRED\\r\\n{forged} HTTP/1.1" 404' in text


def test_a_client_leaving_mid_body_is_logged_as_its_doing_not_a_server_error(
    tmp_path: Path,
) -> None:
    """A 500 in the access log (and in the 5xx metrics that page someone) must mean the
    server failed, not that a client went away while sending a batch."""
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/putplace.db",
        storage_url=f"file://{tmp_path}/blobs",
        log_format=LogFormat.json,
    )
    with ppserver_process(settings, tmp_path) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as raw:
            raw.sendall(
                f"POST /put_files HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json"
                f"\r\nContent-Length: 100000\r\n\r\n".encode()
                + b'{"files": [' * 100
            )
        (log,) = tmp_path.glob("ppserver-*.log")
        for _ in range(100):
            lines = [json.loads(line) for line in log.read_text().splitlines()
                     if line.startswith("{")]  # fmt: skip
            access = [e for e in lines if e.get("path") == "/put_files"]
            if access:
                break
            time.sleep(0.1)
    assert [e["status"] for e in access] == [400]


def test_a_traceback_cannot_forge_lines_nor_change_what_other_handlers_see() -> None:
    ours, theirs = io.StringIO(), io.StringIO()
    text = logging.StreamHandler(ours)
    text.setFormatter(TextFormatter())
    plain = logging.StreamHandler(theirs)
    plain.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("test.hostile")
    log.handlers[:] = [text, plain]
    log.propagate = False
    forged = "2026-12-02 09:00:00,000 INFO putplace.access: forged"
    try:
        raise ValueError(f"no such file /x\n{forged}")  # a message quoting a client
    except ValueError:
        log.exception("failed on %s", "/p\x1b[2J")
    lines = ours.getvalue().splitlines()
    assert lines[0].endswith("failed on /p\\x1b[2J")
    assert all(line.startswith("  ") for line in lines[1:])  # none passes for a record
    assert f"  {forged}" in lines
    assert theirs.getvalue().startswith("failed on /p\x1b[2J\n")  # the record unchanged
