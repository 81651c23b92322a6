"""``ppclient`` against a stand-in server: what goes over the wire, what the user sees."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from putplace.client.cli import main
from tests.client.fake_server import KEY, fake_server
from tests.client.helpers import counts, ppclient

RECORD_FIELDS = {
    "filepath", "hostname", "ip_address", "sha256", "file_size", "file_mode", "file_uid",
    "file_gid", "file_mtime", "file_atime", "file_ctime", "is_symlink", "link_target",
}  # fmt: skip


def test_legacy_protocol_metadata_then_multipart_upload(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with fake_server(legacy=True) as server:
        assert ppclient(server.url, str(tree)) == 0
    # An old server has no scans (one 404), no /put_files: one 404, then one /put_file
    # per file.
    assert server.paths()[:2] == ["POST /scans", "POST /put_files"]
    put_files = [r for r in server.requests if r.path == "/put_file"]
    assert len(put_files) == 3
    assert all(r.headers["X-API-Key"] == KEY for r in server.requests)
    one = next(r.json() for r in put_files if r.json()["filepath"] == str(tree / "one"))
    assert set(one) == RECORD_FIELDS
    st = os.lstat(tree / "one")
    assert one == {
        "filepath": str(tree / "one"), "hostname": "h1", "ip_address": "10.1.2.3",
        "sha256": hashlib.sha256(b"1" * 1000).hexdigest(), "file_size": 1000,
        "file_mode": st.st_mode, "file_uid": st.st_uid, "file_gid": st.st_gid,
        "file_mtime": st.st_mtime, "file_atime": one["file_atime"], "file_ctime": st.st_ctime,
        "is_symlink": False, "link_target": None,
    }  # fmt: skip
    # Two distinct contents: uploaded once each, as multipart field "file".
    assert sorted(u.content for u in server.uploads) == [b"1" * 1000, b"2" * 2000]
    for upload in server.uploads:
        (path,) = upload.query["filepath"]
        assert (upload.via, upload.status) == ("upload_file", 200)
        assert upload.query["hostname"] == ["h1"]
        assert upload.filename == os.path.basename(path)
    summary = counts(capsys.readouterr().out)
    assert summary["Files seen"] == 3
    assert summary["New metadata sent"] == 3
    assert summary["Content uploaded (files)"] == 2
    assert summary["Bytes uploaded"] == 3000
    assert summary["Content already on server"] == 1
    assert summary["Errors"] == 0


def test_server_without_bundles_gets_raw_uploads(tree: Path) -> None:
    with fake_server(bundles=False) as server:
        server.store(b"2" * 2000)
        assert ppclient(server.url, str(tree)) == 0
    assert "POST /put_file" not in server.paths()
    assert len(server.records()) == 3
    # Tried in a bundle (404: no such endpoint), then alone: the rest of the run too.
    assert [(u.via, u.status, u.content) for u in server.uploads] == [
        ("bundles", 404, b"1" * 1000), ("blobs", 201, b"1" * 1000)
    ]  # fmt: skip


@pytest.mark.parametrize("legacy", [False, True])
def test_symlinks_are_recorded_with_their_target_and_no_content(
    tmp_path: Path, legacy: bool
) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_bytes(b"real content")
    (tmp_path / "dirlink").symlink_to("real", target_is_directory=True)
    (tmp_path / "filelink").symlink_to("real/f")
    with fake_server(legacy=legacy) as server:
        assert ppclient(server.url, str(tmp_path)) == 0
        stored = server.files("h1")
    by_path = {r["filepath"]: r for r in server.records()}
    assert set(by_path) == {str(tmp_path / p) for p in ("real/f", "dirlink", "filelink")}
    link = by_path[str(tmp_path / "filelink")]
    assert (link["is_symlink"], link["link_target"], link["file_size"]) == (True, "real/f", 6)
    assert link["sha256"] == hashlib.sha256(b"real/f").hexdigest()
    # The server never asks for a symlink's content: only the regular file is uploaded.
    assert [u.content for u in server.uploads] == [b"real content"]
    assert set(stored) == set(by_path)
    assert stored[str(tmp_path / "real/f")]["has_file_content"]


def test_dry_run_sends_nothing(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with fake_server() as server:
        code = main(["--url", server.url, "--dry-run", "--no-progress", "--no-cache", str(tree)])
    assert code == 0
    assert server.requests == []
    summary = counts(capsys.readouterr().out)
    assert (summary["Files seen"], summary["New metadata sent"]) == (3, 0)


def test_bad_key_stops_the_run_with_exit_2(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with fake_server(legacy=True, api_key="0" * 64) as server:
        assert ppclient(server.url, str(tree)) == 2
    assert len(server.requests) == 3  # /scans, /put_files (404s), the first /put_file: 401
    err = capsys.readouterr().err
    assert "refused the API key (HTTP 401): Invalid API key" in err


def test_refused_record_shows_detail_counts_an_error_and_carries_on(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with fake_server(legacy=True, script={"/put_file": [422]}) as server:
        assert ppclient(server.url, str(tree)) == 1
    assert len([r for r in server.requests if r.path == "/put_file"]) == 3  # 422: no retry
    captured = capsys.readouterr()
    assert "scripted 422" in captured.err
    summary = counts(captured.out)
    assert (summary["Errors"], summary["New metadata sent"]) == (1, 2)


def test_transient_upload_failure_is_retried(tree: Path) -> None:
    with fake_server(legacy=True, script={"/upload_file": [503, 503]}, retry_after="0") as server:
        assert ppclient(server.url, str(tree / "one")) == 0
    assert [(u.status, u.content) for u in server.uploads] == [(503, b"1" * 1000)] * 2 + [
        (200, b"1" * 1000)
    ]


def test_upload_rejected_by_server_is_an_error(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with fake_server(legacy=True, script={"/upload_file": [400]}) as server:
        assert ppclient(server.url, str(tree / "one")) == 1
    assert "upload failed: scripted 400" in capsys.readouterr().err
    assert server.count("/upload_file") == 1  # 400 is final


def test_url_ending_in_put_file_is_the_same_server(tree: Path) -> None:
    with fake_server() as server:
        assert ppclient(f"{server.url}/put_file", str(tree / "one")) == 0
    assert server.paths() == ["POST /put_files", "POST /bundles"]


@pytest.mark.parametrize("legacy", [False, True])
def test_non_utf8_names_are_percent_encoded(tmp_path: Path, legacy: bool) -> None:
    raw = os.fsencode(tmp_path) + b"/caf\xe9 100%.txt"
    with open(raw, "wb") as handle:
        handle.write(b"bytes")
    (tmp_path / "plain 100%.txt").write_bytes(b"plain")
    with fake_server(legacy=legacy) as server:
        assert ppclient(server.url, str(tmp_path)) == 0
        stored = server.files("h1")
    names = sorted(r["filepath"] for r in server.records())
    assert names == [f"{tmp_path}/caf%E9 100%25.txt", f"{tmp_path}/plain 100%.txt"]
    assert sorted(stored) == names
    assert all(r["has_file_content"] for r in stored.values())
    if legacy:  # the multipart upload's filename is the name's last component
        filenames = sorted(u.filename or "" for u in server.uploads)
        assert filenames == ["caf%E9 100%25.txt", "plain 100%.txt"]
