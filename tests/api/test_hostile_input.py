"""Hostile and malformed input: every kind of mistake gets a clear 4xx and changes nothing.

Each case is a request a careless or hostile client could send: numbers JSON cannot hold
(``NaN``, ``Infinity``, ``1e400``), values of the wrong type that lax parsing would coerce
(``true`` as 1, ``"12"`` as 12), out-of-range numbers and times, strings that are not
what the field says (an IP address that is not one), NUL characters, and query
parameters beyond what the stores can compare. The state the API shows (records, keys,
stats) must be the same after all of them as before.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.conftest import Keys
from tests.support.payloads import metadata, put

SHA = "a" * 64


def raw_record(field: str, raw: str) -> str:
    """A /put_file body whose *field* is the JSON text *raw* (which may be invalid JSON)."""
    return json.dumps({**metadata(b"x"), field: "__RAW__"}).replace('"__RAW__"', raw)


BAD_RECORDS: list[tuple[str, str]] = [
    ("file_size", "NaN"),
    ("file_mtime", "Infinity"),
    ("file_atime", "-Infinity"),
    ("file_ctime", "1e400"),
    ("file_mtime", "1e20"),  # beyond year 9999
    ("file_mtime", "-1e12"),  # before year 1
    ("file_size", "true"),
    ("file_size", '"12"'),
    ("file_size", "1.5"),
    ("file_size", "-1"),
    ("file_size", str(1 << 63)),
    ("file_mode", "true"),
    ("file_uid", str(1 << 32)),
    ("file_gid", "1e3"),
    ("is_symlink", '"yes"'),
    ("is_symlink", "1"),
    ("ip_address", '"not an ip"'),
    ("ip_address", '"192.0.2.300"'),
    ("ip_address", '"10.0.0.1\\u0000"'),
    ("link_target", '"/etc\\u0000passwd"'),
    ("hostname", '"web\\u0000-01"'),
    ("filepath", '""'),
    ("sha256", '"' + "A" * 64 + '"'),
]


@pytest.mark.parametrize(
    ("field", "raw"), BAD_RECORDS, ids=[f"{f}={r[:12]}" for f, r in BAD_RECORDS]
)
def test_bad_record_is_refused_by_the_model(field: str, raw: str) -> None:
    # The same cases as below without a server: each must be refused by FileMetadata alone.
    from pydantic import ValidationError

    from putplace.models import FileMetadata

    with pytest.raises((ValidationError, ValueError)):
        FileMetadata.model_validate_json(raw_record(field, raw))


async def _snapshot(client: httpx.AsyncClient, keys: Keys) -> Any:
    admin = {"X-API-Key": keys.admin}
    files = (await client.get("/files", params={"state": "all"}, headers=admin)).json()
    api_keys = (await client.get("/api_keys", headers=admin)).json()
    for key in api_keys:
        key.pop("last_used_at")
    stats = (await client.get("/stats", headers=admin)).json()
    return files, api_keys, stats


async def test_every_kind_of_bad_input_is_a_4xx_and_changes_nothing(
    api: httpx.AsyncClient, keys: Keys
) -> None:
    assert (await put(api, metadata(b"kept", hostname="h", filepath="/kept"))).status_code == 201
    before = await _snapshot(api, keys)
    json_type = {"Content-Type": "application/json"}
    answers: list[tuple[str, int]] = []

    async def send(label: str, method: str, url: str, **kwargs: Any) -> None:
        response = await api.request(method, url, **kwargs)
        answers.append((label, response.status_code))

    for field, raw in BAD_RECORDS:
        body = raw_record(field, raw)
        await send(f"put_file {field}={raw}", "POST", "/put_file", content=body, headers=json_type)
        batch = await api.post("/put_files", content=f'{{"files": [{body}]}}', headers=json_type)
        # A batch reports bad records one by one (200) unless the JSON itself is invalid.
        if batch.status_code == 200:
            assert batch.json()["stored"] == 0, (field, raw)
            assert batch.json()["results"][0]["ok"] is False, (field, raw)
        else:
            answers.append((f"put_files {field}={raw}", batch.status_code))
    admin = {"X-API-Key": keys.admin}
    for body in (
        '{"name": "k\\u0000"}',
        '{"name": "k", "description": "d\\u0000"}',
        '{"name": "k", "scope": "root"}',
        '{"name": NaN}',
        '{"name": "k", "hosts": ["web 01"]}',
        '{"name": "k", "hosts": ["web\\u001b[2J"]}',
        '{"name": "k", "expires_at": "2000-01-01T00:00:00Z"}',
        '{"name": "k", "expires_at": "9999-12-31T23:59:59-01:00"}',
    ):
        await send(f"api_keys {body}", "POST", "/api_keys", content=body,
                   headers={**json_type, **admin})  # fmt: skip
    for body in (
        '{"hostname": "h", "root": "/", "excludes": ["*.tmp\\u0000"]}',
        '{"hostname": "h\\u0000", "root": "/"}',
        '{"hostname": "h", "root": "/", "excludes": "*.tmp"}',
    ):
        await send(f"scans {body}", "POST", "/scans", content=body, headers=json_type)
    for query in (
        "min_size=99999999999999999999999",
        f"max_size={1 << 63}",
        "hostname=web%00",
        "path_prefix=/a%00",
        "mtime_after=nan",
        "mtime_before=inf",
        "recorded_after=not-a-time",
        "as_of=10000-01-01T00:00:00",
        # In range as written, out of range in UTC (MongoDB cannot hold it).
        "as_of=9999-12-31T23:59:59-01:00",
        "recorded_after=0001-01-01T00:00:00%2B01:00",
        "uploaded_before=9999-12-31T23:59:59-01:00",
        "limit=0",
        "limit=1001",
        "sort=filepath;drop",
        "cursor=not-base64!",
        "after=../../etc",
        "state=gone",
    ):
        await send(f"files {query}", "GET", f"/files?{query}")
    for url in (
        "/history?hostname=h%00&filepath=/kept",
        "/history?hostname=h&filepath=",
        "/stats?hostname=%00",
        "/stats?top=0",
        "/stats?bucket=year",
        "/content/not-a-hash/locations",
        "/get_file/" + SHA.upper(),
    ):
        await send(url, "GET", url)
    await send("upload NUL host", "POST", f"/upload_file/{SHA}?hostname=h%00&filepath=/kept",
               files={"file": b"x"})  # fmt: skip
    await send("upload mismatch", "PUT", f"/blobs/{SHA}", content=b"not those bytes")

    not_4xx = [(label, code) for label, code in answers if not 400 <= code < 500]
    assert not_4xx == []
    assert await _snapshot(api, keys) == before


async def test_ip_address_is_stored_in_canonical_form(api: httpx.AsyncClient) -> None:
    answer = await put(api, metadata(b"v6", ip_address="2001:DB8:0:0::1"))
    assert answer.status_code == 201
    assert answer.json()["ip_address"] == "2001:db8::1"
    assert (await put(api, metadata(b"none", ip_address=""))).status_code == 201


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "text/plain; charset=utf-8", "application/xml", None],
)
async def test_a_json_body_declared_as_another_type_gets_415_naming_it(
    api: httpx.AsyncClient, keys: Keys, content_type: str | None
) -> None:
    """``curl -d`` declares a form: the answer names the type to send, not a 422 saying
    the body "should be a valid dictionary"; and nothing is created."""
    admin = {"X-API-Key": keys.admin}
    key_body = '{"name": "declared-otherwise"}'
    typed = {} if content_type is None else {"Content-Type": content_type}
    refused = [
        await api.post("/scans", content='{"hostname": "h", "root": "/"}', headers=typed),
        await api.post("/api_keys", content=key_body, headers={**admin, **typed}),
    ]
    shown = "no Content-Type" if content_type is None else repr(content_type)
    for response in refused:
        assert response.status_code == 415, response.text
        detail = response.json()["detail"]
        assert "application/json" in detail
        assert shown in detail
    names = {key["name"] for key in (await api.get("/api_keys", headers=admin)).json()}
    assert "declared-otherwise" not in names
    # The same bodies declared as JSON are taken.
    json_type = {"Content-Type": "application/problem+json"}
    scan = await api.post("/scans", content='{"hostname": "h", "root": "/"}', headers=json_type)
    assert scan.status_code == 201, scan.text
    key = await api.post("/api_keys", content=key_body, headers={**admin, **json_type})
    assert key.status_code == 201, key.text
    # A JSON body that is wrong stays a 422 listing what is wrong, a JSON string too.
    wrong = await api.post("/scans", content='{"hostname": "h"}', headers=json_type)
    assert wrong.status_code == 422
    assert wrong.json()["detail"][0]["loc"] == ["body", "root"]
    a_string = await api.post("/scans", content='"abc"', headers=json_type)
    assert a_string.status_code == 422
    assert a_string.json()["detail"][0]["loc"] == ["body"]
    # /put_file parses its body whatever it declares: a JSON string is still a 422.
    record = await api.post("/put_file", content='"abc"', headers=typed)
    assert record.status_code == 422
    assert record.json()["detail"][0]["loc"] == ["body"]


async def test_a_long_declared_type_is_cut_in_the_answer(api: httpx.AsyncClient) -> None:
    declared = "text/" + "x" * 5000
    response = await api.post("/scans", content="{}", headers={"Content-Type": declared})
    assert response.status_code == 415
    assert len(response.json()["detail"]) < 300
    empty = await api.post("/scans", content="{}", headers={"Content-Type": ""})
    assert empty.status_code == 415
    assert "declared no Content-Type" in empty.json()["detail"]
