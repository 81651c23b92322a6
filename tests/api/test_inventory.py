"""Scans, search, history, locations and stats over real HTTP, on every stack.

The filters themselves are proven per backend by tests/metadata/test_inventory.py; here:
the wire (parameters, cursors, answers), the scan rules, and refusals that change
nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.conftest import Keys
from tests.support.payloads import metadata, put, store


async def open_scan(api: httpx.AsyncClient, root: str, hostname: str = "host-a",
                    excludes: list[str] | None = None) -> str:  # fmt: skip
    response = await api.post(
        "/scans", json={"hostname": hostname, "root": root, "excludes": excludes or []}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["scan_id"])


async def live(api: httpx.AsyncClient, hostname: str = "host-a") -> list[str]:
    answer = await api.get("/files", params={"hostname": hostname, "sort": "path"})
    assert answer.status_code == 200, answer.text
    return [r["filepath"] for r in answer.json()]


async def put_in_scan(api: httpx.AsyncClient, scan: str, *bodies: dict[str, Any]) -> None:
    response = await api.post("/put_files", params={"scan": scan}, json={"files": list(bodies)})
    assert response.status_code == 200, response.text
    assert response.json()["stored"] == len(bodies)


async def test_a_completed_scan_marks_unseen_records_deleted(api: httpx.AsyncClient) -> None:
    for path in ("/srv/keep", "/srv/gone", "/srv/cache/x.tmp", "/srv/same", "/srvx/other",
                 "/elsewhere"):  # fmt: skip
        await put(api, metadata(path.encode(), filepath=path))
    await put(api, metadata(b"g", hostname="host-b", filepath="/srv/gone"))
    scan = await open_scan(api, "/srv", excludes=["cache/"])
    await put_in_scan(api, scan, metadata(b"new", filepath="/srv/keep"))
    seen = await api.post(f"/scans/{scan}/seen", json={"filepaths": ["/srv/same", "/srv/nope"]})
    assert seen.json() == {"seen": 1}
    done = (await api.post(f"/scans/{scan}/complete")).json()
    assert (done["state"], done["deleted"]) == ("completed", 1)
    # /srv/gone only: not the excluded, other roots, other hosts.
    assert await live(api) == ["/elsewhere", "/srv/cache/x.tmp", "/srv/keep", "/srv/same",
                               "/srvx/other"]  # fmt: skip
    assert await live(api, "host-b") == ["/srv/gone"]
    deleted = (await api.get("/files", params={"state": "deleted"})).json()
    assert [(r["filepath"], r["deleted_at"] is not None) for r in deleted] == [("/srv/gone", True)]
    again = await api.post(f"/scans/{scan}/complete")
    assert again.status_code == 409
    # Content answers are unaffected by the deletion of a record holding it.
    gone = metadata(b"/srv/gone", filepath="/srv/gone")
    assert (await api.get(f"/get_file/{gone['sha256']}")).status_code == 200


async def test_a_completion_keeps_what_was_recorded_after_the_scan_began(
    api: httpx.AsyncClient,
) -> None:
    """Another run (or client) may record a file under the root while the walk is on,
    in a directory the walk already passed: it exists, so the completion keeps it."""
    await put(api, metadata(b"old", filepath="/srv/old"))
    await asyncio.sleep(0.01)  # recorded before the scan began, even in MongoDB's ms
    scan = await open_scan(api, "/srv")
    await put(api, metadata(b"meanwhile", filepath="/srv/d/new"))  # not in this scan
    done = (await api.post(f"/scans/{scan}/complete")).json()
    assert (done["state"], done["deleted"]) == ("completed", 1)
    assert await live(api) == ["/srv/d/new"]


async def test_a_first_scan_of_a_root_says_so_and_a_rescan_finds_what_went(
    api: httpx.AsyncClient,
) -> None:
    """A host's first scan of a root (nothing live under it) tells the client so, keeps
    all it was sent; the next one, over the records the first left, finds the one
    gone."""
    await put(api, metadata(b"x", filepath="/srvx/elsewhere"))
    first = await api.post("/scans", json={"hostname": "host-a", "root": "/srv"})
    assert first.json()["had_records"] is False
    scan = str(first.json()["scan_id"])
    await put_in_scan(
        api, scan, metadata(b"a", filepath="/srv/a"), metadata(b"b", filepath="/srv/b")
    )
    done = (await api.post(f"/scans/{scan}/complete")).json()
    assert (done["state"], done["deleted"], done["had_records"]) == ("completed", 0, False)
    again = await api.post("/scans", json={"hostname": "host-a", "root": "/srv"})
    assert again.json()["had_records"] is True
    rescan = str(again.json()["scan_id"])
    await put_in_scan(api, rescan, metadata(b"a", filepath="/srv/a"))
    done = (await api.post(f"/scans/{rescan}/complete")).json()
    assert (done["state"], done["deleted"]) == ("completed", 1)
    assert await live(api) == ["/srv/a", "/srvx/elsewhere"]


async def test_an_abandoned_or_open_scan_deletes_nothing(api: httpx.AsyncClient) -> None:
    await put(api, metadata(b"a", filepath="/srv/a"))
    abandoned = await open_scan(api, "/srv")
    assert (await api.post(f"/scans/{abandoned}/abandon")).json()["state"] == "abandoned"
    await open_scan(api, "/srv")  # never completed (the client was killed)
    assert await live(api) == ["/srv/a"]
    refused = await api.post("/put_files", params={"scan": abandoned},
                             json={"files": [metadata(b"b", filepath="/srv/b")]})  # fmt: skip
    assert refused.status_code == 409
    assert await live(api) == ["/srv/a"]  # the refused batch stored nothing


async def test_a_scan_not_open_is_a_documented_conflict(api: httpx.AsyncClient) -> None:
    """Both routes answer 409 for records sent in a closed scan, and the OpenAPI document
    says so (the fuzz tests refuse any status it does not list)."""
    closed = await open_scan(api, "/srv")
    await api.post(f"/scans/{closed}/abandon")
    one = await api.post("/put_file", params={"scan": closed},
                         json=metadata(b"b", filepath="/srv/b"))  # fmt: skip
    many = await api.post("/put_files", params={"scan": closed},
                          json={"files": [metadata(b"c", filepath="/srv/c")]})  # fmt: skip
    assert (one.status_code, many.status_code) == (409, 409)
    assert await live(api) == []  # neither stored anything
    paths = (await api.get("/openapi.json")).json()["paths"]
    assert "409" in paths["/put_file"]["post"]["responses"]
    assert "409" in paths["/put_files"]["post"]["responses"]


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/scans", {"hostname": "h", "root": "relative/dir"}, 400),
        ("/scans", {"hostname": "", "root": "/srv"}, 422),
        ("/scans", {"hostname": "h", "root": "/srv", "excludes": "*.log"}, 422),
        ("/scans", {"hostname": "h", "root": "/srv", "excludes": ["[z-a]"]}, 422),
        ("/scans/999999/complete", None, 404),
        ("/scans/not-an-id/seen", {"filepaths": ["/a"]}, 404),
    ],
)
async def test_bad_scan_requests_are_refused(
    api: httpx.AsyncClient, path: str, body: Any, status: int
) -> None:
    response = await api.post(path, json=body)
    assert response.status_code == status, response.text
    assert "detail" in response.json()


async def test_scans_need_a_write_key(server_url: str, keys: Keys) -> None:
    async with httpx.AsyncClient(base_url=server_url, headers={"X-API-Key": keys.read}) as c:
        response = await c.post("/scans", json={"hostname": "h", "root": "/srv"})
    assert response.status_code == 403


async def test_search_pages_with_the_next_cursor_header(api: httpx.AsyncClient) -> None:
    for i in range(7):
        await put(api, metadata(bytes([i]) * (i + 1), filepath=f"/d/{i}"))
    seen: list[int] = []
    params: dict[str, Any] = {"sort": "-size", "limit": 3, "path_prefix": "/d"}
    pages = 0
    while True:
        response = await api.get("/files", params=params)
        assert response.status_code == 200
        seen += [r["file_size"] for r in response.json()]
        pages += 1
        if "X-Next-Cursor" not in response.headers:
            break
        params["cursor"] = response.headers["X-Next-Cursor"]
        # A cursor continues the order it came from: in another, its value means nothing.
        other = await api.get("/files", params={**params, "sort": "path"})
        assert other.status_code == 400
        assert "sorted by '-size', not 'path'" in other.json()["detail"]
    assert seen == [7, 6, 5, 4, 3, 2, 1]
    assert pages == 3
    first = (await api.get("/files", params={"path_prefix": "/d", "limit": 1})).json()[0]
    assert first["recorded_at"]
    assert first["deleted_at"] is None
    assert first["filepath"] == "/d/0"


@pytest.mark.parametrize(
    "params",
    [
        {"cursor": "not a cursor"},
        {"sort": "color"},
        {"as_of": "yesterday"},
        {"as_of": "2026-01-01T00:00:00Z", "state": "deleted"},
        {"after": "1", "sort": "path"},
        {"sha256": "XYZ"},
        {"min_size": -1},
        {"mtime_after": "nan"},
        {"state": "zombie"},
        {"limit": 0},
        {"path_glob": "/srv/[z-a]"},  # a reversed range: no class at all
        {"path_glob": "/srv/[!]"},
        {"path_glob": "/srv/\x00"},
    ],
)
async def test_bad_search_parameters_are_a_clear_4xx(
    api: httpx.AsyncClient, params: dict[str, Any]
) -> None:
    response = await api.get("/files", params=params)
    assert response.status_code in (400, 422), response.text
    assert response.json()["detail"]
    if "path_glob" in params:  # says which parameter, and why
        assert response.status_code == 422
        assert "path_glob" in response.text


async def test_history_and_as_of_over_http(api: httpx.AsyncClient) -> None:
    await put(api, metadata(b"v1", filepath="/etc/app.conf"))
    middle = (await api.get("/history", params={"hostname": "host-a",
                                                "filepath": "/etc/app.conf"})).json()  # fmt: skip
    await put(api, metadata(b"v2", filepath="/etc/app.conf"))
    versions = (await api.get("/history", params={"hostname": "host-a",
                                                  "filepath": "/etc/app.conf"})).json()  # fmt: skip
    assert [v["file_size"] for v in versions] == [2, 2]
    assert versions[0]["valid_to"] is None
    assert versions[1]["valid_to"] is not None
    assert versions[1]["sha256"] == middle[0]["sha256"]
    then = (await api.get("/files", params={"as_of": versions[1]["valid_from"]})).json()
    assert [r["sha256"] for r in then] == [middle[0]["sha256"]]
    missing = await api.get("/history", params={"hostname": "host-a", "filepath": "/nope"})
    assert missing.status_code == 404


async def test_locations_and_stats(api: httpx.AsyncClient, server_url: str, keys: Keys) -> None:
    body = await store(api, b"shared", filepath="/a/one")
    await store(api, b"shared", filepath="/a/two", hostname="host-b")
    await put(api, metadata(b"other", filepath="/a/one"))  # /a/one moves on
    sha = body["sha256"]
    now = (await api.get(f"/content/{sha}/locations")).json()
    assert [(x["hostname"], x["filepath"]) for x in now] == [("host-b", "/a/two")]
    past = (await api.get(f"/content/{sha}/locations", params={"include_past": "true"})).json()
    assert [(x["hostname"], x["valid_to"] is not None) for x in past] == [
        ("host-a", True),
        ("host-b", False),
    ]
    assert (await api.get("/content/nothex/locations")).status_code == 400
    async with httpx.AsyncClient(base_url=server_url, headers={"X-API-Key": keys.read}) as c:
        stats = (await c.get("/stats", params={"bucket": "month"})).json()
    assert stats["files"] == 2
    assert stats["bytes_referenced"] == len(b"shared") + len(b"other")
    assert (stats["distinct_contents"], stats["bytes_stored"]) == (1, len(b"shared"))
    assert [h["hostname"] for h in stats["hosts"]] == ["host-a", "host-b"]
    assert len(stats["growth"]) == 1
    assert len(stats["growth"][0]["bucket"]) == 7
    host = (await api.get("/stats", params={"hostname": "host-b"})).json()
    assert (host["files"], host["bytes_referenced"]) == (1, len(b"shared"))
    assert (await api.get("/stats", params={"bucket": "year"})).status_code == 422
