"""S3 for tests: moto's S3 HTTP server in a subprocess, or the S3 named by the environment.

By default a ``moto.server`` process is started on a free loopback port for the session,
with dummy credentials in ``os.environ`` (so obstore's credential chain, and ``ppserver``
processes started by tests, find them), and stopped at the end.

``PUTPLACE_TEST_S3_ENDPOINT`` points the same tests at another S3 instead (MinIO, AWS...):
credentials come from the environment, the bucket from ``PUTPLACE_TEST_S3_BUCKET``
(default ``putplace-test``; created when missing), the region from
``PUTPLACE_TEST_S3_REGION`` (default ``us-east-1``). Every test uses its own key prefix.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config

from tests.support.processes import stop_process
from tests.support.servers import free_port

DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "putplace-test-key",
    "AWS_SECRET_ACCESS_KEY": "putplace-test-secret",
}
#: Variables that would steer the credential chain away from the dummy keys.
CLEARED = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN")


def s3_client(config: dict[str, Any]) -> Any:
    """A boto3 client for the test S3 (to look behind the blob store's back)."""
    return boto3.client(
        "s3",
        endpoint_url=config["s3_endpoint_url"],
        region_name=config["s3_region"],
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
    )


def _ensure_bucket(config: dict[str, Any]) -> None:
    client = s3_client(config)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if config["bucket"] not in existing:
        extra: dict[str, Any] = {}
        if config["s3_region"] != "us-east-1":
            extra["CreateBucketConfiguration"] = {"LocationConstraint": config["s3_region"]}
        # On a shared endpoint another pytest-xdist worker may have made it first.
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=config["bucket"], **extra)


def _start_moto(port: int, log_path: str) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            with open(log_path, encoding="utf-8", errors="replace") as log_file:
                output = log_file.read()[-2000:]
            pytest.fail(f"moto S3 server exited with {process.returncode}:\n{output}")
        try:
            httpx.get(f"{url}/moto-api/", timeout=1)
            return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    pytest.fail(f"moto S3 server did not answer on {url} within 30 s")


@pytest.fixture(scope="session")
def s3_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``bucket`` plus the Settings fields (``s3_*``) that reach the test S3."""
    endpoint = os.environ.get("PUTPLACE_TEST_S3_ENDPOINT")
    if endpoint:
        config = {
            "bucket": os.environ.get("PUTPLACE_TEST_S3_BUCKET", "putplace-test"),
            "s3_endpoint_url": endpoint,
            "s3_region": os.environ.get("PUTPLACE_TEST_S3_REGION", "us-east-1"),
            "s3_allow_http": endpoint.startswith("http://"),
        }
        _ensure_bucket(config)
        yield config
        return

    saved = {name: os.environ.get(name) for name in (*DUMMY_CREDENTIALS, *CLEARED)}
    os.environ.update(DUMMY_CREDENTIALS)
    for name in CLEARED:
        os.environ.pop(name, None)
    port = free_port()
    log_path = str(tmp_path_factory.mktemp("moto") / "moto.log")
    process = _start_moto(port, log_path)
    try:
        config = {
            "bucket": "putplace-test",
            "s3_endpoint_url": f"http://127.0.0.1:{port}",
            "s3_region": "us-east-1",
            "s3_allow_http": True,
        }
        _ensure_bucket(config)
        yield config
    finally:
        stop_process(process, timeout=10)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
