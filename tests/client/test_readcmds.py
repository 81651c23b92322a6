"""``ppclient find | locations | history | stats | duplicates`` against the real server.

Records are registered through the API (``POST /put_file``, content by ``PUT /blobs``),
then the commands are run in process as a user would run them, and their output read.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from putplace.client.cli import main
from putplace.client.inventory.commands import find_row
from putplace.client.inventory.options import point_in_time, run
from putplace.client.uploader import ApiError, AuthError
from tests.client.fake_server import KEY, fake_server
from tests.client.helpers import counts
from tests.conftest import Keys

HOSTILE = "/data/evil\x1b[31mred\nline.txt"
"""A name that would colour the terminal red and break the table if printed raw."""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No PUTPLACE_* from the outside, and no ~/ppclient.conf of the real user."""
    for name in list(os.environ):
        if name.startswith("PUTPLACE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def put(
    url: str,
    key: str,
    hostname: str,
    filepath: str,
    content: bytes = b"x",
    *,
    mode: int = 0o100644,
    mtime: float = 1_700_000_000.0,
    link: str | None = None,
    upload: bool = True,
    namespace: str | None = None,
) -> str:
    """Register one file (or symlink, with *link*) and store its content (in *namespace*,
    default the key's own); its hash."""
    data = link.encode() if link is not None else content
    sha = hashlib.sha256(data).hexdigest()
    record = {
        "filepath": filepath, "hostname": hostname, "ip_address": "10.0.0.1", "sha256": sha,
        "file_size": len(data), "file_mode": 0o120777 if link is not None else mode,
        "file_uid": 1000, "file_gid": 1000, "file_mtime": mtime, "file_atime": mtime,
        "file_ctime": mtime, "is_symlink": link is not None, "link_target": link,
    }  # fmt: skip
    headers = {"X-API-Key": key}
    params = {} if namespace is None else {"namespace": namespace}
    answer = httpx.post(f"{url}/put_file", json=record, headers=headers, params=params)
    answer.raise_for_status()
    if upload and answer.json()["upload_required"]:
        httpx.put(f"{url}/blobs/{sha}", content=content, headers=headers, params=params
                  ).raise_for_status()  # fmt: skip
    return sha


def pp(url: str, key: str, command: str, *args: str) -> int:
    """``ppclient COMMAND --url URL --api-key KEY ARGS...`` in process."""
    return main([command, "--url", url, "--api-key", key, *args])


def as_json(capsys: pytest.CaptureFixture[str]) -> Any:
    return json.loads(capsys.readouterr().out)


