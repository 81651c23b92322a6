"""``/``, ``/health``, ``POST /put_file``, ``GET /get_file``, ``GET /files`` over real HTTP."""

from __future__ import annotations

import hashlib
import json

import httpx

from putplace.server.routes.files import PLAIN_ROUTES
from tests.conftest import Keys
from tests.support.payloads import metadata, put, store

JSON = {"Content-Type": "application/json"}


async def test_root_banner_needs_no_key(server_url: str) -> None:
    async with httpx.AsyncClient(base_url=server_url) as client:
        response = await client.get("/")
    assert response.status_code == 200
    assert response.json() == {"message": "PutPlace API", "status": "running"}


async def test_health_reports_both_stores(server_url: str, stack: str) -> None:
    async with httpx.AsyncClient(base_url=server_url) as client:
        body = (await client.get("/health")).json()
    database, blobs = stack.split("-")
    assert body["status"] == "healthy"
    assert body["database"]["type"] == database
    assert body["database"]["status"] == "healthy"
    assert body["storage"]["type"] == blobs
    assert body["storage"]["status"] == "healthy"


async def test_put_file_new_content_requires_upload(api: httpx.AsyncClient) -> None:
    body = metadata(b"fresh content")
    response = await put(api, body)
    assert response.status_code == 201
    answer = response.json()
    for field, value in body.items():
        assert answer[field] == value
    assert answer["_id"]
    assert answer["has_file_content"] is False
    assert answer["file_uploaded_at"] is None
    assert answer["upload_required"] is True
    assert answer["upload_url"] == f"/upload_file/{body['sha256']}"
    assert answer["is_symlink"] is False
    assert answer["link_target"] is None


async def test_known_content_on_another_host_needs_no_upload(api: httpx.AsyncClient) -> None:
    await store(api, b"shared bytes", hostname="host-a")
    answer = (await put(api, metadata(b"shared bytes", hostname="host-b"))).json()
    assert answer["upload_required"] is False
    assert answer["upload_url"] is None
    assert answer["has_file_content"] is True
    assert answer["file_uploaded_at"] is not None


async def test_put_same_location_again_updates_in_place(api: httpx.AsyncClient) -> None:
    first = (await put(api, metadata(b"v1", filepath="/etc/app.conf"))).json()
    second = (await put(api, metadata(b"v2", filepath="/etc/app.conf", file_mode=0o100600))).json()
    assert second["_id"] == first["_id"]
    assert second["sha256"] == hashlib.sha256(b"v2").hexdigest()
    assert second["file_mode"] == 0o100600
    listed = (await api.get("/files", params={"hostname": "host-a"})).json()
    assert [r["filepath"] for r in listed] == ["/etc/app.conf"]


async def test_symlink_is_recorded_without_content(api: httpx.AsyncClient) -> None:
    body = metadata(b"/etc/target", is_symlink=True, link_target="/etc/target")
    answer = (await put(api, body)).json()
    assert answer["is_symlink"] is True
    assert answer["link_target"] == "/etc/target"
    assert answer["upload_required"] is False


async def test_put_file_rejects_bad_bodies_and_stores_nothing(api: httpx.AsyncClient) -> None:
    good = metadata(b"x")
    bad_bodies = [
        {**good, "sha256": "../../etc/passwd"},
        {**good, "sha256": good["sha256"].upper()},
        {**good, "sha256": good["sha256"][:63]},
        {**good, "file_size": -1},
        {**good, "file_mtime": "yesterday"},
        {**good, "filepath": ""},
        {**good, "filepath": "/tmp/a\x00b"},
        {**good, "filepath": "/" + "a" * 5000},
        {**good, "hostname": "h" * 300},
        {k: v for k, v in good.items() if k != "hostname"},
    ]
    for bad in bad_bodies:
        response = await put(api, bad)
        assert response.status_code == 422, bad
        assert isinstance(response.json()["detail"], list)
    malformed = await api.post(
        "/put_file", content=b'{"filepath": ', headers={"Content-Type": "application/json"}
    )
    assert malformed.status_code == 422
    assert (await api.get("/files")).json() == []


