"""HTTPS: ppserver serves TLS from a certificate and key; ppclient verifies it."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import ssl
import subprocess
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from putplace.config import Settings
from tests.server.test_metrics import samples
from tests.support.processes import (
    BIN,
    run_ppserver,
    settings_env,
    stop_process,
    wait_until_healthy,
)
from tests.support.servers import free_port


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "putplace-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_https_serving_and_client_verification(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/putplace.db",
        storage_url=f"file://{tmp_path}/blobs",
        tls_cert_file=cert,
        tls_key_file=key,
    )
    api_key = json.loads(
        run_ppserver(settings, "keys", "create", "--name", "tls", "--json", cwd=tmp_path).stdout
    )["api_key"]
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(BIN / "ppserver"), "serve", "--port", str(port)],
        cwd=tmp_path, env=settings_env(settings),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        trust = ssl.create_default_context(cafile=str(cert))
        wait_until_healthy(url, server, verify=trust)
        assert httpx.get(f"{url}/", verify=trust).json()["status"] == "running"
        (tmp_path / "tree").mkdir()
        (tmp_path / "tree" / "f").write_bytes(b"over tls")
        env = {**os.environ, "PUTPLACE_API_KEY": api_key}
        base = [
            str(BIN / "ppclient"),
            "--url",
            url,
            "--no-progress",
            "--no-cache",
            "--retries",
            "0",
        ]
        trusted = subprocess.run(
            [*base, "--ca-bundle", str(cert), str(tmp_path / "tree")],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert trusted.returncode == 0, trusted.stderr
        untrusted = subprocess.run(
            [*base, str(tmp_path / "tree")],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert untrusted.returncode != 0
        assert "certificate" in (untrusted.stdout + untrusted.stderr).lower()
        # Its expiry is exported, so an alert can warn before it lapses.
        scraped = httpx.get(f"{url}/metrics", headers={"X-API-Key": api_key}, verify=trust)
        expiry = x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc
        name = 'putplace_tls_certificate_expiry_timestamp_seconds{certificate="serving"}'
        assert samples(scraped.text)[name] == expiry.timestamp()
    finally:
        stop_process(server)


def test_tls_settings_must_come_in_pairs(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path)
    settings = Settings(database_url=f"sqlite:///{tmp_path}/p.db")
    env = {**settings_env(settings), "PUTPLACE_TLS_CERT_FILE": str(cert)}
    result = subprocess.run(
        [str(BIN / "ppserver"), "check"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "tls_key_file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
