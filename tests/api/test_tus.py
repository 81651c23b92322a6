"""Resumable uploads over tus 1.0, every extension, on every stack (local disk, MongoDB,
S3), over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import os
import socket
import threading
import zlib
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from putplace.auth import utcnow
from putplace.batches import LARGE_BATCH, LARGE_CONTENT
from putplace.config import Settings
from putplace.service import resumable
from putplace.service.resumable import reclaim_expired
from putplace.service.stores import open_stores
from tests.conftest import Keys
from tests.support import tus
from tests.support.payloads import metadata, put
from tests.support.processes import run_ppserver
from tests.support.servers import running_server

MIB = 1024 * 1024


async def registered(api: httpx.AsyncClient, content: bytes) -> dict[str, str]:
    body = metadata(content)
    assert (await put(api, body)).status_code == 201
    return body


async def downloaded(api: httpx.AsyncClient, sha256: str) -> bytes | None:
    response = await api.get(f"/download/{sha256}")
    return response.content if response.status_code == 200 else None


async def staged(settings: Settings) -> list[str]:
    """Ids of uploads with bytes in the staging area."""
    async with open_stores(settings) as stores:
        return [upload_id async for upload_id in stores.blobs.staging().list_ids()]


async def test_discovery_needs_no_key(server_url: str) -> None:
    async with httpx.AsyncClient(base_url=server_url) as anonymous:
        response = await anonymous.options("/tus/")
    assert response.status_code == 204
    assert response.headers["Tus-Version"] == "1.0.0"
    extensions = set(response.headers["Tus-Extension"].split(","))
    assert extensions == {
        "creation", "creation-with-upload", "termination", "expiration", "checksum",
        "concatenation",
    }  # fmt: skip
    offered = response.headers["Tus-Checksum-Algorithm"].split(",")
    assert offered[0] == "crc32c"  # the fastest first: what ppclient picks
    assert {"crc32", "sha1", "sha256"} <= set(offered)
    assert int(response.headers["Tus-Max-Size"]) > 0


async def test_upload_in_parts_with_checksums(api: httpx.AsyncClient, settings: Settings) -> None:
    content = os.urandom(9 * MIB + 5)  # crosses S3 part boundaries unevenly
    record = await registered(api, content)
    url = await tus.create_for(api, record, filename="disk.img")
    head = await api.head(url, headers=tus.TUS)
    assert head.headers["Upload-Offset"] == "0"
    assert head.headers["Upload-Length"] == str(len(content))
    assert head.headers["Cache-Control"] == "no-store"
    assert "Upload-Expires" in head.headers
    cuts = [0, 3 * MIB + 1, 5 * MIB, 7 * MIB, len(content) - 1000, len(content)]
    for (start, end), algorithm in zip(
        itertools.pairwise(cuts), ["sha1", "sha256", "crc32", "md5", "crc32c"], strict=True
    ):
        response = await tus.patch(api, url, start, content[start:end], checksum=algorithm)
        assert response.status_code == 204, response.text
        assert response.headers["Upload-Offset"] == str(end)
        assert response.headers["Tus-Resumable"] == "1.0.0"
        if end < len(content):
            assert await downloaded(api, record["sha256"]) is None  # not before it is whole
    assert await downloaded(api, record["sha256"]) == content
    assert await tus.offset(api, url) == len(content)
    assert (await put(api, record)).json()["upload_required"] is False
    assert await staged(settings) == []


async def test_creation_with_upload(api: httpx.AsyncClient) -> None:
    content = os.urandom(100_000)
    record = await registered(api, content)
    response = await tus.create(api, len(content), body=content, sha256=record["sha256"])
    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == str(len(content))
    assert await downloaded(api, record["sha256"]) == content


async def test_content_already_sent_completes_at_once(api: httpx.AsyncClient) -> None:
    content = os.urandom(50_000)
    record = await registered(api, content)
    await tus.create(api, len(content), body=content, sha256=record["sha256"])
    again = await tus.create(api, len(content), sha256=record["sha256"])
    assert again.status_code == 201
    assert again.headers["Upload-Offset"] == str(len(content))  # nothing to send


async def test_empty_content(api: httpx.AsyncClient) -> None:
    record = await registered(api, b"")
    response = await tus.create(api, 0, sha256=record["sha256"])
    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == "0"
    assert await downloaded(api, record["sha256"]) == b""


async def test_wrong_offset_is_409_and_changes_nothing(api: httpx.AsyncClient) -> None:
    content = os.urandom(10_000)
    record = await registered(api, content)
    url = await tus.create_for(api, record)
    assert (await tus.patch(api, url, 0, content[:4000])).status_code == 204
    for wrong in (0, 3999, 4001, 10_000):
        response = await tus.patch(api, url, wrong, content[wrong : wrong + 10])
        assert response.status_code == 409, wrong
    assert await tus.offset(api, url) == 4000
    assert (await tus.patch(api, url, 4000, content[4000:])).status_code == 204
    assert await downloaded(api, record["sha256"]) == content


async def test_checksum_mismatch_is_460_and_not_acknowledged(api: httpx.AsyncClient) -> None:
    content = os.urandom(20_000)
    record = await registered(api, content)
    url = await tus.create_for(api, record)
    digest = hashlib.sha1(b"something else").digest()
    bad = {"Upload-Checksum": "sha1 " + base64.b64encode(digest).decode()}
    response = await tus.patch(api, url, 0, content, headers=bad)
    assert response.status_code == 460
    assert await tus.offset(api, url) == 0
    assert await downloaded(api, record["sha256"]) is None
    wrong_crc = base64.b64encode(zlib.crc32(b"something else").to_bytes(4, "big")).decode()
    bad_crc = await tus.patch(
        api, url, 0, content, headers={"Upload-Checksum": f"crc32 {wrong_crc}"}
    )
    assert bad_crc.status_code == 460
    assert await tus.offset(api, url) == 0
    unknown = await tus.patch(api, url, 0, content, headers={"Upload-Checksum": "blake3 AAAA"})
    assert unknown.status_code == 400
    # No digest, or one of the wrong length, is a malformed header, not a mismatch.
    for malformed in ("sha256", "crc32 AA==", "sha1 " + "A" * 40):
        response = await tus.patch(api, url, 0, content, headers={"Upload-Checksum": malformed})
        assert response.status_code == 400, malformed
        assert "base64 digest of" in response.json()["detail"]
    assert await tus.offset(api, url) == 0
    assert (await tus.patch(api, url, 0, content, checksum="sha256")).status_code == 204
    assert await downloaded(api, record["sha256"]) == content


async def test_a_refused_request_mid_part_loses_nothing_acknowledged(
    api: httpx.AsyncClient,
) -> None:
    """On S3 the bytes after the last whole part wait in a tail object: a request that is
    refused must not take it away from the next one."""
    content = os.urandom(12 * MIB)
    record = await registered(api, content)
    url = await tus.create_for(api, record)
    assert (await tus.patch(api, url, 0, content[: 3 * MIB])).status_code == 204
    digest = base64.b64encode(hashlib.sha256(b"not these bytes").digest()).decode()
    refused = await tus.patch(
        api, url, 3 * MIB, content[3 * MIB : 7 * MIB],
        headers={"Upload-Checksum": f"sha256 {digest}"},
    )  # fmt: skip
    assert refused.status_code == 460
    assert (await tus.patch(api, url, 3 * MIB, content[3 * MIB :])).status_code == 204
    assert await downloaded(api, record["sha256"]) == content


async def test_content_not_matching_its_hash_is_discarded(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    claimed, sent = os.urandom(30_000), os.urandom(30_000)
    record = await registered(api, claimed)
    url = await tus.create_for(api, record)
    assert (await tus.patch(api, url, 0, sent[:10_000])).status_code == 204
    response = await tus.patch(api, url, 10_000, sent[10_000:])
    assert response.status_code == 400
    assert "hash" in response.json()["detail"]
    assert await downloaded(api, record["sha256"]) is None
    assert (await api.head(url, headers=tus.TUS)).status_code == 404
    assert await staged(settings) == []
    assert (await put(api, record)).json()["upload_required"] is True


async def test_bad_requests_are_refused(api: httpx.AsyncClient) -> None:
    content = os.urandom(1000)
    record = await registered(api, content)
    sha = record["sha256"]
    no_version = await api.post("/tus/", headers={"Upload-Length": "1000"})
    assert no_version.status_code == 412
    assert no_version.headers["Tus-Version"] == "1.0.0"
    assert no_version.headers["Tus-Resumable"] == "1.0.0"
    cases = {
        "unregistered": (await tus.create(api, 1000, sha256="ab" * 32), 404),
        "length": (await tus.create(api, 999, sha256=sha), 400),
        "no hash": (await tus.create(api, 1000, filename="x"), 400),
        "bad hash": (await tus.create(api, 1000, sha256="zz"), 400),
        "no length": (await tus.create(api, None, sha256=sha), 400),
        "negative": (await tus.create(api, None, sha256=sha, headers={"Upload-Length": "-1"}), 400),
        "metadata": (await api.post("/tus/", headers={**tus.TUS, "Upload-Length": "1000",
                                                       "Upload-Metadata": "sha256 !!!"}), 400),
        "defer": (await tus.create(api, None, sha256=sha,
                                   headers={"Upload-Defer-Length": "1"}), 400),
        "concat": (await tus.create(api, None, concat="final;/tus/nothing"), 400),
    }  # fmt: skip
    for name, (response, expected) in cases.items():
        assert response.status_code == expected, (name, response.text)
    url = await tus.create_for(api, record)
    wrong_type = await api.patch(
        url, headers={**tus.TUS, "Upload-Offset": "0", "Content-Type": "text/plain"}, content=b"x"
    )
    assert wrong_type.status_code == 415
    no_offset = await api.patch(
        url, headers={**tus.TUS, "Content-Type": tus.OFFSET_TYPE}, content=b"x"
    )
    assert no_offset.status_code == 400
    too_long = await tus.patch(api, url, 0, content + b"more")
    assert too_long.status_code == 413
    assert await tus.offset(api, url) == 0

    async def streamed() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        yield content
        yield b"more"

    chunked = await api.patch(
        url, headers={**tus.TUS, "Upload-Offset": "0", "Content-Type": tus.OFFSET_TYPE},
        content=streamed(),
    )  # fmt: skip
    assert chunked.status_code == 413
    assert await tus.offset(api, url) == 0
    assert (await api.head("/tus/" + "0" * 32, headers=tus.TUS)).status_code == 404
    assert (await api.head("/tus/../../etc", headers=tus.TUS)).status_code == 404


async def test_termination_frees_the_upload(api: httpx.AsyncClient, settings: Settings) -> None:
    content = os.urandom(6 * MIB)
    record = await registered(api, content)
    url = await tus.create_for(api, record)
    assert (await tus.patch(api, url, 0, content[: 5 * MIB + 3])).status_code == 204
    assert len(await staged(settings)) == 1
    response = await api.delete(url, headers=tus.TUS)
    assert response.status_code == 204
    assert (await api.head(url, headers=tus.TUS)).status_code == 404
    assert (await tus.patch(api, url, 5 * MIB + 3, content[5 * MIB + 3 :])).status_code == 404
    assert await staged(settings) == []
    assert await downloaded(api, record["sha256"]) is None


async def test_other_keys_cannot_touch_an_upload(
    api: httpx.AsyncClient, server_url: str, keys: Keys
) -> None:
    content = os.urandom(1000)
    url = await tus.create_for(api, await registered(api, content))
    async with httpx.AsyncClient(base_url=server_url, headers={"X-API-Key": keys.read}) as reader:
        assert (await reader.head(url, headers=tus.TUS)).status_code == 403
        assert (await tus.patch(reader, url, 0, content)).status_code == 403
    async with httpx.AsyncClient(base_url=server_url) as anonymous:
        assert (await anonymous.delete(url, headers=tus.TUS)).status_code == 401
    assert await tus.offset(api, url) == 0


async def test_parallel_parts_joined_out_of_order(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    content = os.urandom(11 * MIB + 7)
    record = await registered(api, content)
    cuts = [0, 5 * MIB, 5 * MIB + 1, 11 * MIB + 7]  # a 1-byte part between two large ones
    pieces = [content[a:b] for a, b in itertools.pairwise(cuts)]
    urls = []
    for piece in pieces:
        response = await tus.create(api, len(piece), concat="partial")
        assert response.status_code == 201
        assert (await api.head(response.headers["Location"], headers=tus.TUS)).headers[
            "Upload-Concat"
        ] == "partial"
        urls.append(response.headers["Location"])
    too_soon = await tus.create(
        api, None, concat="final;" + " ".join(urls), sha256=record["sha256"]
    )
    assert too_soon.status_code == 409  # parts not complete yet

    async def send(i: int) -> None:
        half = len(pieces[i]) // 2
        assert (await tus.patch(api, urls[i], 0, pieces[i][:half])).status_code == 204
        assert (await tus.patch(api, urls[i], half, pieces[i][half:])).status_code == 204

    await send(2)  # the last part first, then the other two at once
    await asyncio.gather(send(0), send(1))
    assert await downloaded(api, record["sha256"]) is None
    paths = [urlsplit(url).path for url in urls]  # relative URLs are accepted too
    final = await tus.create(
        api, None, concat=f"final;{urls[0]} {paths[1]} {urls[2]}", sha256=record["sha256"]
    )
    assert final.status_code == 201, final.text
    assert await downloaded(api, record["sha256"]) == content
    head = await api.head(final.headers["Location"], headers=tus.TUS)
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(len(content))
    assert head.headers["Upload-Concat"].startswith("final;")
    assert (await tus.patch(api, final.headers["Location"], len(content), b"")).status_code == 403
    for url in urls:  # the parts are freed
        assert (await api.head(url, headers=tus.TUS)).status_code == 404
    assert await staged(settings) == []


async def whole_part(api: httpx.AsyncClient, content: bytes) -> str:
    """A partial upload announced as the whole content, all sent; its URL."""
    url = (await tus.create(api, len(content), concat="partial", whole="1")).headers["Location"]
    half = len(content) // 2
    assert (await tus.patch(api, url, 0, content[:half])).status_code == 204
    assert (await tus.patch(api, url, half, content[half:])).status_code == 204
    return url


async def test_a_whole_part_becomes_the_blob_without_being_read_back(
    api: httpx.AsyncClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """How a client sends a large file before it knows its hash: the part was hashed as
    it arrived, so joining it alone stores it without reading 2 GiB back."""
    content = os.urandom(3 * MIB + 1)
    url = await whole_part(api, content)
    record = await registered(api, content)  # the record once the client knows the hash

    def no_read_back(*_: object, **__: object) -> None:
        raise AssertionError("the staged bytes were read back")

    monkeypatch.setattr(resumable, "store_verified", no_read_back)
    final = await tus.create(api, None, concat=f"final;{url}", sha256=record["sha256"])
    assert final.status_code == 201, final.text
    monkeypatch.undo()
    assert await downloaded(api, record["sha256"]) == content
    assert (await api.head(url, headers=tus.TUS)).status_code == 404
    assert await staged(settings) == []
    assert (await put(api, record)).json()["upload_required"] is False


async def test_a_whole_part_not_matching_its_hash_is_refused_and_freed(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    claimed, sent = os.urandom(40_000), os.urandom(40_000)
    record = await registered(api, claimed)
    url = await whole_part(api, sent)
    final = await tus.create(api, None, concat=f"final;{url}", sha256=record["sha256"])
    assert final.status_code == 400
    assert "hash" in final.json()["detail"]
    assert await downloaded(api, record["sha256"]) is None
    assert await staged(settings) == []
    assert (await put(api, record)).json()["upload_required"] is True


async def test_a_whole_part_is_verified_by_another_process_by_reading_it_back(
    api: httpx.AsyncClient, settings: Settings, keys: Keys
) -> None:
    """The running hash lives in the process that received the bytes; another process
    (or this one after a restart) reads the part back to verify it."""
    content = os.urandom(2 * MIB + 3)
    url = await whole_part(api, content)
    record = await registered(api, content)
    with running_server(settings) as other_url:
        async with httpx.AsyncClient(
            base_url=other_url, headers={"X-API-Key": keys.write}, timeout=60
        ) as other:
            path = urlsplit(url).path
            final = await tus.create(other, None, concat=f"final;{path}", sha256=record["sha256"])
            assert final.status_code == 201, final.text
    assert await downloaded(api, record["sha256"]) == content
    assert await staged(settings) == []


async def test_a_final_upload_sent_twice_at_once_joins_its_parts_once(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    """A client that sends its final request again (its answer lost) while the first
    still reads the parts back: the second waits its turn (423) or finds them gone."""
    content = os.urandom(24 * MIB)
    record = await registered(api, content)
    url = (await tus.create(api, len(content), concat="partial")).headers["Location"]
    assert (await tus.patch(api, url, 0, content)).status_code == 204

    async def join() -> int:
        final = await tus.create(api, None, concat=f"final;{url}", sha256=record["sha256"])
        return final.status_code

    first, second = sorted(await asyncio.gather(join(), join()))
    assert first == 201
    assert second in (404, 423)
    assert await downloaded(api, record["sha256"]) == content
    assert await staged(settings) == []


async def test_parts_in_the_wrong_order_are_refused(api: httpx.AsyncClient) -> None:
    content = os.urandom(3000)
    record = await registered(api, content)
    urls = []
    for piece in (content[:1000], content[1000:]):
        url = (await tus.create(api, len(piece), concat="partial")).headers["Location"]
        assert (await tus.patch(api, url, 0, piece)).status_code == 204
        urls.append(url)
    swapped = await tus.create(
        api, None, concat=f"final;{urls[1]} {urls[0]}", sha256=record["sha256"]
    )
    assert swapped.status_code == 400
    assert await downloaded(api, record["sha256"]) is None


async def test_another_server_process_continues_the_upload(
    api: httpx.AsyncClient, settings: Settings, keys: Keys
) -> None:
    """No state between requests lives in one process: a second server, sharing only the
    stores, takes over half-way and verifies the whole by reading it back."""
    content = os.urandom(13 * MIB + 11)
    record = await registered(api, content)
    url = await tus.create_for(api, record)
    half = 6 * MIB + 5
    assert (await tus.patch(api, url, 0, content[:half])).status_code == 204
    with running_server(settings) as other_url:
        async with httpx.AsyncClient(
            base_url=other_url, headers={"X-API-Key": keys.write}, timeout=60
        ) as other:
            path = urlsplit(url).path
            assert await tus.offset(other, path) == half
            assert (await tus.patch(other, path, half, content[half:])).status_code == 204
    assert await downloaded(api, record["sha256"]) == content


async def test_body_cut_short_keeps_what_arrived(
    api: httpx.AsyncClient, server_url: str, keys: Keys
) -> None:
    content = os.urandom(4 * MIB)
    record = await registered(api, content)
    url = urlsplit(await tus.create_for(api, record)).path
    host, port = urlsplit(server_url).hostname, urlsplit(server_url).port
    sent = 3 * MIB
    with socket.create_connection((host, port)) as raw:
        raw.sendall(
            f"PATCH {url} HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {keys.write}\r\n"
            f"Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
            f"Content-Type: {tus.OFFSET_TYPE}\r\nContent-Length: {len(content)}\r\n\r\n".encode()
        )
        raw.sendall(content[:sent])
    for _ in range(100):  # the server sees the connection close, then stores what came
        if await tus.offset(api, url) == sent:
            break
        await asyncio.sleep(0.1)
    assert await tus.offset(api, url) == sent
    assert (await tus.patch(api, url, sent, content[sent:])).status_code == 204
    assert await downloaded(api, record["sha256"]) == content


async def test_a_create_whose_client_left_mid_body_leaves_nothing(
    api: httpx.AsyncClient, server_url: str, keys: Keys, settings: Settings
) -> None:
    """With creation-with-upload the client learns the upload's URL only from the answer:
    gone before it, the client could never continue or free what arrived."""
    content = os.urandom(4 * MIB)
    record = await registered(api, content)
    host, port = urlsplit(server_url).hostname, urlsplit(server_url).port
    metadata = tus.encode_metadata(sha256=record["sha256"])
    with socket.create_connection((host, port)) as raw:
        raw.sendall(
            f"POST /tus/ HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {keys.write}\r\n"
            f"Tus-Resumable: 1.0.0\r\nUpload-Length: {len(content)}\r\n"
            f"Upload-Metadata: {metadata}\r\nContent-Type: {tus.OFFSET_TYPE}\r\n"
            f"Content-Length: {len(content)}\r\n\r\n".encode()
        )
        raw.sendall(content[: 3 * MIB])
        async with open_stores(settings) as stores:
            for _ in range(100):  # created, and waiting for the rest of the body
                if await stores.metadata.count_uploads() == 1:
                    break
                await asyncio.sleep(0.1)
            assert await stores.metadata.count_uploads() == 1
    async with open_stores(settings) as stores:
        for _ in range(100):  # the server sees the connection close, then cleans up
            if not await stores.metadata.count_uploads():
                break
            await asyncio.sleep(0.1)
        assert await stores.metadata.count_uploads() == 0
    assert await staged(settings) == []


@pytest.fixture
async def short_lived(
    request: pytest.FixtureRequest, stack: str, tmp_path: Path
) -> AsyncIterator[tuple[Settings, httpx.AsyncClient]]:
    from tests.conftest import make_settings, seed_keys

    settings = make_settings(request, stack, tmp_path, upload_expiry_seconds=1.0)
    keys = await seed_keys(settings)
    with running_server(settings) as url:
        async with httpx.AsyncClient(
            base_url=url, headers={"X-API-Key": keys.write}, timeout=60
        ) as client:
            yield settings, client


async def test_expired_uploads_are_gone_and_reclaimed(
    short_lived: tuple[Settings, httpx.AsyncClient],
) -> None:
    settings, api = short_lived
    content = os.urandom(6 * MIB)
    record = await registered(api, content)
    url = await tus.create_for(api, record)
    assert (await tus.patch(api, url, 0, content[: 5 * MIB + 1])).status_code == 204
    assert len(await staged(settings)) == 1
    await asyncio.sleep(1.2)
    assert (await api.head(url, headers=tus.TUS)).status_code == 410
    assert (await tus.patch(api, url, 5 * MIB + 1, content[5 * MIB + 1 :])).status_code == 410
    with running_server(settings):  # a server starting frees expired uploads
        pass
    assert await staged(settings) == []
    assert (await api.head(url, headers=tus.TUS)).status_code == 404
    async with open_stores(settings) as stores:
        assert await reclaim_expired(stores) == 0


async def test_gc_lists_and_frees_uploads(
    api: httpx.AsyncClient, settings: Settings, tmp_path: Path
) -> None:
    content = os.urandom(6 * MIB)
    record = await registered(api, content)
    old = urlsplit(await tus.create_for(api, record)).path.rsplit("/", 1)[1]
    assert (await tus.patch(api, f"/tus/{old}", 0, content[: 5 * MIB + 1])).status_code == 204
    fresh = urlsplit(await tus.create_for(api, record)).path.rsplit("/", 1)[1]
    orphan = "f" * 32
    async with open_stores(settings) as stores:
        await stores.blobs.staging().create(orphan, 10)
        upload = await stores.metadata.get_upload(old)
        assert upload is not None
        past = replace(upload, expires_at=utcnow() - timedelta(seconds=1))
        assert await stores.metadata.advance_upload(old, upload.offset, past)
    listed = run_ppserver(settings, "gc", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    uploads = json.loads(listed.stdout)["uploads"]
    assert uploads["unfinished"] == [f"{fresh} default 0/{len(content)}"]
    assert uploads["expired"] == [old]
    assert uploads["orphaned"] == [orphan]
    assert sorted(await staged(settings)) == sorted([old, fresh, orphan])
    deleted = run_ppserver(settings, "gc", "--delete", cwd=tmp_path)
    assert deleted.returncode == 0, deleted.stderr
    assert "2 uploads freed, 1 unfinished uploads kept" in deleted.stderr
    assert await staged(settings) == [fresh]
    assert await tus.offset(api, f"/tus/{fresh}") == 0
    assert (await api.head(f"/tus/{old}", headers=tus.TUS)).status_code == 404


def test_cors_for_browser_tus_clients(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    from tests.conftest import make_settings

    origin = "https://app.example.com"
    preflight = {
        "Origin": origin, "Access-Control-Request-Method": "PATCH",
        "Access-Control-Request-Headers": "x-api-key,tus-resumable,upload-offset,content-type",
    }  # fmt: skip
    settings = make_settings(request, "sqlite-local", tmp_path, cors_origins=origin)
    with running_server(settings) as url:
        answer = httpx.options(f"{url}/tus/0123", headers=preflight)
        assert answer.status_code == 200
        assert answer.headers["Access-Control-Allow-Origin"] == origin
        assert "PATCH" in answer.headers["Access-Control-Allow-Methods"]
        allowed = answer.headers["Access-Control-Allow-Headers"].lower()
        assert {"x-api-key", "upload-offset", "tus-resumable"} <= set(allowed.split(", "))
        discovery = httpx.options(f"{url}/tus/", headers={"Origin": origin})
        exposed = discovery.headers["Access-Control-Expose-Headers"].lower()
        assert {"location", "upload-offset", "tus-version"} <= set(exposed.split(", "))
        other = httpx.options(
            f"{url}/tus/", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert "Access-Control-Allow-Origin" not in other.headers
    plain = make_settings(request, "sqlite-local", tmp_path / "plain")
    with running_server(plain) as url:
        assert (
            "Access-Control-Allow-Origin"
            not in httpx.options(f"{url}/tus/", headers=preflight).headers
        )


async def until_leased(settings: Settings, upload_id: str) -> None:
    """Wait until some request holds the upload's lease. The probe claims it only if no
    one holds it, and then with a lease that lapsed long ago: it takes nothing away."""
    past = datetime(2000, 1, 1, tzinfo=UTC)
    async with open_stores(settings) as stores:
        for _ in range(600):
            if not await stores.metadata.claim_upload(upload_id, "probe", past, past):
                return
            await asyncio.sleep(0.05)
    raise AssertionError("no request took the upload's lease")


async def test_one_request_writes_an_upload_at_a_time(
    api: httpx.AsyncClient, server_url: str, keys: Keys, settings: Settings
) -> None:
    """While a PATCH streams, another PATCH or a DELETE of the same upload is told 423
    (with Retry-After) and changes nothing; the first one's bytes are kept."""
    content = os.urandom(4 * MIB)
    record = await registered(api, content)
    url = urlsplit(await tus.create_for(api, record)).path
    host, port = urlsplit(server_url).hostname, urlsplit(server_url).port
    with socket.create_connection((host, port)) as slow:
        slow.sendall(
            f"PATCH {url} HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {keys.write}\r\n"
            f"Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
            f"Content-Type: {tus.OFFSET_TYPE}\r\nContent-Length: {len(content)}\r\n\r\n".encode()
        )
        slow.sendall(content[:MIB])
        await until_leased(settings, url.rsplit("/", 1)[1])
        other = await tus.patch(api, url, 0, content)
        assert other.status_code == 423
        assert int(other.headers["Retry-After"]) > 0
        assert (await api.delete(url, headers=tus.TUS)).status_code == 423
        slow.sendall(content[MIB:])
        answer = slow.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 204"), answer
    assert await downloaded(api, record["sha256"]) == content