async def test_put_file_names_what_is_wrong_and_stores_nothing(api: httpx.AsyncClient) -> None:
    """/put_file parses its own request: its errors still say where, as FastAPI's do."""
    good = metadata(b"x")
    for params, where in (({"namespace": "Not Valid"}, ["query", "namespace"]),
                          ({"scan": "s" * 65}, ["query", "scan"])):  # fmt: skip
        response = await api.post("/put_file", params=params, json=good)
        assert response.status_code == 422, params
        assert [error["loc"] for error in response.json()["detail"]] == [where]
    response = await put(api, {**good, "file_size": -1})
    assert [error["loc"] for error in response.json()["detail"]] == [["body", "file_size"]]
    both = await api.post("/put_file", params={"scan": "s" * 65}, json={**good, "file_size": -1})
    assert [e["loc"] for e in both.json()["detail"]] == [["query", "scan"], ["body", "file_size"]]
    (not_object,) = (await api.post("/put_file", json=[good])).json()["detail"]
    assert (not_object["loc"], not_object["type"]) == (["body"], "model_attributes_type")
    for route in ("/put_file", "/put_files"):  # no body at all: what FastAPI says
        empty = await api.post(route, headers={"Content-Type": "application/json"})
        assert empty.status_code == 422, route
        assert empty.json()["detail"] == [
            {"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}
        ]
    assert (await api.get("/files")).json() == []


async def test_deeply_nested_bodies_are_refused_with_422(api: httpx.AsyncClient) -> None:
    """An error echoes the input it refuses; a deep one must not break the answer."""
    for depth in (900, 1020, 5000):
        nested = "[" * depth + "]" * depth
        body = json.dumps(metadata(b"x")).replace('"hostname": ', f'"hostname": {nested}, "_": ', 1)
        response = await api.post("/put_file", content=body, headers=JSON)
        assert response.status_code == 422, depth
        batch = await api.post("/put_files", content=f'{{"files": [{body}]}}', headers=JSON)
        if batch.status_code == 200:  # deeper than the parser takes: the whole batch is 422
            assert batch.json()["rejected"] == 1, depth
        else:
            assert batch.status_code == 422, depth
    assert (await api.get("/files")).json() == []


async def test_put_file_is_described_in_the_openapi_document(api: httpx.AsyncClient) -> None:
    """Code generators and the fuzz tests read /put_file's request from the document."""
    document = (await api.get("/openapi.json")).json()
    operation = document["paths"]["/put_file"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/FileMetadata"}
    schema = document["components"]["schemas"]["FileMetadata"]
    assert {"filepath", "hostname", "sha256", "file_size"} <= set(schema["required"])
    assert [p["name"] for p in operation["parameters"]] == ["scan", "namespace"]
    assert operation["security"] == [{"APIKeyHeader": []}]


async def test_every_route_served_outside_fastapi_is_in_the_openapi_document(
    api: httpx.AsyncClient,
) -> None:
    """Requests to these paths never reach their FastAPI twins, which stay only to describe
    them: a path or method changed on one side alone would serve what is not documented."""
    document = (await api.get("/openapi.json")).json()
    for route in PLAIN_ROUTES:
        assert route.methods, route.path
        documented = {method.upper() for method in document["paths"][route.path]}
        assert route.methods - {"HEAD"} <= documented, route.path


async def test_put_file_with_another_method_is_405_naming_post(api: httpx.AsyncClient) -> None:
    answer = await api.get("/put_file")
    assert answer.status_code == 405
    assert answer.headers["allow"] == "POST"
    assert (await api.get("/files")).json() == []


async def test_get_file_by_hash(api: httpx.AsyncClient) -> None:
    body = await store(api, b"findable")
    response = await api.get(f"/get_file/{body['sha256']}")
    assert response.status_code == 200
    answer = response.json()
    assert answer["filepath"] == body["filepath"]
    assert answer["has_file_content"] is True


async def test_get_file_unknown_and_invalid(api: httpx.AsyncClient) -> None:
    unknown = hashlib.sha256(b"never stored").hexdigest()
    assert (await api.get(f"/get_file/{unknown}")).status_code == 404
    for bad in ("abc", unknown.upper(), "g" * 64, "..%2F..%2Fetc%2Fpasswd"):
        response = await api.get(f"/get_file/{bad}")
        assert response.status_code in (400, 404), bad
        assert "detail" in response.json()
    assert (await api.get("/get_file/" + "z" * 64)).status_code == 400


async def test_list_files_pages_through_everything_once(api: httpx.AsyncClient) -> None:
    for i in range(7):
        await put(api, metadata(f"c{i}".encode(), filepath=f"/p/{i}"))
    seen: list[str] = []
    after = None
    while True:
        params: dict[str, str | int] = {"limit": 3}
        if after:
            params["after"] = after
        page = (await api.get("/files", params=params)).json()
        if not page:
            break
        seen += [r["filepath"] for r in page]
        after = page[-1]["_id"]
    assert seen == [f"/p/{i}" for i in range(7)]
    assert (await api.get("/files", params={"limit": 0})).status_code == 422
    assert (await api.get("/files", params={"after": "not-a-cursor"})).status_code == 400


async def test_read_key_cannot_write(api: httpx.AsyncClient, keys: Keys) -> None:
    response = await put(api, metadata(b"x"), headers={"X-API-Key": keys.read})
    assert response.status_code == 403
    assert "scope" in response.json()["detail"]
    assert (await api.get("/files")).json() == []


async def test_list_files_by_content_follows_pages_to_the_end(api: httpx.AsyncClient) -> None:
    """Filters combine with the cursor: a client following `after` reaches the end."""
    shared = b"on many hosts"
    wanted: list[str] = []
    for i in range(7):
        host = "host-a" if i % 2 == 0 else "host-b"
        answer = await put(api, metadata(shared, hostname=host))
        assert answer.status_code == 201
        if host == "host-b":
            wanted.append(answer.json()["_id"])
        await put(api, metadata(f"other {i}".encode(), hostname=host))
    sha256 = hashlib.sha256(shared).hexdigest()

    async def follow(**params: str) -> list[str]:
        seen: list[str] = []
        after: str | None = None
        for _ in range(20):  # a server that ignores `after` never ends: bounded
            query = {**params, "limit": "2", **({"after": after} if after else {})}
            page = (await api.get("/files", params=query)).json()
            if not page:
                return seen
            seen += [r["_id"] for r in page]
            after = page[-1]["_id"]
        raise AssertionError(f"paging did not end; saw {seen}")

    assert await follow(sha256=sha256, hostname="host-b") == wanted
    assert len(await follow(sha256=sha256)) == 7
    bad = await api.get("/files", params={"sha256": "A" * 64})
    assert bad.status_code == 400
    assert "SHA256" in bad.json()["detail"]
