"""Namespaces over HTTP: separate inventories on one server, keys granted per namespace."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import Keys
from tests.support.payloads import metadata, put, upload


async def make_key(api: httpx.AsyncClient, keys: Keys, **body: Any) -> dict[str, str]:
    made = await api.post("/api_keys", json={"name": "k", **body},
                          headers={"X-API-Key": keys.admin})  # fmt: skip
    assert made.status_code == 201, made.text
    return {"X-API-Key": made.json()["api_key"]}


def paths(answer: httpx.Response) -> list[tuple[str, str]]:
    assert answer.status_code == 200, answer.text
    return sorted((f["namespace"], f["filepath"]) for f in answer.json())


async def test_each_namespace_is_its_own_inventory(api: httpx.AsyncClient, keys: Keys) -> None:
    team_a = await make_key(api, keys, grants={"team-a": "write"})
    team_b = await make_key(api, keys, grants={"team-b": "write"})
    admin = {"X-API-Key": keys.admin}
    secret = b"only team a holds this"
    # A key with one namespace writes there without naming it.
    body = metadata(secret, hostname="h", filepath="/etc/conf")
    assert (await put(api, body, headers=team_a)).json()["upload_required"] is True
    assert (await upload(api, body, secret, headers=team_a)).status_code == 200
    other = metadata(b"team b", hostname="h", filepath="/etc/conf")  # same location
    assert (await put(api, other, headers=team_b)).status_code == 201

    assert paths(await api.get("/files", headers=team_a)) == [("team-a", "/etc/conf")]
    assert paths(await api.get("/files", headers=team_b)) == [("team-b", "/etc/conf")]
    assert paths(await api.get("/files")) == []  # the default namespace's write key
    assert paths(await api.get("/files", headers=admin)) == [
        ("team-a", "/etc/conf"), ("team-b", "/etc/conf"),
    ]  # fmt: skip
    assert paths(await api.get("/files", params={"namespace": "team-b"}, headers=admin)) == [
        ("team-b", "/etc/conf")
    ]
    history = await api.get("/history", params={"hostname": "h", "filepath": "/etc/conf"},
                            headers=team_b)  # fmt: skip
    assert [v["sha256"] for v in history.json()] == [other["sha256"]]
    stats = (await api.get("/stats", headers=team_b)).json()
    assert (stats["files"], stats["hosts"]) == (1, [{"hostname": "h", "files": 1,
                                                      "bytes": len(b"team b")}])  # fmt: skip


async def test_a_key_learns_nothing_of_a_namespace_it_was_not_granted(
    api: httpx.AsyncClient, keys: Keys
) -> None:
    team_a = await make_key(api, keys, grants={"team-a": "write"})
    outsider = await make_key(api, keys, grants={"team-b": "write"})
    secret = b"the merger memo"
    body = metadata(secret, hostname="h", filepath="/memo")
    await put(api, body, headers=team_a)
    assert (await upload(api, body, secret, headers=team_a)).status_code == 200
    sha = body["sha256"]
    before = (await api.get("/files", headers={"X-API-Key": keys.admin})).json()

    not_found = [
        await api.get(f"/get_file/{sha}", headers=outsider),
        await api.get(f"/download/{sha}", headers=outsider),
        await api.get("/history", params={"hostname": "h", "filepath": "/memo"},
                      headers=outsider),
    ]  # fmt: skip
    assert [r.status_code for r in not_found] == [404, 404, 404]
    where = await api.get(f"/content/{sha}/locations", params={"include_past": "true"},
                          headers=outsider)  # fmt: skip
    assert where.json() == []
    assert (await api.get("/files", params={"sha256": sha}, headers=outsider)).json() == []
    # Naming the namespace is refused outright, on every kind of endpoint.
    named = {"namespace": "team-a"}
    refused = [
        await api.get("/files", params=named, headers=outsider),
        await api.get("/stats", params=named, headers=outsider),
        await api.get(f"/download/{sha}", params=named, headers=outsider),
        await api.post("/put_file", params=named, json=metadata(b"x"), headers=outsider),
        await api.post("/scans", params=named, json={"hostname": "h", "root": "/"},
                       headers=outsider),
        await api.post(f"/upload_file/{sha}", files={"file": secret}, headers=outsider,
                       params={**named, "hostname": "h", "filepath": "/memo"}),
    ]  # fmt: skip
    assert [r.status_code for r in refused] == [403] * len(refused)
    assert refused[0].json()["detail"] == "This API key may not read namespace 'team-a'"
    assert (await api.get("/files", headers={"X-API-Key": keys.admin})).json() == before


async def test_read_grants_and_every_namespace(api: httpx.AsyncClient, keys: Keys) -> None:
    writer = await make_key(api, keys, grants={"team-a": "write", "team-b": "write"})
    reader = await make_key(api, keys, grants={"team-a": "read"})
    everyone = await make_key(api, keys, grants={"*": "read"})
    for namespace in ("team-a", "team-b"):
        answer = await put(api, metadata(namespace.encode(), filepath=f"/{namespace}"),
                           params={"namespace": namespace}, headers=writer)  # fmt: skip
        assert answer.status_code == 201
    # Two namespaces and none named: which one is for the client to say.
    unnamed = await put(api, metadata(b"?"), headers=writer)
    assert unnamed.status_code == 400
    assert unnamed.json()["detail"] == ("this API key uses 2 namespaces: name one with ?namespace=")
    assert paths(await api.get("/files", headers=reader)) == [("team-a", "/team-a")]
    assert (await put(api, metadata(b"r"), headers=reader)).status_code == 403
    assert paths(await api.get("/files", headers=everyone)) == [
        ("team-a", "/team-a"), ("team-b", "/team-b"),
    ]  # fmt: skip


async def test_a_scan_deletes_only_in_its_namespace(api: httpx.AsyncClient, keys: Keys) -> None:
    both = await make_key(api, keys, grants={"team-a": "write", "team-b": "write"})
    for namespace in ("team-a", "team-b"):
        await put(api, metadata(b"x", hostname="h", filepath="/srv/old"),
                  params={"namespace": namespace}, headers=both)  # fmt: skip
    team_a = {"namespace": "team-a"}
    scan = (await api.post("/scans", params=team_a, json={"hostname": "h", "root": "/srv"},
                           headers=both)).json()  # fmt: skip
    assert scan["namespace"] == "team-a"
    # A batch for another namespace cannot be seen by this scan.
    wrong = await api.post("/put_files", params={"namespace": "team-b", "scan": scan["scan_id"]},
                           json={"files": [metadata(b"y")]}, headers=both)  # fmt: skip
    assert wrong.status_code == 400
    done = await api.post(f"/scans/{scan['scan_id']}/complete", headers=both)
    assert done.json()["deleted"] == 1
    live = await api.get("/files", params={"namespace": ["team-a", "team-b"]}, headers=both)
    assert paths(live) == [("team-b", "/srv/old")]


async def test_grants_are_checked(api: httpx.AsyncClient, keys: Keys) -> None:
    admin = {"X-API-Key": keys.admin}
    for grants, code in (
        ({"team-a": "admin"}, 400),  # admin is the whole key's scope, not a namespace's
        ({"Team A": "read"}, 422),
        ({"team-a": "owner"}, 422),
    ):
        answer = await api.post("/api_keys", json={"name": "g", "grants": grants}, headers=admin)
        assert answer.status_code == code, (grants, answer.text)
    made = await api.post("/api_keys", json={"name": "g", "grants": {"a": "read", "b": "write"}},
                          headers=admin)  # fmt: skip
    assert (made.json()["scope"], made.json()["grants"]) == ("write", {"a": "read", "b": "write"})
    for bad in ("Team", "", "x" * 64, "a/b"):
        assert (await api.get("/files", params={"namespace": bad})).status_code == 422