async def test_a_finish_cut_short_is_completed_by_the_next_request(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server dies after the last byte is staged but before the content is stored:
    the next request for the upload verifies and stores it (nothing is sent again)."""
    content = os.urandom(3 * MIB)
    record = await registered(api, content)
    url = await tus.create_for(api, record)
    real_finish = resumable._finish

    async def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the server died here")

    monkeypatch.setattr(resumable, "_finish", crash)
    died = await tus.patch(api, url, 0, content, headers={"Connection": "close"})
    assert died.status_code == 500
    monkeypatch.setattr(resumable, "_finish", real_finish)
    assert await downloaded(api, record["sha256"]) is None
    assert await tus.offset(api, url) == len(content)  # HEAD finishes it
    assert await downloaded(api, record["sha256"]) == content
    assert (await put(api, record)).json()["upload_required"] is False


async def test_a_large_upload_is_hashed_and_staged_in_large_batches(
    api: httpx.AsyncClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = os.urandom(LARGE_CONTENT + 3)
    record = await registered(api, content)
    batches: list[int] = []
    real_bounded = resumable._bounded

    def bounded(*args: Any) -> AsyncIterator[bytes]:
        batches.append(args[-1])
        return real_bounded(*args)

    hashed: list[tuple[str, int]] = []  # (thread, bytes) of each batch hashed
    real_update = resumable._update

    def update(hashers: Any, chunks: list[bytes]) -> None:
        hashed.append((threading.current_thread().name, sum(map(len, chunks))))
        real_update(hashers, chunks)

    monkeypatch.setattr(resumable, "_bounded", bounded)
    monkeypatch.setattr(resumable, "_update", update)
    url = await tus.create_for(api, record)
    # Two PATCHes, each checked against its CRC-32 (computed here over the whole body).
    for start, end in [(0, LARGE_BATCH + 5), (LARGE_BATCH + 5, len(content))]:
        response = await tus.patch(api, url, start, content[start:end], checksum="crc32")
        assert response.status_code == 204, response.text
    assert batches == [LARGE_BATCH, LARGE_BATCH]
    # Large batches, the last of a request too, are hashed off the event loop.
    assert sum(size for _, size in hashed) == len(content)
    assert not [h for h in hashed if h[0].startswith("uvicorn") and h[1] >= LARGE_BATCH // 2]
    assert await downloaded(api, record["sha256"]) == content
    assert await staged(settings) == []
