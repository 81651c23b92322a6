"""``ppclient`` against the real PutPlace server (needs the server extras).

What only the real server can show: the local cache skipping unchanged files, a
read-only key refused, non-UTF-8 names stored as sent. Everything else about the
client is tested without a server (test_protocol, test_run, test_retries, ...).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from putplace.client import hashing, pipeline, scanner
from putplace.client.cli import main
from putplace.client.names import os_path, wire_path
from putplace.client.scanner import FileEntry
from putplace.client.uploader import ApiClient, ApiError
from tests.client.helpers import counts
from tests.conftest import Keys


def records(server_url: str, key: str, hostname: str) -> dict[str, dict[str, object]]:
    answer = httpx.get(
        f"{server_url}/files", params={"hostname": hostname, "limit": 1000},
        headers={"X-API-Key": key},
    ).json()  # fmt: skip
    return {r["filepath"]: r for r in answer}


def run(server_url: str, key: str, tmp_path: Path, *args: str) -> int:
    return main([
        "--url", server_url, "--api-key", key, "--no-progress",
        "--cache-file", str(tmp_path / "cache.db"), *args,
    ])  # fmt: skip


def test_registers_and_uploads_then_skips_unchanged(
    server_url: str, keys: Keys, tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    assert run(server_url, keys.write, tmp_path, str(tree), "--hostname", "h1") == 0
    first = counts(capsys.readouterr().out)
    assert (first["Files seen"], first["Content uploaded (files)"]) == (3, 2)
    assert first["Content already on server"] == 1
    stored = records(server_url, keys.read, "h1")
    assert set(stored) == {str(tree / "one"), str(tree / "d/two"), str(tree / "d/dup")}
    assert all(r["has_file_content"] for r in stored.values())

    reads: list[str] = []
    real_open = hashing.open_nofollow
    monkeypatch.setattr(hashing, "open_nofollow", lambda e: reads.append(e.path) or real_open(e))
    assert run(server_url, keys.write, tmp_path, str(tree), "--hostname", "h1") == 0
    assert reads == []  # unchanged files are not read again
    assert counts(capsys.readouterr().out)["Unchanged since last run (not re-sent)"] == 3

    (tree / "one").write_bytes(b"changed")
    assert run(server_url, keys.write, tmp_path, str(tree), "--hostname", "h1") == 0
    assert reads == [str(tree / "one")]
    assert records(server_url, keys.read, "h1")[str(tree / "one")]["sha256"] == (
        hashlib.sha256(b"changed").hexdigest()
    )
    reads.clear()
    assert run(server_url, keys.write, tmp_path, str(tree), "--hostname", "h1", "--rehash") == 0
    assert sorted(reads) == sorted(str(p) for p in (tree / "one", tree / "d/two", tree / "d/dup"))


def test_resend_sends_unchanged_metadata(
    server_url: str, keys: Keys, tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(server_url, keys.write, tmp_path, str(tree)) == 0
    capsys.readouterr()
    assert run(server_url, keys.write, tmp_path, str(tree), "--resend") == 0
    assert counts(capsys.readouterr().out)["New metadata sent"] == 3


def test_path_flag_url_suffix_config_and_env(
    server_url: str, keys: Keys, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "ppclient.conf"
    config.write_text(f"url = {server_url}/put_file\nhostname = from-config\n")
    monkeypatch.setenv("PUTPLACE_API_KEY", keys.write)
    one = str(tree / "one")
    code = main(["--config", str(config), "--path", one, "--no-progress", "--no-cache"])
    assert code == 0
    assert list(records(server_url, keys.read, "from-config")) == [str(tree / "one")]
    monkeypatch.setenv("PUTPLACE_HOSTNAME", "from-env")
    assert main(["--config", str(config), str(tree / "d"), "--no-progress", "--no-cache"]) == 0
    assert len(records(server_url, keys.read, "from-env")) == 2


def test_bad_key_exits_2(server_url: str, tree: Path, tmp_path: Path) -> None:
    assert run(server_url, "0" * 64, tmp_path, str(tree)) == 2


def test_read_only_key_exits_2(server_url: str, keys: Keys, tree: Path, tmp_path: Path) -> None:
    assert run(server_url, keys.read, tmp_path, str(tree)) == 2


def test_non_utf8_names_use_a_reversible_encoding(
    server_url: str, keys: Keys, tmp_path: Path
) -> None:
    root = tmp_path / "latin"
    root.mkdir()
    raw = os.fsencode(root) + b"/caf\xe9 100%.txt"
    with open(raw, "wb") as handle:
        handle.write(b"bytes")
    assert run(server_url, keys.write, tmp_path, str(root), "--hostname", "latin") == 0
    (name,) = records(server_url, keys.read, "latin")
    assert name == str(root) + "/caf%E9 100%25.txt"
    assert os_path(name, was_escaped=True) == raw
    assert wire_path("plain 100%.txt") == "plain 100%.txt"


def test_symlinks_are_registered_with_their_target(
    server_url: str, keys: Keys, tmp_path: Path
) -> None:
    root = tmp_path / "links"
    (root / "real").mkdir(parents=True)
    (root / "real" / "f").write_bytes(b"content")
    (root / "dirlink").symlink_to("real", target_is_directory=True)
    (root / "filelink").symlink_to("real/f")
    assert run(server_url, keys.write, tmp_path, str(root), "--hostname", "links") == 0
    stored = records(server_url, keys.read, "links")
    assert set(stored) == {str(root / "real/f"), str(root / "dirlink"), str(root / "filelink")}
    link = stored[str(root / "filelink")]
    assert (link["is_symlink"], link["link_target"]) == (True, "real/f")
    assert link["sha256"] == hashlib.sha256(b"real/f").hexdigest()
    assert stored[str(root / "real/f")]["has_file_content"]
    # This server asks no content for symlinks: the record (target) is the whole story.
    assert not link["upload_required"]


def test_first_ingest_of_small_and_large_files_stores_everything(
    server_url: str, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    root = tmp_path / "mixed"
    files: dict[Path, bytes] = {}
    for i in range(400):
        data = (b"%d " % (i % 300)) * (10 + i % 300)  # 300 distinct contents, 100 copies
        files[root / f"d{i // 50}" / f"f{i:03d}"] = data
    files[root / "big"] = os.urandom(3 * 1024 * 1024)  # over the bundle threshold
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    args = ("--hostname", "mixed", "--batch-size", "50", "--bundle-files", "64", str(root))
    with caplog.at_level(logging.INFO, logger="putplace.access"):
        assert run(server_url, keys.write, tmp_path, *args) == 0
    served = [r.getMessage() for r in caplog.records if r.name == "putplace.access"]
    # 300 small contents: four full bundles of 64, the rest in a fifth; the big one alone.
    assert sum('"POST /bundles ' in line and '" 200 ' in line for line in served) == 5
    assert sum('"PUT /blobs/' in line and '" 201 ' in line for line in served) == 1
    summary = counts(capsys.readouterr().out)
    assert (summary["Files seen"], summary["Errors"]) == (401, 0)
    assert (summary["Content uploaded (files)"], summary["Content already on server"]) == (301, 100)
    stored = records(server_url, keys.read, "mixed")
    assert set(stored) == {str(p) for p in files}
    assert all(r["has_file_content"] for r in stored.values())
    for path in (root / "big", root / "d0" / "f007", root / "d7" / "f399"):
        download = httpx.get(
            f"{server_url}/download/{stored[str(path)]['sha256']}",
            headers={"X-API-Key": keys.read},
        )  # fmt: skip
        assert download.content == files[path]
    assert run(server_url, keys.write, tmp_path, *args) == 0  # nothing left to send
    assert counts(capsys.readouterr().out)["Unchanged since last run (not re-sent)"] == 401


def test_a_clean_rescan_marks_what_is_gone_deleted_and_an_incomplete_one_does_not(
    server_url: str, keys: Keys, tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    (tree / "cache").mkdir()
    (tree / "cache" / "x.tmp").write_bytes(b"temporary")
    assert run(server_url, keys.write, tmp_path, str(tree), "--hostname", "h1") == 0
    capsys.readouterr()
    (tree / "one").unlink()
    # cache/ is excluded from now on: its records are left alone, though not walked.
    assert run(server_url, keys.write, tmp_path, str(tree), "--hostname", "h1",
               "--exclude", "cache/") == 0  # fmt: skip
    summary = counts(capsys.readouterr().out)
    assert summary["Unchanged since last run (not re-sent)"] == 2  # named to the scan only
    assert summary["Gone since last run (marked deleted)"] == 1
    assert set(records(server_url, keys.read, "h1")) == {
        str(tree / "d/two"),
        str(tree / "d/dup"),
        str(tree / "cache/x.tmp"),
    }

    # A directory that cannot be read: the scan is abandoned and nothing is deleted.
    (tree / "d" / "two").unlink()
    real_scandir = scanner.os.scandir

    def unreadable(path: Any) -> Any:
        if str(path) == str(tree / "d"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(scanner.os, "scandir", unreadable)
    assert run(server_url, keys.write, tmp_path, str(tree), "--hostname", "h1") == 1
    assert counts(capsys.readouterr().out)["Gone since last run (marked deleted)"] == 0
    assert str(tree / "d/two") in records(server_url, keys.read, "h1")


def test_namespace_flag_writes_and_reads_one_namespace(
    server_url: str, keys: Keys, tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    assert run(server_url, keys.admin, tmp_path, str(tree), "--hostname", "h1",
               "--namespace", "lab") == 0  # fmt: skip
    first = counts(capsys.readouterr().out)
    assert first["Files seen"] == 3
    # The same tree into another namespace is sent again in full: its own inventory (the
    # local cache knows the namespaces apart).
    assert run(server_url, keys.admin, tmp_path, str(tree), "--hostname", "h1") == 0
    again = counts(capsys.readouterr().out)
    assert again.get("Unchanged since last run (not re-sent)", 0) == 0
    assert again["New metadata sent"] == 3
    lab = httpx.get(f"{server_url}/files", params={"namespace": "lab"},
                    headers={"X-API-Key": keys.admin}).json()  # fmt: skip
    assert {r["namespace"] for r in lab} == {"lab"}
    assert len(lab) == 3
    assert main(["find", "--url", server_url, "--api-key", keys.admin, "--namespace", "lab",
                 "--json"]) == 0  # fmt: skip
    assert len(json.loads(capsys.readouterr().out)) == 3
    assert run(server_url, keys.admin, tmp_path, str(tree), "--namespace", "Not Valid") == 2


def test_unchanged_directories_are_not_looked_at_file_by_file_and_any_change_is_seen(
    server_url: str, keys: Keys, tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    (tree / "e").mkdir()
    for name in ("chmod", "gone", "kept"):
        (tree / "e" / name).write_bytes(name.encode())
    (tree / "f").mkdir()
    (tree / "f" / "rewritten").write_bytes(b"rewritten")
    assert run(server_url, keys.write, tmp_path, str(tree), "--hostname", "h1") == 0
    capsys.readouterr()

    looked_at: list[str] = []
    real_record_for = pipeline.record_for

    def record_for(entry: FileEntry, *args: Any) -> dict[str, Any]:
        looked_at.append(entry.path)
        return real_record_for(entry, *args)

    monkeypatch.setattr(pipeline, "record_for", record_for)
    assert run(server_url, keys.write, tmp_path, str(tree), "--hostname", "h1") == 0
    summary = counts(capsys.readouterr().out)
    assert looked_at == []  # every directory as it was: no record built, no file read
    assert (summary["Files seen"], summary["Unchanged since last run (not re-sent)"]) == (7, 7)
    assert summary.get("New metadata sent", 0) == 0
    assert summary.get("Gone since last run (marked deleted)", 0) == 0  # all named to the scan

    # A file rewritten with its size and mtime kept is seen too (its ctime moves).
    rewritten = tree / "f" / "rewritten"
    before = rewritten.stat()
    rewritten.write_bytes(b"REWRITTEN")
    os.utime(rewritten, ns=(before.st_atime_ns, before.st_mtime_ns))
    (tree / "e" / "chmod").chmod(0o600)
    (tree / "e" / "gone").unlink()
    (tree / "e" / "new").write_bytes(b"new")
    assert run(server_url, keys.write, tmp_path, str(tree), "--hostname", "h1") == 0
    summary = counts(capsys.readouterr().out)
    assert sorted(looked_at) == sorted(
        [str(tree / "e" / n) for n in ("chmod", "kept", "new")] + [str(rewritten)]
    )
    assert summary["Gone since last run (marked deleted)"] == 1
    stored = records(server_url, keys.read, "h1")
    assert str(tree / "e/gone") not in stored
    assert stored[str(rewritten)]["sha256"] == hashlib.sha256(b"REWRITTEN").hexdigest()
    assert int(str(stored[str(tree / "e/chmod")]["file_mode"])) & 0o777 == 0o600
    assert stored[str(tree / "e/new")]["has_file_content"]


def test_a_directory_whose_records_the_server_lost_is_sent_again(
    server_url: str, keys: Keys, tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    assert run(server_url, keys.write, tmp_path, str(tree), "--hostname", "h1") == 0
    # Another run of the host, while d/ was away, marked its files deleted; d/ comes back
    # with its files untouched (moving a directory changes none of its files).
    away = tmp_path / "away"
    (tree / "d").rename(away)
    assert main(["--url", server_url, "--api-key", keys.write, "--no-progress", "--no-cache",
                 "--hostname", "h1", str(tree)]) == 0  # fmt: skip
    assert set(records(server_url, keys.read, "h1")) == {str(tree / "one")}
    away.rename(tree / "d")
    capsys.readouterr()

    assert run(server_url, keys.write, tmp_path, str(tree), "--hostname", "h1") == 0
    summary = counts(capsys.readouterr().out)
    assert summary["New metadata sent"] == 3  # the request that named them, sent whole
    stored = records(server_url, keys.read, "h1")
    assert set(stored) == {str(tree / "one"), str(tree / "d/two"), str(tree / "d/dup")}


def test_a_directory_with_a_file_not_stored_is_looked_at_again(
    server_url: str, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    tree = tmp_path / "solo"
    tree.mkdir()
    (tree / "only").write_bytes(b"the only copy")

    def failing(self: ApiClient, members: Any, *args: Any) -> Any:
        raise ApiError(503, "storage unavailable")

    with monkeypatch.context() as patched:
        patched.setattr(ApiClient, "put_bundle", failing)
        assert run(server_url, keys.write, tmp_path, str(tree), "--hostname", "h1") == 1
    assert not records(server_url, keys.read, "h1")[str(tree / "only")]["has_file_content"]
    capsys.readouterr()

    assert run(server_url, keys.write, tmp_path, str(tree), "--hostname", "h1") == 0
    assert counts(capsys.readouterr().out)["Content uploaded (files)"] == 1
    assert records(server_url, keys.read, "h1")[str(tree / "only")]["has_file_content"]
