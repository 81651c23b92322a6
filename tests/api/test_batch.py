"""``POST /put_files`` (batch metadata) and ``PUT /blobs/{sha256}`` (raw upload)."""

from __future__ import annotations

import os
from typing import Any

import httpx

from tests.support.payloads import metadata, put, store


async def put_batch(api: httpx.AsyncClient, files: list[Any]) -> httpx.Response:
    return await api.post("/put_files", json={"files": files})


async def test_batch_answers_each_record_like_put_file(api: httpx.AsyncClient) -> None:
    known = await store(api, b"already here")
    files = [
        metadata(b"new one"),
        metadata(b"already here", hostname="host-b"),
        metadata(b"new two"),
    ]
    response = await put_batch(api, files)
    assert response.status_code == 200
    body = response.json()
    assert (body["stored"], body["rejected"]) == (3, 0)
    results = body["results"]
    assert [r["index"] for r in results] == [0, 1, 2]
    assert [r["file"]["upload_required"] for r in results] == [True, False, True]
    assert results[1]["file"]["has_file_content"] is True
    assert results[0]["file"]["upload_url"] == f"/upload_file/{files[0]['sha256']}"
    assert [r["file"]["filepath"] for r in results] == [f["filepath"] for f in files]
    single = (await put(api, files[1])).json()
    assert results[1]["file"] == single  # the same record, described the same way
    assert single["file_uploaded_at"] is not None
    assert single["file_size"] == known["file_size"]


async def test_brief_answers_hold_the_id_and_whether_to_upload(api: httpx.AsyncClient) -> None:
    await store(api, b"already here")
    link = metadata(b"/etc/target", is_symlink=True, link_target="/etc/target")
    files = [metadata(b"new"), metadata(b"already here", hostname="host-b"), link, {"x": 1}]
    response = await api.post("/put_files", params={"brief": "true"}, json={"files": files})
    assert response.status_code == 200
    body = response.json()
    assert (body["stored"], body["rejected"]) == (3, 1)
    answers = [r["file"] for r in body["results"][:3]]
    assert [a["upload_required"] for a in answers] == [True, False, False]
    assert all(set(a) == {"_id", "upload_required"} for a in answers)
    assert body["results"][3]["errors"]
    listed = {r["_id"]: r for r in (await api.get("/files", params={"limit": 10})).json()}
    assert [listed[a["_id"]]["filepath"] for a in answers] == [f["filepath"] for f in files[:3]]


async def test_invalid_records_reported_valid_ones_stored(api: httpx.AsyncClient) -> None:
    good = metadata(b"good")
    files = [good, {**metadata(b"bad"), "sha256": "../../etc/passwd"}, {"filepath": "/x"}, 42]
    body = (await put_batch(api, files)).json()
    assert (body["stored"], body["rejected"]) == (1, 3)
    assert [r["ok"] for r in body["results"]] == [True, False, False, False]
    assert body["results"][1]["errors"][0]["loc"] == ["sha256"]
    listed = (await api.get("/files")).json()
    assert [r["filepath"] for r in listed] == [good["filepath"]]


async def test_batch_limits_and_malformed_bodies(api: httpx.AsyncClient) -> None:
    too_many = [metadata(str(i).encode()) for i in range(2001)]  # the default limit is 2000
    response = await put_batch(api, too_many)
    assert response.status_code == 413
    assert "the limit is 2000" in response.json()["detail"]
    assert (await api.post("/put_files", json=[metadata(b"x")])).status_code == 422
    assert (await api.post("/put_files", json={"files": "no"})).status_code == 422
    broken = await api.post(
        "/put_files", content=b'{"files": [', headers={"Content-Type": "application/json"}
    )
    assert broken.status_code == 422
    assert (await api.get("/files")).json() == []
    empty = (await put_batch(api, [])).json()
    assert (empty["stored"], empty["results"]) == (0, [])


async def test_raw_blob_upload(api: httpx.AsyncClient) -> None:
    content = os.urandom(2 * 1024 * 1024 + 5)
    body = metadata(content)
    await put_batch(api, [body])
    url = f"/blobs/{body['sha256']}"
    headers = {"Content-Type": "application/octet-stream"}
    created = await api.put(url, content=content, headers=headers)
    assert created.status_code == 201
    assert created.json() == {"sha256": body["sha256"], "file_size": len(content)}
    assert (await api.get(f"/download/{body['sha256']}")).content == content
    assert (await api.put(url, content=content, headers=headers)).status_code == 200


async def test_raw_blob_upload_refusals(api: httpx.AsyncClient) -> None:
    body = metadata(b"registered content")
    await put(api, body)
    url = f"/blobs/{body['sha256']}"
    wrong = await api.put(url, content=b"registered CONTENT")
    assert wrong.status_code == 400
    short = await api.put(url, content=b"registered")
    assert short.status_code == 400
    unknown = await api.put("/blobs/" + "1" * 64, content=b"x")
    assert unknown.status_code == 404
    assert (await api.put("/blobs/..%2Fx", content=b"x")).status_code in (400, 404)
    assert (await api.put("/blobs/" + "A" * 64, content=b"x")).status_code == 400
    assert (await api.get(f"/download/{body['sha256']}")).status_code == 404


async def test_a_location_sent_twice_is_stored_once_and_both_get_its_answer(
    api: httpx.AsyncClient,
) -> None:
    first = metadata(b"first", filepath="/same/place")
    second = metadata(b"second", filepath="/same/place")
    body = (await put_batch(api, [first, metadata(b"other"), second])).json()
    results = body["results"]
    assert results[0]["file"] == results[2]["file"]  # the last record sent wins
    assert results[0]["file"]["sha256"] == second["sha256"]
    assert results[1]["file"]["sha256"] != second["sha256"]
    listed = (await api.get("/files", params={"hostname": "host-a"})).json()
    assert [r["sha256"] for r in listed if r["filepath"] == "/same/place"] == [second["sha256"]]
