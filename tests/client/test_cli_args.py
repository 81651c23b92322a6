"""Command line, config file and environment: what ppclient ends up using."""

from __future__ import annotations

from pathlib import Path

import pytest

from putplace.client.cli import main, parse_args
from putplace.client.uploader import base_url


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No PUTPLACE_* from the outside, and no ~/ppclient.conf of the real user."""
    import os

    for name in list(os.environ):
        if name.startswith("PUTPLACE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_positional_paths_and_repeated_path_flag_combine() -> None:
    args = parse_args(["a", "--path", "b", "--path", "c", "d", "--dry-run"])
    assert args.paths == ["a", "d", "b", "c"]
    assert parse_args(["--dry-run", "a", "--", "-dash"]).paths == ["a", "-dash"]


def test_defaults() -> None:
    args = parse_args(["--dry-run", "x"])
    assert (args.url, args.retries, args.timeout, args.exclude) == (
        "http://localhost:8000", 5, 60.0, []
    )  # fmt: skip
    assert (args.ca_bundle, args.insecure) == (None, False)  # TLS verified by default
    assert (args.bundle_threshold, args.bundle_bytes, args.bundle_files) == (
        1024 * 1024, 24 * 1024 * 1024, 5000
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "size"),
    [("4096", 4096), ("64K", 65536), ("64KiB", 65536), ("1.5m", 1572864), ("2G", 2 << 30),
     ("0", 0)],
)  # fmt: skip
def test_sizes_take_binary_units(text: str, size: int) -> None:
    assert parse_args(["--dry-run", "x", "--bundle-threshold", text]).bundle_threshold == size


@pytest.mark.parametrize(
    "url",
    ["http://h:8000", "http://h:8000/", "http://h:8000/put_file", "http://h:8000/put_file/"],
)
def test_url_may_end_in_put_file(url: str) -> None:
    assert base_url(url) == "http://h:8000"


def test_config_file_then_environment_then_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "pp.conf"
    config.write_text(
        "url = http://from-config:1\napi-key = config-key\nhostname = config-host\n"
        'exclude = [".git", "*.log"]\nretries = 7\n'
    )
    args = parse_args(["--config", str(config), "x"])
    assert (args.url, args.api_key, args.hostname) == (
        "http://from-config:1", "config-key", "config-host"
    )  # fmt: skip
    assert (args.exclude, args.retries) == ([".git", "*.log"], 7)

    monkeypatch.setenv("PUTPLACE_API_KEY", "env-key")
    monkeypatch.setenv("PUTPLACE_HOSTNAME", "env-host")
    monkeypatch.setenv("PUTPLACE_DRY_RUN", "true")
    args = parse_args(["--config", str(config), "x"])
    assert (args.api_key, args.hostname, args.dry_run) == ("env-key", "env-host", True)
    assert args.url == "http://from-config:1"

    args = parse_args(["--config", str(config), "--hostname", "cli-host", "x"])
    assert args.hostname == "cli-host"


def test_default_config_file_is_read_from_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "ppclient.conf").write_text("api-key = home-key\n")
    assert parse_args(["x"]).api_key == "home-key"


def test_paths_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUTPLACE_PATH", "[/srv, /etc]")
    assert parse_args(["--dry-run"]).paths == ["/srv", "/etc"]


@pytest.mark.parametrize(
    "args",
    [
        [],  # no path
        ["x"],  # no key (and not a dry run)
        ["--api-key", "k", "--url", "ftp://h", "x"],
        ["--api-key", "k", "--ca-bundle", "/no/such/file", "x"],
        ["--api-key", "k", "--retries", "-1", "x"],
        ["--api-key", "k", "--timeout", "0", "x"],
        ["--api-key", "k", "--retries", "many", "x"],
        ["--api-key", "k", "--bundle-bytes", "lots", "x"],
        ["--api-key", "k", "--bundle-bytes", "0", "x"],
        ["--api-key", "k", "--bundle-threshold", "-1", "x"],
        ["--api-key", "k", "--bundle-files", "0", "x"],
        ["--api-key", "k", "--no-such-flag", "x"],
        ["--config", "/no/such/config", "x"],
    ],
)
def test_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    assert "error" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--path", "--url", "--api-key", "--config", "--exclude", "--hostname", "--ip",
                 "--dry-run", "--verbose", "--ca-bundle", "--timeout", "--retries",
                 "--bundle-threshold", "--bundle-bytes", "--bundle-files"):  # fmt: skip
        assert flag in out


def test_ip_must_be_an_address(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_args(["--dry-run", "x", "--ip", "2001:DB8::1"]).ip == "2001:db8::1"
    with pytest.raises(SystemExit) as exited:
        parse_args(["--dry-run", "x", "--ip", "web-01"])
    assert exited.value.code == 2
    assert "not an IP address: 'web-01'" in capsys.readouterr().err


def test_an_exclude_that_cannot_be_matched_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--dry-run", "x", "--exclude", "*.log", "--exclude", "[z-a]"])
    assert exited.value.code == 2  # not a traceback from the walk
    assert "not a valid exclude pattern '[z-a]': bad character range z-a" in (
        capsys.readouterr().err
    )


def test_start_up_leaves_the_display_and_pattern_libraries_until_needed() -> None:
    """rich and pathspec were 47 ms of every run's start (``-X importtime``): a run
    without excludes, showing nothing but its summary, never needs them."""
    import subprocess
    import sys

    loaded = subprocess.run(
        [
            sys.executable, "-c",
            "import sys, putplace.client.cli; "
            "print(sorted(m for m in ('rich', 'pathspec') if m in sys.modules))",
        ],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    assert loaded == "[]"


def test_a_summary_nobody_reads_ends_the_run_quietly(tmp_path: Path) -> None:
    """stdout a pipe whose reader left (``ppclient ... | head -0``): exit 1, no traceback."""
    import os
    import subprocess
    import sys

    (tmp_path / "a").write_text("a")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [str(Path(sys.executable).parent / "ppclient"), "--dry-run", "--no-cache",
             "--no-progress", str(tmp_path)],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert done.returncode == 1
    assert done.stderr == ""
