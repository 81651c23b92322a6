"""Helpers shared by the client tests: run ppclient in process, read its summary."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from putplace.client.cli import main
from tests.client.fake_server import KEY


def counts(output: str) -> dict[str, int]:
    """The summary ppclient printed, as label -> number."""
    return {
        m.group(1): int(m.group(2).replace(",", ""))
        for m in re.finditer(r"^  (.+?):\s+([\d,]+)$", output, re.MULTILINE)
    }


def ppclient(url: str, *args: str) -> int:
    """``ppclient`` in process as host h1 (10.1.2.3), without cache or progress."""
    return main(["--url", url, "--api-key", KEY, "--no-progress", "--no-cache",
                 "--hostname", "h1", "--ip", "10.1.2.3", *args])  # fmt: skip


def record(content: bytes = b"x", filepath: str = "/f") -> dict[str, Any]:
    """A complete /put_file body for *content*."""
    return {
        "filepath": filepath, "hostname": "h", "ip_address": "10.0.0.1",
        "sha256": hashlib.sha256(content).hexdigest(), "file_size": len(content),
        "file_mode": 0o100644, "file_uid": 0, "file_gid": 0, "file_mtime": 1.0,
        "file_atime": 1.0, "file_ctime": 1.0, "is_symlink": False, "link_target": None,
    }  # fmt: skip
