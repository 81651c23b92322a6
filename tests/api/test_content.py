"""``POST /upload_file/{sha256}`` and ``GET /download/{sha256}`` over real HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import os

import httpx
import pytest

from tests.conftest import Keys
from tests.support.payloads import metadata, put, store, upload


async def _downloaded(api: httpx.AsyncClient, sha256: str) -> int:
    return (await api.get(f"/download/{sha256}")).status_code


async def test_upload_then_download_identical_bytes(api: httpx.AsyncClient) -> None:
    content = os.urandom(3 * 1024 * 1024 + 17)  # several chunks, not chunk-aligned
    body = metadata(content)
    await put(api, body)
    response = await upload(api, body, content)
    assert response.status_code == 200
    assert response.json() == {
        "message": "File uploaded successfully",
        "sha256": body["sha256"],
        "file_size": len(content),
        "hostname": body["hostname"],
        "filepath": body["filepath"],
    }
    download = await api.get(f"/download/{body['sha256']}")
    assert download.status_code == 200
    assert download.content == content
    assert download.headers["content-length"] == str(len(content))
    assert download.headers["etag"] == f'"{body["sha256"]}"'
    assert download.headers["content-type"] == "application/octet-stream"
    assert download.headers["x-content-type-options"] == "nosniff"  # never rendered
    assert (await put(api, body)).json()["upload_required"] is False


async def test_empty_file_round_trip(api: httpx.AsyncClient) -> None:
    body = await store(api, b"")
    download = await api.get(f"/download/{body['sha256']}")
    assert download.status_code == 200
    assert download.content == b""


async def test_hash_mismatch_is_refused_and_nothing_stored(api: httpx.AsyncClient) -> None:
    body = metadata(b"what the client claims")
    await put(api, body)
    response = await upload(api, body, b"what the client sends!")  # same length
    assert response.status_code == 400
    assert "hash" in response.json()["detail"]
    assert await _downloaded(api, body["sha256"]) == 404
    assert (await put(api, body)).json()["upload_required"] is True


async def test_size_mismatch_is_refused_and_nothing_stored(api: httpx.AsyncClient) -> None:
    body = metadata(b"twelve bytes")
    await put(api, body)
    response = await upload(api, body, b"twelve bytes and more")
    assert response.status_code == 400
    assert "bytes" in response.json()["detail"]
    assert await _downloaded(api, body["sha256"]) == 404


async def test_upload_with_invalid_hash_is_400(api: httpx.AsyncClient) -> None:
    body = metadata(b"x")
    await put(api, body)
    for bad in ("abc", body["sha256"].upper(), "..." + body["sha256"][3:], "%2E%2E" + "a" * 62):
        response = await api.post(
            f"/upload_file/{bad}",
            params={"hostname": body["hostname"], "filepath": body["filepath"]},
            files={"file": ("f", b"x")},
        )
        assert response.status_code == 400, bad
    traversal = await api.post(
        "/upload_file/..%2F..%2Fetc%2Fpasswd",
        params={"hostname": body["hostname"], "filepath": body["filepath"]},
        files={"file": ("f", b"x")},
    )
    assert traversal.status_code in (400, 404)


async def test_upload_without_registration_is_404(api: httpx.AsyncClient) -> None:
    body = metadata(b"unregistered")
    response = await upload(api, body, b"unregistered")
    assert response.status_code == 404
    assert "put_file" in response.json()["detail"]
    other = metadata(b"registered")
    await put(api, other)
    wrong_hash = {**other, "sha256": body["sha256"]}
    assert (await upload(api, wrong_hash, b"unregistered")).status_code == 404
    assert await _downloaded(api, body["sha256"]) == 404


async def test_upload_missing_file_field_is_422(api: httpx.AsyncClient) -> None:
    body = metadata(b"x")
    await put(api, body)
    response = await api.post(
        f"/upload_file/{body['sha256']}",
        params={"hostname": body["hostname"], "filepath": body["filepath"]},
        files={"other": ("f", b"x")},
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "file"]


@pytest.mark.parametrize(
    "content_type",
    [
        "application/octet-stream",
        "multipart/form-data",  # no boundary
        "multipart/form-data; boundary=" + "b" * 5000,  # longer than any parser takes
    ],
)
async def test_upload_that_is_not_usable_multipart_is_400(
    api: httpx.AsyncClient, content_type: str
) -> None:
    body = metadata(b"x")
    await put(api, body)
    response = await api.post(
        f"/upload_file/{body['sha256']}",
        params={"hostname": body["hostname"], "filepath": body["filepath"]},
        content=b"x",
        headers={"Content-Type": content_type},
    )
    assert response.status_code == 400
    assert "multipart" in response.json()["detail"]
    assert await _downloaded(api, body["sha256"]) == 404


async def test_truncated_multipart_body_stores_nothing(api: httpx.AsyncClient) -> None:
    content = b"a" * 5000
    body = metadata(content)
    await put(api, body)
    raw = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + content  # no closing boundary
    )
    response = await api.post(
        f"/upload_file/{body['sha256']}",
        params={"hostname": body["hostname"], "filepath": body["filepath"]},
        content=raw,
        headers={"Content-Type": "multipart/form-data; boundary=XyZ"},
    )
    assert response.status_code == 400
    assert await _downloaded(api, body["sha256"]) == 404


async def test_upload_needs_write_scope(api: httpx.AsyncClient, keys: Keys) -> None:
    body = metadata(b"x")
    await put(api, body)
    response = await upload(api, body, b"x", headers={"X-API-Key": keys.read})
    assert response.status_code == 403
    assert await _downloaded(api, body["sha256"]) == 404


async def test_second_upload_of_stored_content_is_accepted(api: httpx.AsyncClient) -> None:
    body = await store(api, b"twice")
    again = await upload(api, body, b"twice")
    assert again.status_code == 200
    assert again.json()["sha256"] == body["sha256"]


async def test_download_ranges(api: httpx.AsyncClient) -> None:
    content = bytes(range(256)) * 40
    body = await store(api, content)
    url = f"/download/{body['sha256']}"
    cases = {
        "bytes=0-9": (0, 9),
        "bytes=100-": (100, len(content) - 1),
        "bytes=-16": (len(content) - 16, len(content) - 1),
        "bytes=10000-99999": (10000, len(content) - 1),
        "bytes=0-" + "9" * 40: (0, len(content) - 1),  # beyond any size: to the end
        "bytes=-" + "9" * 40: (0, len(content) - 1),
        "bytes=" + "0" * 10_000 + "5-6": (5, 6),  # more digits than int() converts
    }
    for header, (start, end) in cases.items():
        response = await api.get(url, headers={"Range": header})
        assert response.status_code == 206, header
        assert response.content == content[start : end + 1]
        assert response.headers["content-range"] == f"bytes {start}-{end}/{len(content)}"
    unsatisfiable = await api.get(url, headers={"Range": f"bytes={len(content)}-"})
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["content-range"] == f"bytes */{len(content)}"
    beyond = await api.get(url, headers={"Range": "bytes=" + "9" * 10_000 + "-"})
    assert beyond.status_code == 416
    ignored = await api.get(url, headers={"Range": "bytes=0-1,5-6"})
    assert ignored.status_code == 200
    assert ignored.content == content


async def test_download_conditional_and_errors(api: httpx.AsyncClient, keys: Keys) -> None:
    body = await store(api, b"cache me")
    url = f"/download/{body['sha256']}"
    cached = await api.get(url, headers={"If-None-Match": f'"{body["sha256"]}"'})
    assert cached.status_code == 304
    for other_form in (f'W/"{body["sha256"]}"', '"x", *'):  # weak comparison; any content
        assert (await api.get(url, headers={"If-None-Match": other_form})).status_code == 304
    assert (await api.get(url, headers={"If-None-Match": '"x"'})).status_code == 200
    assert (await api.get(url, headers={"X-API-Key": keys.read})).content == b"cache me"
    async with httpx.AsyncClient(base_url=str(api.base_url)) as anonymous:
        assert (await anonymous.get(url)).status_code == 401
    assert (await api.get("/download/" + "0" * 64)).status_code == 404
    assert (await api.get("/download/not-a-hash")).status_code == 400


async def test_concurrent_uploads_of_same_content_end_in_one_blob(
    api: httpx.AsyncClient,
) -> None:
    content = os.urandom(2 * 1024 * 1024)
    bodies = [metadata(content, hostname=f"host-{i}") for i in range(12)]
    for body in bodies:
        assert (await put(api, body)).json()["upload_required"] is True
    responses = await asyncio.gather(*(upload(api, b, content) for b in bodies))
    assert [r.status_code for r in responses] == [200] * len(bodies)
    download = await api.get(f"/download/{bodies[0]['sha256']}")
    assert hashlib.sha256(download.content).hexdigest() == bodies[0]["sha256"]
    listed = (await api.get("/files", params={"sha256": bodies[0]["sha256"]})).json()
    assert len(listed) == len(bodies)
    assert all(r["has_file_content"] for r in listed)


async def test_concurrent_uploads_of_different_content_all_land(api: httpx.AsyncClient) -> None:
    contents = [os.urandom(64 * 1024 + i) for i in range(24)]
    bodies = [metadata(c) for c in contents]
    await asyncio.gather(*(put(api, b) for b in bodies))
    responses = await asyncio.gather(
        *(upload(api, b, c) for b, c in zip(bodies, contents, strict=True))
    )
    assert [r.status_code for r in responses] == [200] * len(bodies)
    for body, content in zip(bodies, contents, strict=True):
        assert (await api.get(f"/download/{body['sha256']}")).content == content