def paths(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [record["filepath"] for record in as_json(capsys)]


# --- find ---------------------------------------------------------------------------------


def test_find_table_escapes_hostile_names(
    server_url: str, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    put(server_url, keys.write, "h1", HOSTILE)
    put(server_url, keys.write, "h1", "/data/plain.txt")
    put(server_url, keys.write, "h1", "/data/rtl\u202etxt.exe")
    put(server_url, keys.write, "h\x1b]0;owned\x07", "/data/x")
    put(server_url, keys.write, "h1", "/data/lnk", link="\x1b[2Jcleared")
    assert pp(server_url, keys.read, "find", "--sort", "path") == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "\x1b" not in out
    assert "\u202e" not in out
    assert "\x07" not in out
    lines = out.splitlines()
    assert len(lines) == 1 + 5  # a header, then one line per record: no newline got through
    assert lines[0].split() == ["MODE", "HOSTNAME", "SIZE", "MODIFIED", "SHA256", "PATH"]
    assert any(line.endswith("/data/evil\\x1b[31mred\\nline.txt") for line in lines)
    assert any(line.endswith("/data/rtl\\u202etxt.exe") for line in lines)
    assert any("h\\x1b]0;owned\\x07" in line for line in lines)
    assert any(line.endswith("/data/lnk -> \\x1b[2Jcleared") for line in lines)
    # The columns line up: every path starts where the header's PATH does.
    start = lines[0].index("PATH")
    assert all(line[start:].startswith("/data/") for line in lines[1:])


def test_find_json_is_the_records_unescaped(
    server_url: str, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    put(server_url, keys.write, "h1", HOSTILE)
    assert pp(server_url, keys.read, "find", "--json") == 0
    (record,) = as_json(capsys)
    assert record["filepath"] == HOSTILE  # scripts get the name as it is
    assert record["hostname"] == "h1"
    assert "recorded_at" in record


def test_find_with_no_match_prints_only_an_empty_result(
    server_url: str, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    put(server_url, keys.write, "h1", "/a")
    assert pp(server_url, keys.read, "find", "--hostname", "nobody", "--json") == 0
    assert as_json(capsys) == []
    assert pp(server_url, keys.read, "find", "--hostname", "nobody") == 0
    assert capsys.readouterr().out == ""


def test_find_filters(server_url: str, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    url, w = server_url, keys.write
    big = put(url, w, "h1", "/srv/big.log", b"b" * 10_000, mtime=1_600_000_000)
    put(url, w, "h1", "/srv", b"file named like the prefix", mtime=1_650_000_000)
    put(url, w, "h1", "/srv/sub/deep.log", b"d" * 100, mtime=1_700_000_000)
    put(url, w, "h1", "/srvx/other.log", b"o" * 5000, mtime=1_700_000_000)
    put(url, w, "h2", "/srv/h2.txt", b"b" * 10_000, mtime=1_700_000_000)
    put(url, w, "h3", "/srv/h3.txt", b"never uploaded", upload=False)

    def find(*args: str) -> set[str]:
        assert pp(url, keys.read, "find", "--json", *args) == 0
        return set(paths(capsys))

    assert find("--hostname", "h2", "--hostname", "h3") == {"/srv/h2.txt", "/srv/h3.txt"}
    assert find("--hostname", "h1", "--path-prefix", "/srv/") == {
        "/srv", "/srv/big.log", "/srv/sub/deep.log"
    }  # fmt: skip
    assert find("--glob", "/srv/*.log") == {"/srv/big.log"}  # * stops at /
    assert find("--glob", "/srv/**") == {
        "/srv/big.log", "/srv/sub/deep.log", "/srv/h2.txt", "/srv/h3.txt"
    }  # fmt: skip
    assert find("--min-size", "4K", "--max-size", "9000") == {"/srvx/other.log"}
    assert find("--sha256", big) == {"/srv/big.log", "/srv/h2.txt"}
    assert find("--mtime-after", "1650000000", "--mtime-before", "2023-11-14T22:13:21Z") == {
        "/srv", "/srv/sub/deep.log", "/srvx/other.log", "/srv/h2.txt", "/srv/h3.txt"
    }  # fmt: skip
    assert find("--no-content") == {"/srv/h3.txt"}
    assert find("--uploaded-after", "1h") == {
        "/srv/big.log", "/srv", "/srv/sub/deep.log", "/srvx/other.log", "/srv/h2.txt"
    }  # fmt: skip
    assert find("--uploaded-before", "1h") == set()
    assert "/srv/h3.txt" not in find("--has-content")
    assert pp(url, keys.read, "find", "--json", "--hostname", "h1", "--sort=-size") == 0
    sizes = [record["file_size"] for record in as_json(capsys)]
    assert sizes == sorted(sizes, reverse=True)
    assert len(sizes) == 4
    assert pp(url, keys.read, "find", "--json", "--hostname", "h1", "--sort", "size", "-r") == 0
    assert [record["file_size"] for record in as_json(capsys)] == sizes
    # Paged (two records a request) and in one page: the same records in the same order.
    assert pp(url, keys.read, "find", "--json", "--sort=-path") == 0
    whole = paths(capsys)
    assert whole == sorted(whole, reverse=True)
    assert len(whole) == 6
    assert pp(url, keys.read, "find", "--json", "--sort=-path", "--page-size", "2") == 0
    assert paths(capsys) == whole


def test_find_recorded_after_takes_the_moment_between_two_registrations(
    server_url: str, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    put(server_url, keys.write, "h1", "/before")
    time.sleep(0.05)
    between = repr(time.time())
    time.sleep(0.05)
    put(server_url, keys.write, "h1", "/after")
    assert pp(server_url, keys.read, "find", "--json", "--recorded-after", between) == 0
    assert paths(capsys) == ["/after"]
    assert pp(server_url, keys.read, "find", "--json", "--recorded-before", between) == 0
    assert paths(capsys) == ["/before"]
    assert pp(server_url, keys.read, "find", "--json", "--recorded-after", "1h") == 0
    assert sorted(paths(capsys)) == ["/after", "/before"]  # both within the last hour


def test_find_as_of_shows_the_inventory_of_that_moment(
    server_url: str, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    old = put(server_url, keys.write, "h1", "/etc/motd", b"old")
    time.sleep(0.05)
    moment = repr(time.time())
    time.sleep(0.05)
    new = put(server_url, keys.write, "h1", "/etc/motd", b"new")
    put(server_url, keys.write, "h1", "/etc/later", b"later")
    assert pp(server_url, keys.read, "find", "--json", "--as-of", moment) == 0
    assert [(r["filepath"], r["sha256"]) for r in as_json(capsys)] == [("/etc/motd", old)]
    assert pp(server_url, keys.read, "find", "--json", "--path-prefix", "/etc/motd") == 0
    assert [r["sha256"] for r in as_json(capsys)] == [new]


def test_find_follows_the_cursor_to_the_limit(capsys: pytest.CaptureFixture[str]) -> None:
    with fake_server() as fake:  # the real server behind a recorder of every request
        for index in range(11):
            put(fake.backend, KEY, "h1", f"/many/f{index:02d}", b"%d" % index)
        args = ["--json", "--hostname", "h1", "--page-size", "4"]
        assert pp(fake.url, KEY, "find", *args) == 0
        everything = as_json(capsys)
        assert [r["filepath"] for r in everything] == [f"/many/f{i:02d}" for i in range(11)]
        listing = [r for r in fake.requests if r.path == "/files"]
        assert [r.query["limit"] for r in listing] == [["4"], ["4"], ["4"]]
        assert "cursor" not in listing[0].query
        assert all(len(r.query["cursor"]) == 1 for r in listing[1:])
        assert listing[1].query["cursor"] != listing[2].query["cursor"]

        fake.requests.clear()
        assert pp(fake.url, KEY, "find", *args, "--limit", "6") == 0
        assert as_json(capsys) == everything[:6]
        assert [r.query["limit"] for r in fake.requests] == [["4"], ["2"]]  # no more asked


def test_find_usage_errors_exit_2(
    server_url: str, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    for args in (
        ["--as-of", "1d", "--deleted"],
        ["--sort", "colour"],
        ["--min-size", "lots"],
        ["--mtime-after", "yesterday-ish"],
        ["--limit", "0"],
    ):
        assert pp(server_url, keys.read, "find", *args) == 2, args
        assert "ppclient find: error:" in capsys.readouterr().err


def test_deleted_files_found_by_a_rescan(
    server_url: str, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    (root / "keep").write_bytes(b"kept")
    (root / "gone").write_bytes(b"soon deleted")
    scan = ["--url", server_url, "--api-key", keys.write, "--no-progress", "--no-cache",
            "--hostname", "h1", str(root)]  # fmt: skip
    assert main(scan) == 0
    (root / "gone").unlink()
    assert main(scan) == 0  # the second scan no longer sees it: recorded as deleted
    capsys.readouterr()
    gone, keep = str(root / "gone"), str(root / "keep")

    assert pp(server_url, keys.read, "find", "--json", "--deleted") == 0
    (record,) = as_json(capsys)
    assert record["filepath"] == gone
    assert record["deleted_at"] is not None
    assert pp(server_url, keys.read, "find", "--json", "--all", "--sort", "path") == 0
    assert paths(capsys) == [gone, keep]
    assert pp(server_url, keys.read, "find", "--json") == 0
    assert paths(capsys) == [keep]
    assert pp(server_url, keys.read, "find", "--all", "--sort", "path") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-2:] == ["DELETED", "PATH"]
    assert lines[2].split()[-2:] == ["-", keep]  # the live one has no deletion time

    assert pp(server_url, keys.read, "history", "--hostname", "h1", gone, "--json") == 0
    assert [v["deleted"] for v in as_json(capsys)] == [True, False]
    assert pp(server_url, keys.read, "locations", "--include-past", "--json",
              hashlib.sha256(b"soon deleted").hexdigest()) == 0  # fmt: skip
    found = as_json(capsys)
    assert {f["filepath"] for f in found} == {gone}
    assert any(f["deleted_at"] is not None for f in found)
    assert pp(server_url, keys.read, "locations", "--include-past",
              hashlib.sha256(b"soon deleted").hexdigest()) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2  # held until deleted: one line, not a version and a tombstone
    assert lines[1].split()[-2:] == ["deleted", gone]


# --- locations and history ------------------------------------------------------------------


def test_locations_lists_every_host_and_path(
    server_url: str, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    sha = put(server_url, keys.write, "h1", "/a/copy", b"shared")
    put(server_url, keys.write, "h2", "/b/copy", b"shared")
    put(server_url, keys.write, "h2", "/b/other", b"other")
    assert pp(server_url, keys.read, "locations", sha) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["HOSTNAME", "RECORDED", "PATH"]
    assert sorted(line.split()[0] + ":" + line.split()[-1] for line in lines[1:]) == [
        "h1:/a/copy", "h2:/b/copy"
    ]  # fmt: skip
    assert pp(server_url, keys.read, "locations", sha.upper(), "--json") == 0
    found = as_json(capsys)
    assert sorted((f["hostname"], f["filepath"]) for f in found) == [
        ("h1", "/a/copy"), ("h2", "/b/copy")
    ]  # fmt: skip
    assert all(f["deleted_at"] is None and f["valid_to"] is None for f in found)


def test_locations_include_past_shows_replaced_versions(
    server_url: str, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    sha = put(server_url, keys.write, "h1", "/a/file", b"first")
    put(server_url, keys.write, "h1", "/a/file", b"second")
    assert pp(server_url, keys.read, "locations", sha, "--json") == 0
    assert as_json(capsys) == []
    assert pp(server_url, keys.read, "locations", sha, "--include-past") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["HOSTNAME", "RECORDED", "UNTIL", "STATE", "PATH"]
    assert len(lines) == 2
    assert " replaced " in lines[1]
    assert lines[1].endswith("/a/file")


def test_locations_refuses_a_bad_hash(
    server_url: str, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pp(server_url, keys.read, "locations", "not-a-hash") == 2
    assert "not a SHA-256" in capsys.readouterr().err


def test_history_newest_first(
    server_url: str, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    first = put(server_url, keys.write, "h1", "/etc/hosts", b"v1")
    second = put(server_url, keys.write, "h1", "/etc/hosts", b"v2", mode=0o100600)
    args = ["--hostname", "h1", "/etc/hosts"]
    assert pp(server_url, keys.read, "history", *args, "--json") == 0
    versions = as_json(capsys)
    assert [v["sha256"] for v in versions] == [second, first]
    assert versions[0]["valid_to"] is None
    assert versions[1]["valid_to"] is not None
    assert [v["deleted"] for v in versions] == [False, False]
    assert pp(server_url, keys.read, "history", *args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["FROM", "UNTIL", "STATE", "MODE", "SIZE", "MODIFIED", "CONTENT"]
    assert " current " in lines[1]
    assert "-rw-------" in lines[1]
    assert lines[1].endswith(second)
    assert " replaced " in lines[2]
    assert "-rw-r--r--" in lines[2]
    assert lines[2].endswith(first)


def test_history_of_an_unknown_file_exits_1(
    server_url: str, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pp(server_url, keys.read, "history", "--hostname", "h1", "/never") == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("ppclient: ")
    assert err.count("\n") == 1


# --- stats and duplicates -----------------------------------------------------------------


def _duplicated_inventory(url: str, key: str) -> str:
    """Three copies of one 1000-byte content, one unique file; the shared hash."""
    sha = put(url, key, "h1", "/one", b"d" * 1000)
    put(url, key, "h1", "/two", b"d" * 1000)
    put(url, key, "h2", "/three", b"d" * 1000)
    put(url, key, "h2", "/unique", b"u" * 10)
    return sha


def test_stats(server_url: str, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    sha = _duplicated_inventory(server_url, keys.write)
    assert pp(server_url, keys.read, "stats", "--json") == 0
    stats = as_json(capsys)
    assert (stats["files"], stats["bytes_referenced"]) == (4, 3010)
    assert (stats["distinct_contents"], stats["bytes_stored"]) == (2, 1010)
    assert stats["bytes_saved"] == 2000
    assert stats["hosts"] == [
        {"hostname": "h1", "files": 2, "bytes": 2000},
        {"hostname": "h2", "files": 2, "bytes": 1010},
    ]
    assert stats["duplicate_groups"][0]["sha256"] == sha
    assert sum(g["files_added"] for g in stats["growth"]) == 4

    assert pp(server_url, keys.read, "stats", "--hostname", "h2", "--bucket", "month") == 0
    out = capsys.readouterr().out
    assert "Files:" in out
    assert "Growth per month:" in out
    files_line = next(line for line in out.splitlines() if line.startswith("Files:"))
    assert files_line.split()[-1] == "2"


def test_duplicates(server_url: str, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    sha = _duplicated_inventory(server_url, keys.write)
    assert pp(server_url, keys.read, "duplicates", "--json") == 0
    (group,) = as_json(capsys)
    assert (group["sha256"], group["count"], group["size"], group["wasted_bytes"]) == (
        sha, 3, 1000, 2000
    )  # fmt: skip
    assert pp(server_url, keys.read, "duplicates", "--paths") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["WASTED", "COPIES", "SIZE", "SHA256"]
    assert lines[1].split() == ["2.0K", "3", "1000", sha]
    assert sorted(line.strip() for line in lines[2:]) == ["h1:/one", "h1:/two", "h2:/three"]
    assert pp(server_url, keys.read, "duplicates", "--hostname", "h1", "--json") == 0
    (group,) = as_json(capsys)
    assert group["count"] == 2


# --- errors, dispatch and configuration ---------------------------------------------------


def test_refused_key_exits_2(server_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert pp(server_url, "0" * 64, "find") == 2
    assert "refused the API key (HTTP 401)" in capsys.readouterr().err


def test_server_refusal_is_shown_with_its_detail(
    server_url: str, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pp(server_url, keys.read, "find", "--hostname", "h" * 300) == 2
    err = capsys.readouterr().err
    assert err.startswith("ppclient: ")
    assert "hostname" in err
    assert "at most 255 characters (HTTP 422)" in err


def test_connection_refused_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    started = time.monotonic()
    assert pp(url, "k", "stats") == 1
    assert time.monotonic() - started < 5  # not retried: the server is not there at all
    err = capsys.readouterr().err
    assert err.startswith(f"ppclient: cannot connect to {url}")
    assert err.count("\n") == 1


def test_command_words_dispatch_only_in_first_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["find", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: ppclient find")
    assert main(["--help"]) == 0
    assert "write ./find or --path find" in capsys.readouterr().out
    (tmp_path / "find").mkdir()
    (tmp_path / "find" / "f").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    for args in (["./find"], ["--path", "find"]):
        assert main(["--dry-run", "--no-cache", "--no-progress", *args]) == 0
        assert counts(capsys.readouterr().out)["Files seen"] == 1


def test_connection_settings_come_from_env_and_config_but_filters_do_not(
    server_url: str, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    put(server_url, keys.write, "h1", "/mine")
    put(server_url, keys.write, "h2", "/theirs")
    config = tmp_path / "ppclient.conf"
    # An upload client's config: its hostname and excludes must not break or filter find.
    config.write_text(f"url = {server_url}\nhostname = h1\nexclude = [.git]\n")
    monkeypatch.setenv("PUTPLACE_API_KEY", keys.read)
    monkeypatch.setenv("PUTPLACE_HOSTNAME", "h1")
    assert main(["find", "--config", str(config), "--json"]) == 0
    assert sorted(paths(capsys)) == ["/mine", "/theirs"]
    # The namespace an upload client's config names is the one read, as from the
    # environment.
    put(server_url, keys.admin, "h1", "/lab-only", namespace="lab")
    config.write_text(f"url = {server_url}\nnamespace = lab\n")
    monkeypatch.setenv("PUTPLACE_API_KEY", keys.admin)
    assert main(["find", "--config", str(config), "--json"]) == 0
    assert paths(capsys) == ["/lab-only"]
    monkeypatch.setenv("PUTPLACE_URL", "http://127.0.0.1:1")  # the environment wins
    assert main(["find", "--config", str(config), "--json"]) == 1
    assert "cannot connect" in capsys.readouterr().err


def test_what_the_server_says_is_shown_literally(capsys: pytest.CaptureFixture[str]) -> None:
    """A refusal's detail quotes the server (or a proxy in front of it): it must not
    drive the terminal either."""

    def refused(error: ApiError) -> Callable[[], int]:
        def body() -> int:
            raise error

        return body

    assert run(refused(ApiError(502, "<html>\x1b[2Jbad gateway"))) == 1
    assert run(refused(AuthError(401, "key\x1b]0;owned\x07"))) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err
    assert "<html>\\x1b[2Jbad gateway (HTTP 502)" in err
    assert "key\\x1b]0;owned\\x07" in err


def test_missing_key_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats"]) == 2
    assert "an API key is needed" in capsys.readouterr().err


# --- values on the command line and in the output -----------------------------------------


def test_times_accept_iso_unix_seconds_and_ages() -> None:
    assert float(point_in_time("2026-11-30T12:00:00Z")) == 1_796_040_000.0
    assert float(point_in_time("2026-11-30T14:00:00+02:00")) == 1_796_040_000.0
    assert float(point_in_time("1796040000.5")) == 1_796_040_000.5
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    assert float(point_in_time("7d", now=lambda: now)) == (now - timedelta(days=7)).timestamp()
    assert float(point_in_time("90m ago", now=lambda: now)) == now.timestamp() - 5400
    naive = datetime(2026, 11, 30, 12).astimezone().timestamp()  # no zone: local time
    assert float(point_in_time("2026-11-30T12:00")) == naive


def test_undecodable_names_are_shown_escaped_not_crashing() -> None:
    # JSON may carry lone surrogates ("\udce9"), which no terminal encoding can print.
    record = {"filepath": "/x/caf\udce9", "hostname": "h", "file_size": 1, "sha256": "ab" * 32}
    row = find_row(record, long=False, deleted=False)
    assert row[-1] == "/x/caf\\udce9"
    row[-1].encode("ascii")  # printable anywhere
