"""``ppserver`` as a user runs it: a real process, real settings sources, real stores."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import free_port

PPSERVER = str(Path(sys.executable).with_name("ppserver"))


def ppserver(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PUTPLACE_")}
    return subprocess.run(
        [PPSERVER, *args],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_first_admin_key_from_the_command_line(tmp_path: Path) -> None:
    created = ppserver(tmp_path, "keys", "create", "--name", "admin", "--scope", "admin", "--json")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert re.fullmatch(r"[0-9a-f]{64}", key["api_key"])
    assert key["scope"] == "admin"
    assert (tmp_path / "putplace-data" / "putplace.db").is_file()

    listed = ppserver(tmp_path, "keys", "list", "--json")
    assert listed.returncode == 0
    assert key["api_key"] not in listed.stdout
    assert [k["name"] for k in json.loads(listed.stdout)] == ["admin"]

    human = ppserver(tmp_path, "keys", "create", "--name", "laptop")
    assert human.returncode == 0
    assert re.search(r"^[0-9a-f]{64}$", human.stdout, re.MULTILINE)
    assert "not shown again" in human.stdout

    revoked = ppserver(tmp_path, "keys", "revoke", key["_id"])
    assert revoked.returncode == 0
    after = json.loads(ppserver(tmp_path, "keys", "list", "--json").stdout)
    assert [k["is_active"] for k in after] == [False, True]
    assert ppserver(tmp_path, "keys", "revoke", "424242").returncode == 1


def test_key_lifecycle_from_the_command_line(tmp_path: Path) -> None:
    made = ppserver(tmp_path, "keys", "create", "--name", "web\x1b[2Jfleet", "--host", "web-*",
                    "--host", "Mail", "--expires-in", "90d", "--json")  # fmt: skip
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    assert key["hosts"] == ["mail", "web-*"]
    assert key["expires_at"] is not None

    listed = ppserver(tmp_path, "keys", "list")
    assert "\x1b" not in listed.stdout  # the hostile name is shown escaped, never executed
    assert "web\\x1b[2Jfleet" in listed.stdout
    assert "mail,web-*" in listed.stdout
    assert " active " in listed.stdout

    rotated = ppserver(tmp_path, "keys", "rotate", key["_id"], "--overlap", "0", "--json")
    assert rotated.returncode == 0, rotated.stderr
    new = json.loads(rotated.stdout)
    assert (new["hosts"], new["name"]) == (key["hosts"], key["name"])
    after = {k["id"]: k for k in json.loads(ppserver(tmp_path, "keys", "list", "--json").stdout)}
    assert after[key["_id"]]["status"] == "expired"
    assert after[key["_id"]]["replaced_by"] == new["_id"]
    again = ppserver(tmp_path, "keys", "rotate", key["_id"])
    assert (again.returncode, again.stderr) == (
        1, "ppserver: the key is expired; only an active key can be rotated\n"
    )  # fmt: skip

    assert ppserver(tmp_path, "keys", "delete", key["_id"]).returncode == 0
    assert ppserver(tmp_path, "keys", "delete", key["_id"]).returncode == 1
    bad = ppserver(tmp_path, "keys", "create", "--name", "x", "--expires-in", "soon")
    assert bad.returncode == 2
    assert "not a duration (like 90d, 12h, 30m): 'soon'" in bad.stderr


def test_bad_key_name_is_one_clear_line(tmp_path: Path) -> None:
    result = ppserver(tmp_path, "keys", "create", "--name", "x" * 300)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "--name" in result.stderr


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PUTPLACE_PORT": "eighty"}, "PUTPLACE_PORT"),
        ({"PUTPLACE_PORT": "70000"}, "PUTPLACE_PORT"),
        ({"PUTPLACE_DATABASE_URL": "postgres://db/x"}, "PUTPLACE_DATABASE_URL"),
        ({"PUTPLACE_STORAGE_URL": "ftp://x"}, "PUTPLACE_STORAGE_URL"),
        ({"PUTPLACE_LOG_LEVEL": "loud"}, "PUTPLACE_LOG_LEVEL"),
    ],
)
def test_bad_setting_stops_start_up_with_one_line(
    tmp_path: Path, env: dict[str, str], named: str
) -> None:
    result = ppserver(tmp_path, "check", **env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert named in lines[0]
    assert not (tmp_path / "putplace-data").exists()


def test_settings_from_toml_and_dotenv(tmp_path: Path) -> None:
    (tmp_path / "ppserver.toml").write_text(
        'database_url = "sqlite:///from-toml.db"\nstorage_url = "file://toml-blobs"\n'
    )
    (tmp_path / ".env").write_text("PUTPLACE_STORAGE_URL=file://env-blobs\n")
    result = ppserver(tmp_path, "check")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "from-toml.db").is_file()
    assert (tmp_path / "env-blobs").is_dir()  # .env beats TOML
    assert not (tmp_path / "toml-blobs").exists()

    other = tmp_path / "other.toml"
    other.write_text('database_url = "sqlite:///other.db"\n')
    assert ppserver(tmp_path, "check", PUTPLACE_CONFIG=str(other)).returncode == 0
    assert (tmp_path / "other.db").is_file()

    missing = ppserver(tmp_path, "check", PUTPLACE_CONFIG=str(tmp_path / "nope.toml"))
    assert missing.returncode == 2
    assert "nope.toml" in missing.stderr

    (tmp_path / "ppserver.toml").write_text("databse_url = 'sqlite:///typo.db'\n")
    typo = ppserver(tmp_path, "check")
    assert typo.returncode == 2
    assert "databse_url" in typo.stderr

    (tmp_path / "ppserver.toml").write_text("database_url = \n")
    broken = ppserver(tmp_path, "check")
    assert broken.returncode == 2
    assert len(broken.stderr.strip().splitlines()) == 1


def test_check_reports_a_store_that_cannot_work(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    result = ppserver(tmp_path, "check", PUTPLACE_STORAGE_URL=f"file://{tmp_path}/a-file/blobs")
    assert result.returncode == 1
    assert "storage: FAILED" in result.stdout
    assert "database: ok" in result.stdout


def test_check_tries_redis_when_told_to_use_it(tmp_path: Path, redis_url: str) -> None:
    answering = ppserver(tmp_path, "check", PUTPLACE_REDIS_URL=redis_url)
    assert answering.returncode == 0, answering.stdout + answering.stderr
    assert "redis: ok (127.0.0.1:" in answering.stdout
    gone = f"redis://:secret@127.0.0.1:{free_port()}/0"
    failing = ppserver(tmp_path, "check", PUTPLACE_REDIS_URL=gone)
    assert failing.returncode == 1
    assert "redis: FAILED" in failing.stdout
    assert "secret" not in failing.stdout + failing.stderr
