"""API keys: authentication on every endpoint, scopes, and ``/api_keys`` management."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest

from putplace.service.stores import open_metadata
from tests.conftest import Keys, make_settings, seed_keys
from tests.support.payloads import metadata, store
from tests.support.servers import running_server

ZERO = "0" * 64

# (method, path, needed scope) for every authenticated endpoint.
ENDPOINTS = [
    ("POST", "/put_file", "write"),
    ("POST", "/put_files", "write"),
    ("PUT", f"/blobs/{ZERO}", "write"),
    ("POST", f"/upload_file/{ZERO}?hostname=h&filepath=/f", "write"),
    ("GET", f"/get_file/{ZERO}", "read"),
    ("GET", f"/download/{ZERO}", "read"),
    ("GET", "/files", "read"),
    ("GET", "/api_keys", "admin"),
    ("POST", "/api_keys", "admin"),
    ("PUT", "/api_keys/1/revoke", "admin"),
    ("DELETE", "/api_keys/1", "admin"),
]
RANK = {"read": 0, "write": 1, "admin": 2}


@pytest.mark.parametrize(("method", "path", "needed"), ENDPOINTS)
async def test_every_endpoint_enforces_keys_and_scopes(
    server_url: str, keys: Keys, method: str, path: str, needed: str
) -> None:
    async with httpx.AsyncClient(base_url=server_url) as client:

        async def status(key: str | None) -> int:
            headers = {"X-API-Key": key} if key is not None else {}
            response = await client.request(method, path, headers=headers)
            return response.status_code

        assert await status(None) == 401
        assert await status("") == 401
        assert await status("not-a-key") == 401
        assert await status("f" * 64) == 401
        assert await status(keys.revoked) == 401
        for scope in ("read", "write", "admin"):
            code = await status(getattr(keys, scope))
            if RANK[scope] < RANK[needed]:
                assert code == 403, (scope, code)
            else:
                assert code not in (401, 403), (scope, code)


async def test_revoked_key_message(api: httpx.AsyncClient, keys: Keys) -> None:
    response = await api.get("/files", headers={"X-API-Key": keys.revoked})
    assert response.status_code == 401
    assert response.json() == {"detail": "API key has been revoked"}


async def test_create_list_revoke_delete(api: httpx.AsyncClient, keys: Keys) -> None:
    admin = {"X-API-Key": keys.admin}
    created = await api.post(
        "/api_keys", json={"name": "ci", "description": "for CI", "scope": "read"}, headers=admin
    )
    assert created.status_code == 201
    new = created.json()
    assert re.fullmatch(r"[0-9a-f]{64}", new["api_key"])
    assert new["scope"] == "read"
    assert new["is_active"] is True

    listed = await api.get("/api_keys", headers=admin)
    assert listed.status_code == 200
    assert new["api_key"] not in listed.text
    assert "key_hash" not in listed.text
    assert [k["name"] for k in listed.json()] == ["read", "write", "admin", "revoked", "ci"]

    use = {"X-API-Key": new["api_key"]}
    assert (await api.get("/files", headers=use)).status_code == 200
    assert (await api.get("/files", headers=use)).status_code == 200
    used = {k["_id"]: k for k in (await api.get("/api_keys", headers=admin)).json()}
    assert used[new["_id"]]["last_used_at"] is not None

    revoked = await api.put(f"/api_keys/{new['_id']}/revoke", headers=admin)
    assert revoked.status_code == 200
    assert (await api.get("/files", headers=use)).status_code == 401

    deleted = await api.delete(f"/api_keys/{new['_id']}", headers=admin)
    assert deleted.status_code == 200
    assert (await api.get("/files", headers=use)).status_code == 401
    assert (await api.delete(f"/api_keys/{new['_id']}", headers=admin)).status_code == 404
    names = [k["name"] for k in (await api.get("/api_keys", headers=admin)).json()]
    assert "ci" not in names


async def test_key_management_rejects_bad_input(api: httpx.AsyncClient, keys: Keys) -> None:
    admin = {"X-API-Key": keys.admin}
    for bad in ({}, {"name": ""}, {"name": "x" * 300}, {"name": "x", "scope": "root"}):
        assert (await api.post("/api_keys", json=bad, headers=admin)).status_code == 422
    for missing in ("999999", "000000000000000000000000", "../etc", "x" * 40):
        assert (await api.put(f"/api_keys/{missing}/revoke", headers=admin)).status_code == 404
        assert (await api.delete(f"/api_keys/{missing}", headers=admin)).status_code == 404
    assert len((await api.get("/api_keys", headers=admin)).json()) == 4


async def test_read_key_reads(api: httpx.AsyncClient, keys: Keys) -> None:
    body = await store(api, b"readable")
    read = {"X-API-Key": keys.read}
    assert (await api.get(f"/get_file/{body['sha256']}", headers=read)).status_code == 200
    assert (await api.get(f"/download/{body['sha256']}", headers=read)).content == b"readable"
    assert (await api.post("/put_file", json=metadata(b"y"), headers=read)).status_code == 403


async def test_key_cache_honours_revocation_within_its_ttl(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    settings = make_settings(request, "sqlite-local", tmp_path, key_cache_seconds=1.0)
    keys = await seed_keys(settings)
    with running_server(settings) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            use = {"X-API-Key": keys.write}
            assert (await client.get("/files", headers=use)).status_code == 200
            # Revoked behind the server's back (another process, or `ppserver keys revoke`).
            async with open_metadata(settings) as store:
                (record,) = [k for k in await store.list_api_keys() if k.name == "write"]
                await store.deactivate_api_key(record.id)
            assert (await client.get("/files", headers=use)).status_code == 200  # cached
            await asyncio.sleep(1.1)
            assert (await client.get("/files", headers=use)).status_code == 401

            # Revoked through this server's API: forgotten at once.
            reader = {"X-API-Key": keys.read}
            assert (await client.get("/files", headers=reader)).status_code == 200
            listed = (await client.get("/api_keys", headers={"X-API-Key": keys.admin})).json()
            (read_id,) = [k["_id"] for k in listed if k["name"] == "read"]
            revoke = await client.put(
                f"/api_keys/{read_id}/revoke", headers={"X-API-Key": keys.admin}
            )
            assert revoke.status_code == 200
            assert (await client.get("/files", headers=reader)).status_code == 401
