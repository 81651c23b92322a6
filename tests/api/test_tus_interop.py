"""A third-party tus client (tuspy) uploads to PutPlace, resuming after its connection is
cut mid-way; on every stack."""

from __future__ import annotations

import hashlib
import io
import os
from urllib.parse import urlsplit

import httpx
from tusclient.client import TusClient

from tests.conftest import Keys
from tests.support.payloads import metadata, put
from tests.support.proxy import cutting_proxy

MIB = 1024 * 1024


async def test_tuspy_uploads_and_resumes_after_a_cut(
    api: httpx.AsyncClient, server_url: str, keys: Keys
) -> None:
    content = os.urandom(7 * MIB + 3)
    record = metadata(content)
    assert (await put(api, record)).status_code == 201
    with cutting_proxy(server_url, cut_after=4 * MIB) as proxy:
        client = TusClient(f"{proxy.url}/tus/", headers={"X-API-Key": keys.write})
        uploader = client.uploader(
            # A retry may find the server still closing the cut request (423): wait a bit.
            file_stream=io.BytesIO(content), chunk_size=2 * MIB, retries=5, retry_delay=1,
            metadata={"sha256": record["sha256"], "filename": "disk.img"},
            upload_checksum=True,
        )  # fmt: skip
        uploader.upload()
        assert proxy.cuts == 1  # the connection was cut once, mid-chunk
    assert uploader.offset == len(content)
    stored = await api.get(f"/download/{record['sha256']}")
    assert stored.status_code == 200
    assert hashlib.sha256(stored.content).hexdigest() == record["sha256"]
    head = await api.head(urlsplit(uploader.url).path, headers={"Tus-Resumable": "1.0.0"})
    assert head.headers["Upload-Offset"] == str(len(content))
